"""The host layer: SSH (run, sudo), atomic idempotent file writes, and the parallel pool."""
from bmctl.host.files import FileChange, sync_files
from bmctl.host.pool import Inventory
from bmctl.host.ssh import AccessOptions, Host, HostError, Result

__all__ = ["FileChange", "sync_files", "Inventory", "AccessOptions", "Host", "HostError", "Result"]
