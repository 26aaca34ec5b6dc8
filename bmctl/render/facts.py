"""What renderers need to know about a node that the config does not say."""
from __future__ import annotations

from dataclasses import dataclass

from bmctl.config.model import ClusterConfig

DRY_RUN_INTERFACE = "eth0"


@dataclass(frozen=True)
class NodeFacts:
    interface: str              # the interface that holds the node IP (keepalived binds VRRP there)
    assumed: bool = False       # True in a dry run: not read from the node
    prefixlen: int | None = None  # the node IP's prefix length on that interface (its L2 subnet)
    addresses: tuple = ()       # every address on the node, as "ip/prefix"
    macs: tuple = ()            # the MAC address of every interface
    os: str = ""
    kernel: str = ""


def assumed_facts(config: ClusterConfig) -> dict[str, NodeFacts]:
    """Facts for a dry run: the configured interface, else eth0 (read from the node at run time)."""
    iface = config.lb.vrrp.interface
    return {n.address: NodeFacts(iface or DRY_RUN_INTERFACE, assumed=iface is None) for n in config.all_nodes}
