"""The lab's addresses: documentation ranges that collide with none of this machine's addresses or
routes (a machine's own network can itself be one, e.g. eth0 192.0.2.2/24 with the gateway .1)."""
from __future__ import annotations

import netaddr
import pytest

from bmctl.errors import BmctlError
from bmctl.lab.net import CANDIDATES, collisions, host_networks, pick


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
    up = {"fences": unreachable(), "segment": net.segment, "pods": net.pods, "connect": refused}
finally:
    lab.down()
print(json.dumps({**up, "after_down": unreachable()}))
"""


def test_without_a_host_address_this_machine_cannot_send_to_the_lab(tmp_path):
    """`bmctl lab up --no-host-address` (what the tests use): the lab's segment and pod network are
    unreachable routes here, so a command run outside the lab's namespaces fails at once instead of
    sending lab traffic out of this machine's default route; `lab down` removes them. Run in a
    network namespace of its own (`unshare --net`) with a default route, as this machine has one."""
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
              f'exec "{sys.executable}" -c "$0" "$1"')
    proc = subprocess.run(["unshare", "--net", "--", "sh", "-c", script, FENCE_CHECK, str(tmp_path / "lab-state")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                           os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["fences"] == sorted([got["segment"], got["pods"]])
    assert got["connect"] == "EHOSTUNREACH", got
    assert got["after_down"] == []
