"""BGP mode with real parts (issue 15, first part: Service IPs): a lab whose client sits behind a
router (FRR from Debian, in a namespace of its own; `bmctl lab up --router`), a cluster created
with `loadBalancer.type: bgp`; MetalLB's speakers on the LB nodes peer with the router, which
installs each Service IP with one next hop per LB node (ECMP) and spreads new connections over
them; cutting an LB node's link takes its next hop away while the Service keeps answering."""
from __future__ import annotations

import collections
import re
import time

import pytest

from bmctl.lab import router
from lab.harness import Kube, http_get, running_lab, start_web_service, wait_for


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("bgp"), control_planes=1, lb_nodes=2, workers=1,
                     router=True) as harness:
        yield harness


@pytest.fixture(scope="module")
def created(lab):
    proc = lab.bmctl("create", "cluster", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def service(lab, created):
    ip, _ = start_web_service(lab, Kube(lab))
    return ip


def lb_addresses(lab) -> set[str]:
    return {n["address"] for n in lab.nodes if n["role"] == "load-balancer"}


def test_create_checks_the_peers_and_the_routed_pools(lab, created):
    assert "BGP peers reachable" not in created.stdout or "fail" not in created.stdout
    out = " ".join(lab.bmctl("check", "preflight", "-o", "json").stdout.split())
    assert '"check": "BGP peers reachable"' in out and '"check": "pools routed"' in out


def test_router_has_a_session_with_every_lb_node(lab, created):
    sessions = wait_for(lambda: (lambda s: s if set(s) >= lb_addresses(lab) and
                                 all(v["state"] == "Established" for v in s.values()) else None)(
        router.bgp_summary(lab.state)), 30, "BGP sessions from both LB nodes")
    assert set(sessions) == lb_addresses(lab), sessions


def test_service_ip_is_routed_to_every_lb_node_and_answers_behind_the_router(lab, service):
    hops = wait_for(lambda: (lambda h: h if set(h) == lb_addresses(lab) else None)(
        set(router.routes(lab.state, f"{service}/32"))), 30, f"an ECMP route for {service}")
    assert hops == lb_addresses(lab)
    assert wait_for(lambda: http_get(lab, service), 30, "the Service to answer through the router")


def test_new_connections_spread_over_the_lb_nodes(lab, service):
    """1,000 new connections from the client: the router's ECMP (L4 hash) sends them to both LB
    nodes; each LB node forwards to the pod on the worker with SNAT, so the web server sees which."""
    seen = collections.Counter()
    failed = 0
    for _ in range(1000):
        body = http_get(lab, service)
        m = re.search(r"client=([0-9.]+):", body or "")
        if m:
            seen[m.group(1)] += 1
        else:
            failed += 1
    print(f"ECMP spread over 1000 connections: {dict(seen)}, failed {failed}")
    assert failed == 0
    via_lb = {ip: n for ip, n in seen.items() if ip in lb_addresses(lab)}
    assert len(via_lb) == 2, seen
    assert min(via_lb.values()) >= 200, seen  # a fair hash: far from all on one node


def test_cutting_an_lb_node_takes_its_next_hop_away_and_the_service_answers(lab, service):
    victim = next(n for n in lab.nodes if n["role"] == "load-balancer")
    other = (lb_addresses(lab) - {victim["address"]}).pop()
    lab.set_link(victim, False)
    try:
        start = time.monotonic()
        wait_for(lambda: set(router.routes(lab.state, f"{service}/32")) == {other}, 15,
                 "the router to drop the cut node's next hop")
        dropped = time.monotonic() - start
        print(f"next hop of the cut LB node gone after {dropped:.1f} s (hold time 3 s)")
        assert all(http_get(lab, service) for _ in range(20))
    finally:
        lab.set_link(victim, True)
    wait_for(lambda: set(router.routes(lab.state, f"{service}/32")) == lb_addresses(lab), 60,
             "the node's next hop back")
