"""BGP mode with real parts: a lab whose client sits behind a router (FRR from Debian, in a
namespace of its own; `bmctl lab up --router`), a cluster created with `loadBalancer.type: bgp`.
Each LB node's FRR static pod peers with the router (BGP and BFD) and announces the API VIP while
its HAProxy answers; MetalLB (FRR mode, driving that same FRR) adds the Services' IPs. The router
installs each with one next hop per LB node (ECMP) and spreads new connections over them; cutting
an LB node's link takes its next hop away (BFD) while the API and the Service keep answering; a
hung HAProxy withdraws the VIP from its node only; LB nodes cut and restored in turn (a pulled cable,
`ip link set eth0 down`) fail no connection once the router lists them again, since each node learns
its way back to the clients from its peer; reset closes the sessions."""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bmctl.lab import router
from lab.faults import STEADY_WITHIN, alternating_faults
from lab.harness import Kube, http_get, running_lab, start_web_service, wait_for, write_variant


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
    assert "sends this node no route" not in created.stdout  # the lab's router sends a default route
    out = " ".join(lab.bmctl("check", "preflight", "-o", "json").stdout.split())
    assert '"check": "BGP peers reachable"' in out and '"check": "VIPs and pools routed"' in out


def test_router_has_a_session_with_every_lb_node(lab, created):
    sessions = wait_for(lambda: (lambda s: s if set(s) >= lb_addresses(lab) and
                                 all(v["state"] == "Established" for v in s.values()) else None)(
        router.bgp_summary(lab.state)), 30, "BGP sessions from both LB nodes")
    assert set(sessions) == lb_addresses(lab), sessions


def vip(lab) -> str:
    return lab.lab.net_of(lab.state).vip


def bfd_peers(lab) -> dict[str, str]:
    """The router's BFD sessions: peer address -> status ("up", "down", ...)."""
    return {p["peer"]: p["status"] for p in json.loads(router.vtysh(lab.state, "show bfd peers json") or "[]")}


def test_router_has_a_bfd_session_with_every_lb_node(lab, created):
    peers = wait_for(lambda: (lambda b: b if all(b.get(a) == "up" for a in lb_addresses(lab)) else None)(
        bfd_peers(lab)), 30, "BFD sessions up with both LB nodes")
    assert {a for a, st in peers.items() if st == "up"} == lb_addresses(lab), peers


def test_api_vip_is_routed_to_every_lb_node_and_answers_behind_the_router(lab, created):
    """The API VIP lies outside the node subnet: only BGP brings it to the LB nodes."""
    hops = wait_for(lambda: (lambda h: h if set(h) == lb_addresses(lab) else None)(
        set(router.routes(lab.state, f"{vip(lab)}/32"))), 30, "an ECMP route for the API VIP")
    assert hops == lb_addresses(lab)
    assert lab.request(vip=vip(lab), path="/readyz") == "ok"


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def test_a_hung_haproxy_withdraws_the_vip_from_its_node_only(lab, created):
    """HAProxy frozen (SIGSTOP: it holds its port but answers nothing) on one LB node: that node
    takes the VIP off lo and its route goes; the other keeps it and the API answers; SIGCONT brings
    it back."""
    victim = next(n for n in lab.nodes if n["role"] == "load-balancer")
    other = (lb_addresses(lab) - {victim["address"]}).pop()
    pids = _tree(lab.pod_pid(victim, "haproxy"))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        wait_for(lambda: router.routes(lab.state, f"{vip(lab)}/32") == [other], 15,
                 "the router to drop the hung node's VIP route")
        print(f"VIP route of the node with a hung HAProxy withdrawn after {time.monotonic() - start:.1f} s")
        assert lab.request(vip=vip(lab), path="/readyz") == "ok"
        assert bfd_peers(lab).get(victim["address"]) == "up"  # the node itself is fine: only the VIP went
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: set(router.routes(lab.state, f"{vip(lab)}/32")) == lb_addresses(lab), 30,
             "the VIP route back from the node once HAProxy answers")


def test_service_ip_is_routed_to_every_lb_node_and_answers_behind_the_router(lab, service):
    hops = wait_for(lambda: (lambda h: h if set(h) == lb_addresses(lab) else None)(
        set(router.routes(lab.state, f"{service}/32"))), 30, f"an ECMP route for {service}")
    assert hops == lb_addresses(lab)
    assert wait_for(lambda: http_get(lab, service), 30, "the Service to answer through the router")


def test_check_cluster_reads_bgp_sessions_and_announcements(lab, service):
    """`bmctl check cluster` in BGP mode: each LB node's sessions and VIP announcement (FRR's state)
    and the Service's IP announced (MetalLB's ServiceBGPStatus) pass."""
    import json
    proc = lab.bmctl("check", "cluster", "-o", "json", timeout=120)
    report = json.loads(proc.stdout)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert proc.returncode == 0 and not failed, failed
    vip = [c for c in report["checks"] if c["area"] == "VIP" and c["object"].startswith("BGP ")]
    assert {c["node"] for c in vip} == lb_addresses(lab) and all("announced" in c["detail"] for c in vip), vip
    assert any(service in c["detail"] and "announced" in c["detail"] for c in report["checks"]
               if c["area"] == "MetalLB"), report["checks"]


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


def _second_router(lab, ip: str, asn: int):
    """A second router on the bridge (its own namespace and FRR, BGP + BFD, any node may peer), as
    a site's second top-of-rack switch. Returns (netns, folder, pids)."""
    net = lab.lab.net_of(lab.state)
    ns = f"{lab.state['router']['ns']}2"
    folder = Path(lab.state["router"]["dir"]).parent / "frr2"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    pids: dict = {}
    try:
        subprocess.run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", "router2",
                        "netns", lab.bridge_ns], check=True)
        subprocess.run(["ip", "-n", lab.bridge_ns, "link", "set", "router2", "master", "br0", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/{net.prefix}", "dev", "eth0"], check=True)
        for link in ("eth0", "lo"):
            subprocess.run(["ip", "-n", ns, "link", "set", link, "up"], check=True)
        confs = router.configs(net, ns)
        confs["bgpd"] = confs["bgpd"].replace(f"router bgp {net.router_asn}", f"router bgp {asn}") \
            .replace(f"bgp router-id {net.router_ip}", f"bgp router-id {ip}")
        pids = router.start_frr(ns, folder, confs)
        return ns, folder, pids
    except BaseException:
        router.stop_frr(pids, folder)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        raise


def test_a_peer_added_and_removed_live_while_the_other_keeps_serving(lab, service):
    """`update loadbalancer` adds a second router as a peer, then removes it, while a client behind
    the first router keeps calling the Service and the API: not one request fails. The new router
    gets both LB nodes' sessions and the VIP and Service routes; removed, its sessions close."""
    import threading
    net = lab.lab.net_of(lab.state)
    ip2, asn2 = net.ip(125), 64514
    ns, folder, pids = _second_router(lab, ip2, asn2)
    failures: list[str] = []
    calls = collections.Counter()
    stop = threading.Event()

    def client():
        while not stop.is_set():
            calls["service"] += 1
            if http_get(lab, service, timeout=2) is None:
                failures.append(f"service at {time.monotonic():.1f}")
            calls["api"] += 1
            if lab.request(vip=vip(lab), path="/readyz", timeout=2) != "ok":
                failures.append(f"api at {time.monotonic():.1f}")
            time.sleep(0.02)

    def cluster_doc(docs):
        return next(d for d in docs if d and d.get("kind") == "Cluster")

    two = write_variant(lab, lambda docs: cluster_doc(docs)["spec"]["loadBalancer"]["bgpPeers"].append(
        {"ip": ip2, "asn": asn2}), "two-peers.yaml")
    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    try:
        proc = lab.bmctl("update", "loadbalancer", "--yes", config=two, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sessions = wait_for(lambda: (lambda s: s if {a for a, p in s.items() if p["state"] == "Established"}
                                     == lb_addresses(lab) else None)(
            router.summary_of(router._vtysh(folder, ["show bgp ipv4 unicast summary json"]).stdout)), 60,
            "both LB nodes' sessions with the new router")
        assert set(sessions) == lb_addresses(lab)
        for prefix in (f"{vip(lab)}/32", f"{service}/32"):
            wait_for(lambda: set(router.kernel_next_hops(ns, prefix)) == lb_addresses(lab), 30,
                     f"the new router's ECMP route for {prefix}")
        proc = lab.bmctl("update", "loadbalancer", "--yes", timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for(lambda: not [a for a, p in router.summary_of(router._vtysh(
            folder, ["show bgp ipv4 unicast summary json"]).stdout).items() if p["state"] == "Established"], 60,
            "the removed peer's sessions to close")
        wait_for(lambda: router.kernel_next_hops(ns, f"{vip(lab)}/32") == [], 10,
                 "the removed peer's routes to go from its kernel")
        time.sleep(3)  # the client keeps going a little after the removal
    finally:
        stop.set()
        worker.join(10)
        router.stop_frr(pids, folder)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"peer added and removed: {dict(calls)} calls, {len(failures)} failed")
    assert calls["service"] > 50 and failures == [], failures[:10]
    assert set(router.routes(lab.state, f"{service}/32")) == lb_addresses(lab)


def test_cutting_an_lb_node_takes_its_next_hop_away_and_the_service_answers(lab, service):
    victim = next(n for n in lab.nodes if n["role"] == "load-balancer")
    other = (lb_addresses(lab) - {victim["address"]}).pop()
    lab.set_link(victim, False)
    try:
        start = time.monotonic()
        wait_for(lambda: set(router.routes(lab.state, f"{service}/32")) == {other}, 15,
                 "the router to drop the cut node's next hop")
        dropped = time.monotonic() - start
        print(f"next hop of the cut LB node gone after {dropped:.2f} s (BFD 3 x 200 ms; hold time 3 s)")
        assert set(router.routes(lab.state, f"{vip(lab)}/32")) == {other}
        assert all(http_get(lab, service) for _ in range(20))
        assert lab.request(vip=vip(lab), path="/readyz") == "ok"
    finally:
        lab.set_link(victim, True)
    wait_for(lambda: set(router.routes(lab.state, f"{service}/32")) == lb_addresses(lab), 60,
             "the node's next hop back")


def test_an_lb_node_without_its_configured_route_answers_through_the_route_its_peer_sends(lab, service):
    """Each LB node installs the routes its peers send (the lab's router sends a default route), so
    a node whose own routes towards the clients are gone still answers them, through the route that
    came with its session. Without it, the replies of every connection hashed to this node are lost
    (the node knows only its own /25)."""
    net = lab.lab.net_of(lab.state)
    victim = next(n for n in lab.nodes if n["role"] == "load-balancer")
    learned = wait_for(lambda: [r for r in json.loads(subprocess.run(
        ["ip", "-n", victim["netns"], "-j", "route", "show", "default"], capture_output=True, text=True).stdout or "[]")
        if r.get("protocol") == "bgp" and r.get("gateway") == net.router_ip], 30,
        "the default route from the router in the LB node's kernel")
    assert learned, learned
    subprocess.run(["ip", "-n", victim["netns"], "route", "del", net.routed_cidr], check=True)
    try:
        seen = collections.Counter()
        failed = 0
        for _ in range(200):
            body = http_get(lab, service, timeout=2)
            m = re.search(r"client=([0-9.]+):", body or "")
            if m:
                seen[m.group(1)] += 1
            else:
                failed += 1
        api_failed = sum(lab.request(vip=vip(lab), path="/readyz", timeout=2) != "ok" for _ in range(50))
    finally:
        subprocess.run(["ip", "-n", victim["netns"], "route", "replace", net.routed_cidr, "via", net.router_ip],
                       check=True)
    print(f"node without its configured route: {dict(seen)}, service failed {failed}, API failed {api_failed}")
    assert failed == 0 and api_failed == 0
    assert seen[victim["address"]] >= 40, seen  # the victim took its share


def test_alternating_faults_fail_no_connection_after_a_restore(lab, service):
    """LB node A loses its link and gets it back, then B, then A with the other fault, ... (FAULTS:
    a pulled cable and `ip link set eth0 down`, each on both nodes). Clients behind the router open
    a new connection to the API VIP and to the Service IP every 50 ms throughout. Each cut costs only
    the connections hashed to the cut node until BFD takes its next hop away (under 1 s); from the
    moment the router lists a restored node again, not one new connection fails: the node came back
    with its way to the clients (its routes, and the default route its peer sends) and announced
    nothing before its routing table was whole again (flannel's routes come back every 10 s after
    `ip link set eth0 up`). Connections in flight when the router adds the node's next hop may be
    reset (its ECMP hash moves some of them); they are counted, not failed."""
    out = alternating_faults(lab, service, vip(lab))
    rounds = out["rounds"]
    for r in rounds:
        print(f"{r['node']} {r['fault']}: " + ", ".join(
            f"{name}: withdrawn {r[f'{name}_withdrawn_s']} s, steady {r[f'{name}_steady_s']} s, back in ECMP "
            f"{r[f'{name}_back_s']} s after the restore ({r[f'{name}_rehash_resets']} in flight reset), "
            f"{r[f'{name}_failed_after_back']} failed after" for name in ("api", "service")))
    print(f"connections: {out['count']}, failed: {len(out['failures'])}")
    for name, t, why in sorted(out["failures"], key=lambda f: f[1]):
        print(f"  {name} failed at {t - rounds[0]['cut']:.2f} s: {why}")
    assert not out["stray"], f"failures away from a cut and from a rehash: {out['stray'][:10]}"
    for r in rounds:
        for name in ("api", "service"):
            assert r[f"{name}_failed_after_back"] == 0, r
            assert r[f"{name}_steady_s"] < STEADY_WITHIN, r
    assert {r["fault"] for r in rounds} == {"carrier", "admin"}
    assert min(out["count"].values()) > 200


def test_reset_closes_the_sessions_and_withdraws_every_route(lab, service):
    proc = lab.bmctl("reset", "cluster", "--force", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = router.bgp_summary(lab.state)
    assert not [a for a, p in summary.items() if p["state"] == "Established"], summary
    assert router.routes(lab.state, f"{vip(lab)}/32") == [] and router.routes(lab.state, f"{service}/32") == []
    for node in lab.nodes:
        if node["role"] == "load-balancer":
            assert not lab.lab.node_exec(node["name"], ["ls", "/var/lib/bmctl/frr"], check=False).stdout.strip()
            assert vip(lab) not in lab.addresses(node)
