"""Facts read from the nodes over SSH (one command per node): OS, kernel, interfaces and addresses."""
from __future__ import annotations

import json

from bmctl.config.model import ClusterConfig
from bmctl.host import Host, HostError, Inventory
from bmctl.host.files import STAT_SCRIPT, FileState, check_paths, parse_state
from bmctl.render.facts import NodeFacts

_FACTS = r'''
uname -sr
( . /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}" ) || echo unknown
( . /etc/os-release 2>/dev/null; echo "fact os_release ${ID:-} ${ID_LIKE:-}" )
if [ -d /run/systemd/system ]; then echo "fact init systemd"; else echo "fact init other"; fi
echo "fact cgroupfs $(stat -fc %T /sys/fs/cgroup 2>/dev/null)"
echo "fact capbnd $(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)"
ip -j addr show
'''
CAP_SYS_RESOURCE = 24


_FILES_MARK = "--- bmctl: managed files ---"


def read_facts(host: Host, node_ip: str, interface: str | None) -> NodeFacts:
    res = host.run(["sh", "-c", _FACTS], step="read node facts", sudo=False)
    return _parse(host, res.stdout, node_ip, interface)


def read_facts_and_files(host: Host, node_ip: str, interface: str | None,
                         paths: list[str]) -> tuple[NodeFacts, FileState]:
    """The node's facts and the state of the files bmctl is about to write, in one command."""
    check_paths(paths)
    script = f"{_FACTS}\necho '{_FILES_MARK}'\n{STAT_SCRIPT}"
    out = host.run(["sh", "-c", script, "sh", *paths], step="read node facts and managed files").stdout
    facts_out, _, files_out = out.partition(_FILES_MARK + "\n")
    return _parse(host, facts_out, node_ip, interface), parse_state(files_out, paths)


def _parse(host: Host, out: str, node_ip: str, interface: str | None) -> NodeFacts:
    lines = out.splitlines()
    kernel, os_name = lines[0], lines[1]
    extra: dict[str, str] = {}
    rest = lines[2:]
    while rest and rest[0].startswith("fact "):
        _, key, *value = rest.pop(0).split(" ", 2)
        extra[key] = value[0] if value else ""
    try:
        capbnd = int(extra.get("capbnd") or "0", 16)
    except ValueError:
        capbnd = 0
    try:
        links = json.loads("\n".join(rest))
    except ValueError:
        raise HostError(host.address, "read node facts", "`ip -j addr` gave no JSON",
                        "install a recent iproute2 on the node.") from None
    addresses = []
    macs = tuple(link["address"] for link in links if link.get("link_type") == "ether" and link.get("address"))
    found: tuple[str, int] | None = None
    for link in links:
        for a in link.get("addr_info", []):
            addresses.append(f"{a['local']}/{a['prefixlen']}")
            if a.get("local") == node_ip and found is None:
                found = (link["ifname"], a["prefixlen"])
    if found is None:
        raise HostError(host.address, "node IP", f"{node_ip} is not an address of this node "
                        f"(it has {', '.join(addresses) or 'none'})",
                        "set the node's address (or k8sIP) in the config to an IP the node holds.")
    return NodeFacts(interface=interface or found[0], prefixlen=found[1], addresses=tuple(addresses),
                     macs=macs, os=os_name, kernel=kernel, init=extra.get("init", "other"),
                     cgroup_version=2 if extra.get("cgroupfs") == "cgroup2fs" else 1,
                     cap_sys_resource=bool(capbnd >> CAP_SYS_RESOURCE & 1),
                     os_release=tuple(extra.get("os_release", "").split()))


def gather(config: ClusterConfig, inventory: Inventory, addresses: list[str] | None = None) -> dict[str, NodeFacts]:
    nodes = {n.address: n for n in config.all_nodes}
    wanted = addresses or list(nodes)
    iface = config.lb.vrrp.interface
    return inventory.parallel(wanted, lambda h: read_facts(h, nodes[h.address].ip, iface))
