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
    init: str = "systemd"          # "systemd" when PID 1 is systemd (/run/systemd/system), else "other"
    cgroup_version: int = 2
    cap_sys_resource: bool = True  # in the bounding set (a container or restricted VM may lack it)
    os_release: tuple = ()         # (ID, ID_LIKE) of /etc/os-release


def assumed_facts(config: ClusterConfig) -> dict[str, NodeFacts]:
    """Facts for a dry run: the configured interface, else eth0 (read from the node at run time)."""
    iface = config.lb.vrrp.interface
    return {n.address: NodeFacts(iface or DRY_RUN_INTERFACE, assumed=iface is None) for n in config.all_nodes}
