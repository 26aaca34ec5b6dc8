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
