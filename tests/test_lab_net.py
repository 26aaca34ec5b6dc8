"""The lab's addresses: documentation ranges that collide with none of this machine's addresses or
routes (a machine's own network can itself be one, e.g. eth0 192.0.2.2/24 with the gateway .1)."""
from __future__ import annotations

import os

import netaddr
import pytest

from bmctl.errors import BmctlError
from bmctl.lab.net import CANDIDATES, collisions, fence, host_networks, needed, pick


def nets(*cidrs: str) -> list[netaddr.IPNetwork]:
    return [netaddr.IPNetwork(c) for c in cidrs]


def test_a_machine_on_a_documentation_range_keeps_it_and_its_gateway():
    used = nets("127.0.0.0/8", "192.0.2.0/24", "192.0.2.2/32", "192.0.2.1/32")  # eth0 + default via .1
    net = pick(used=used)
    assert (net.segment, net.pods) == ("198.51.100.0/24", "203.0.113.0/24")
    for address in (net.host_ip, net.client_ip, net.registry_ip, net.vip, net.ingress_vip, net.node_ip(0)):
        assert netaddr.IPAddress(address) in netaddr.IPNetwork(net.segment)
        assert not any(netaddr.IPAddress(address) in u for u in used)
    assert netaddr.IPNetwork(net.services) in netaddr.IPNetwork(net.segment)
    lo, hi = net.pool.split("-")
    assert not netaddr.IPSet(netaddr.IPRange(lo, hi)) & netaddr.IPSet([net.services])


def test_a_route_or_a_gateway_alone_is_a_collision():
    assert collisions("198.51.100.0/24", nets("198.51.100.0/25")) == ["198.51.100.0/25"]  # a route into it
    assert collisions("198.51.100.0/24", nets("198.0.0.0/8")) == ["198.0.0.0/8"]  # a route around it
    assert pick(used=nets("203.0.113.7/32")).segment == "192.0.2.0/24"  # a gateway in it
    assert pick(used=nets("192.0.2.1/32")).pods == "203.0.113.0/24"


def test_subnet_chooses_the_segment_and_is_refused_when_it_collides():
    assert pick("203.0.113.0/24", used=[]).segment == "203.0.113.0/24"
    with pytest.raises(BmctlError, match=r"--subnet 192\.0\.2\.0/24 collides with this machine's network "
                                         r"\(192\.0\.2\.0/24\)") as err:
        pick("192.0.2.0/24", used=nets("192.0.2.0/24"))
    assert "198.51.100.0/24, 203.0.113.0/24" in str(err.value.fix)
    with pytest.raises(BmctlError, match="documentation ranges only"):
        pick("10.0.0.0/24", used=[])


def test_refused_clearly_when_fewer_than_two_ranges_are_free():
    with pytest.raises(BmctlError, match=r"only 1 is free \(192\.0\.2\.0/24 collides with 192\.0\.2\.0/24; "
                                         r"198\.51\.100\.0/24 collides with 198\.51\.100\.9/32\)"):
        pick(used=nets("192.0.2.0/24", "198.51.100.9/32"))


def test_on_this_machine_the_pick_collides_with_nothing():
    used = host_networks()
    net = pick(used=used)
    assert net.segment in CANDIDATES and net.pods in CANDIDATES and net.segment != net.pods
    assert not collisions(net.segment, used) and not collisions(net.pods, used)


FENCE_CHECK = """
import errno, json, socket, subprocess, sys
from pathlib import Path
from bmctl.lab.lab import Lab
lab = Lab(Path(sys.argv[1]))
state = lab.up(1, 0, 0, host_address=False, real_nodes=False)
def unreachable():
    out = subprocess.run(["ip", "-j", "route", "show", "type", "unreachable"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(r["dst"] for r in json.loads(out or "[]"))
try:
    net = Lab.net_of(state)
    sock = socket.socket()
    sock.settimeout(5)
    try:
        sock.connect((net.node_ip(0), 22))
        refused = None
    except OSError as exc:
        refused = errno.errorcode.get(exc.errno, str(exc.errno))
    def route(address):
        out = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True).stdout
        return (json.loads(out or "[{}]") or [{}])[0].get("gateway")
    up = {"fences": unreachable(), "segment": net.segment, "pods": net.pods, "connect": refused,
          "kept": {a: route(a) for a in sys.argv[2:]}, "unfenced": state["kept"]}
finally:
    lab.down()
print(json.dumps({**up, "after_down": unreachable()}))
"""


def test_without_a_host_address_this_machine_cannot_send_to_the_lab(tmp_path):
    """`bmctl lab up --no-host-address` (what the tests use): the lab's segment and pod network are
    unreachable routes here, so a command run outside the lab's namespaces fails at once instead of
    sending lab traffic out of this machine's default route; `lab down` removes them. Run in a
    network namespace of its own (`unshare --net`) with a default route, as this machine has one.
    The addresses this machine itself uses (here: proxies in the environment) stay reachable: the
    lab takes the range without one for its segment and leaves them out of the fence."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import require
    from lab.harness import lab_prerequisites
    missing = lab_prerequisites(real_nodes=False)
    require(not missing, f"lab prerequisites: {', '.join(missing)}")
    script = ("ip link set lo up && ip link add dummy0 type veth peer name dummy1 && ip link set dummy0 up && "
              "ip addr add 10.255.255.1/24 dev dummy0 && ip route add default via 10.255.255.254 && "
              f'exec "{sys.executable}" -c "$0" "$@"')
    # Proxies in the environment at addresses the lab would otherwise fence (nothing is sent to them:
    # `ip route get` only asks the kernel which way they go).
    proxies = {"https_proxy": "http://198.51.100.77:3128", "GOPROXY": "http://203.0.113.80:8081,direct"}
    proc = subprocess.run(["unshare", "--net", "--", "sh", "-c", script, FENCE_CHECK, str(tmp_path / "lab-state"),
                           "198.51.100.77", "203.0.113.80"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent,
                          env={**os.environ, **proxies,
                               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                             os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the segment the one range without a proxy in it; the pod network fenced but for its proxy
    assert (got["segment"], got["pods"]) == ("192.0.2.0/24", "198.51.100.0/24"), got
    fenced = netaddr.IPSet(got["fences"])
    assert fenced == netaddr.IPSet([got["segment"], got["pods"]]) - netaddr.IPSet(["198.51.100.77/32"]), got
    assert got["kept"] == {"198.51.100.77": "10.255.255.254", "203.0.113.80": "10.255.255.254"}, got
    assert got["unfenced"]["198.51.100.77"] == "$https_proxy", got
    assert got["connect"] == "EHOSTUNREACH", got
    assert got["after_down"] == []


def test_this_machines_dns_proxies_and_package_hosts_are_kept(tmp_path, monkeypatch):
    env = {"HTTPS_PROXY": "http://user:secret@203.0.113.9:3128/", "GOPROXY": "https://192.0.2.44/mod|direct",
           "no_proxy": "198.51.100.1"}
    kept = needed(env)
    assert kept["203.0.113.9"] == "$HTTPS_PROXY" and kept["192.0.2.44"] == "$GOPROXY"
    assert "198.51.100.1" not in kept  # no_proxy names what is not proxied
    for line in open("/etc/resolv.conf").read().splitlines() if os.path.exists("/etc/resolv.conf") else []:
        if line.startswith("nameserver") and netaddr.valid_ipv4(line.split()[1]):
            assert line.split()[1] in kept
    # pick: the segment goes to the range without a kept address
    net = pick(used=nets("192.0.2.0/24"), keep={"203.0.113.9": "$HTTPS_PROXY"})
    assert (net.segment, net.pods) == ("198.51.100.0/24", "203.0.113.0/24")
    assert pick(used=[], keep={"192.0.2.5": "x"}).segment == "198.51.100.0/24"
    pieces = netaddr.IPSet(fence("203.0.113.0/24", {"203.0.113.9": "x", "192.0.2.1": "y"}))
    assert pieces == netaddr.IPSet(["203.0.113.0/24"]) - netaddr.IPSet(["203.0.113.9/32"])
    assert fence("198.51.100.0/24", {}) == ["198.51.100.0/24"]


PRUNE_LEAVE = """
import os, signal, sys
from pathlib import Path
from bmctl.lab.lab import Lab
state = Lab(Path(sys.argv[1])).up(1, 0, 0, host_address=False, real_nodes=False)
# as a restart of this machine's processes leaves a lab: every process gone, kernel state kept,
# and the test's temporary state folder cleaned away
for pid in state["pids"].values():
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
import shutil; shutil.rmtree(sys.argv[1])
print(state["id"])
"""

PRUNE_CHECK = """
import json, subprocess, sys
from pathlib import Path
from bmctl.lab.lab import Lab, RECORDS
def left(lab_id):
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "type", "unreachable"], capture_output=True,
                                       text=True, check=True).stdout or "[]")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    return {"routes": [r["dst"] for r in routes], "netns": [n for n in names if n.startswith(f"bl{lab_id}-")],
            "record": (RECORDS / f"{lab_id}.json").exists()}
orphan = sys.argv[2]
before = left(orphan)
try:
    Lab(Path(sys.argv[1])).up(1, 0, 0, host_address=False, real_nodes=False)
    refused = None
except Exception as exc:
    refused = exc.render() if hasattr(exc, "render") else str(exc)
pruned = subprocess.run([sys.executable, "-m", "bmctl", "lab", "prune"], capture_output=True, text=True)
after = left(orphan)
lab = Lab(Path(sys.argv[1]))
state = lab.up(1, 0, 0, host_address=False, real_nodes=False)
try:
    again = subprocess.run([sys.executable, "-m", "bmctl", "lab", "prune"], capture_output=True, text=True)
    running = left(state["id"])
finally:
    lab.down()
print(json.dumps({"before": before, "refused": refused, "pruned": pruned.stdout + pruned.stderr, "after": after,
                  "again": again.stdout + again.stderr, "running": running, "down": left(state["id"])}))
"""


def test_a_lab_left_by_a_killed_run_is_pruned_and_a_running_one_is_not(tmp_path):
    """A lab whose processes are all gone and whose state folder was cleaned away (a test run killed,
    this machine's processes restarted) holds the lab's ranges, so every later lab is refused;
    `bmctl lab prune` removes it from its record (namespaces, fence routes, record) and leaves a
    running lab alone. Run in a network namespace of its own (`unshare --net`)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import require
    from lab.harness import lab_prerequisites
    missing = lab_prerequisites(real_nodes=False)
    require(not missing, f"lab prerequisites: {', '.join(missing)}")
    script = ("ip link set lo up && ip link add dummy0 type veth peer name dummy1 && ip link set dummy0 up && "
              "ip addr add 10.255.255.1/24 dev dummy0 && ip route add default via 10.255.255.254 && "
              'lab_id=$("$0" -c "$1" "$2") && exec "$0" -c "$3" "$4" "$lab_id"')
    proc = subprocess.run(["unshare", "--net", "--", "sh", "-c", script, sys.executable, PRUNE_LEAVE,
                           str(tmp_path / "orphan"), PRUNE_CHECK, str(tmp_path / "lab-state")],
                          capture_output=True, text=True, timeout=180, cwd=Path(__file__).parent,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                                           os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["before"]["routes"] and got["before"]["netns"] and got["before"]["record"], got
    assert "bmctl lab prune" in got["refused"], got  # the ranges are held, and the error says what frees them
    assert "Removed lab" in got["pruned"], got
    assert got["after"] == {"routes": [], "netns": [], "record": False}, got
    assert "No lab to prune" in got["again"], got
    assert got["running"]["netns"] and got["running"]["record"], got
    assert got["down"] == {"routes": [], "netns": [], "record": False}, got
