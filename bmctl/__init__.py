"""bmctl: bare-metal Kubernetes clusters over SSH with bundled load balancing."""

__version__ = "0.1.0"
