"""Defaults shared by the command line and the layers below it (kept free of imports, so the
command line can show them without loading those layers)."""

# Nodes worked on at once. A node mostly waits (on its own commands, on the network), so this is
# sized for a whole rack in one wave rather than for this machine's cores.
DEFAULT_CONCURRENCY = 64
