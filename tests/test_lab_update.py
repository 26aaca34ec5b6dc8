"""`bmctl update loadbalancer` on a live lab cluster (real kube-apiservers, etcd, MetalLB, keepalived,
haproxy): each allowed change observed for real, each forbidden one refused with nothing changed,
a client on the API VIP every 50 ms during a rolling update, and hand edits undone.

The lab has 3 LB nodes; the cluster is created with two of them, the third (a bare machine) is
added by an update. Tests run in file order on one cluster: each starts from the previous one's
result, as an operator's successive updates would.
"""
from __future__ import annotations

import hashlib
import re
import time

import netaddr
import pytest
import yaml

from lab.harness import NET, Kube, LabConfig, RequestLoop, kill_at_random_points, metallb_objects, running_lab, wait_for

PARTS = ("kubelet", "kubeadm", "crictl", "crane")
LB_FILES = ("/etc/haproxy/haproxy.cfg", "/etc/keepalived/keepalived.conf", "/etc/keepalived/check_haproxy.sh",
            "/etc/kubernetes/manifests/haproxy.yaml", "/etc/kubernetes/manifests/keepalived.yaml")
LB_LABEL = "baremetal.cluster.gke.io/lbnode"
EXTRA_POOL = netaddr.IPRange(NET.ip(160), NET.ip(170))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("update"), 3, 3, 1, needs=PARTS) as harness:
        yield harness


@pytest.fixture(scope="module")
def cluster(lab):
    config = LabConfig(lab)
    spare = config.lb["nodePoolSpec"]["nodes"].pop()  # the third LB machine joins later, by an update
    path = config.write()
    proc = lab.bmctl("create", "cluster", config=path, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"config": config, "path": path, "spare": lab.node(spare["address"]), "kube": Kube(lab)}


def update(lab, path, *args, timeout=600):
    return lab.bmctl("update", "loadbalancer", *args, config=path, timeout=timeout)


def node_files(lab) -> dict:
    """sha256 of every load-balancer file on every node (absent: None)."""
    out = {}
    for node in lab.nodes:
        for path in LB_FILES:
            f = lab.node_file(node, path)
            out[(node["name"], path)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return out


def custom_api(lab):
    from kubernetes import client, config as kconfig
    return client.CustomObjectsApi(kconfig.new_client_from_config(
        config_file=str(lab.workspace / "lab" / "lab-kubeconfig")))


def in_client(lab, fn, *args, **kw):
    from lab.harness import in_netns
    with in_netns(lab.client_ns):
        return fn(*args, **kw)


def lb_service(kube, name: str, annotations: dict | None = None, wait: bool = True):
    kube("create_namespaced_service", "default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    if not wait:
        return None
    return wait_for(lambda: external_ip(kube, name), 60, f"an EXTERNAL-IP for {name}", 0.5)


def external_ip(kube, name: str) -> str | None:
    svc = kube("read_namespaced_service", name, "default")
    ing = (svc.status.load_balancer.ingress or []) if svc.status.load_balancer else []
    return ing[0].ip if ing else None


def labelled(kube) -> set[str]:
    return {a.address for n in kube("list_node").items for a in n.status.addresses
            if a.type == "InternalIP" and (n.metadata.labels or {}).get(LB_LABEL) == "true"}


def speakers(kube) -> set[str]:
    pods = kube("list_namespaced_pod", "metallb-system", label_selector="component=speaker").items
    return {p.status.host_ip for p in pods}


def api_client(lab) -> RequestLoop:
    """GET /readyz through the API VIP every 50 ms, a new TLS connection each."""
    return RequestLoop(lambda: None if lab.request(path="/readyz", timeout=2) == "ok" else "no ok from /readyz")


def test_no_change_is_a_no_op(lab, cluster):
    before = node_files(lab)
    proc = update(lab, cluster["path"], "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing: the cluster matches the config" in proc.stdout and "Nothing to update" in proc.stdout
    assert node_files(lab) == before


def test_forbidden_changes_are_refused_listing_each(lab, cluster):
    config = LabConfig(lab)
    config.docs = list(yaml.safe_load_all(cluster["path"].read_text()))
    lb = config.lb
    lb["vips"]["controlPlaneVIP"] = NET.ip(9)
    lb["ports"]["controlPlaneLBPort"] = 8443
    lb["addressPools"][0]["addresses"] = [f"{NET.ip(100)}-{NET.ip(140)}"]
    lb["addressPools"].append({"name": "new", "addresses": [f"{NET.ip(180)}/30"]})  # allowed, but not alone
    lb["nodePoolSpec"]["nodes"][0]["k8sIP"] = NET.ip(99)
    path = config.write("forbidden.yaml")
    before_files, before_objects = node_files(lab), metallb_objects(lab)
    proc = update(lab, path, "--yes")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for field in ("spec.loadBalancer.vips.controlPlaneVIP", "spec.loadBalancer.ports.controlPlaneLBPort",
                  "spec.loadBalancer.addressPools[0].addresses", "spec.loadBalancer.nodePoolSpec.nodes[0].k8sIP"):
        assert field in proc.stderr, field
    assert "forbidden.yaml:" in proc.stderr and "Fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert "nothing was changed" in proc.stderr
    # removing a pool is refused too
    config.docs = list(yaml.safe_load_all(cluster["path"].read_text()))
    config.lb["addressPools"] = [{"name": "renamed", "addresses": [f"{NET.ip(100)}-{NET.ip(150)}"]}]
    proc = update(lab, config.write("removed-pool.yaml"), "--yes")
    assert proc.returncode == 1 and "address pool 'lab-services' was removed" in proc.stderr, proc.stderr
    assert node_files(lab) == before_files
    assert metallb_objects(lab) == before_objects


def test_dry_run_shows_the_changes_and_touches_nothing(lab, cluster):
    config = cluster["config"]
    config.lb["addressPools"].append({"name": "extra", "addresses": [str(EXTRA_POOL)]})
    path = config.write("extra.yaml")
    before = node_files(lab)
    proc = update(lab, path, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Address pools to add" in proc.stdout and f"pool extra: {NET.ip(160)}-{NET.ip(170)}" in proc.stdout
    assert (lab.workspace / "lab" / "dry-run" / "cluster" / "06-metallb-pools.yaml").read_text().count("extra") >= 2
    assert node_files(lab) == before
    config.lb["addressPools"].pop()


def test_rolling_update_with_zero_failures_on_the_api_vip(lab, cluster):
    """One update that touches every LB node: a new pool, a pool that is handed out only on request,
    the spare machine joined as a third LB node, and a control-plane node taken out of the HAProxy
    backends. A client requests through the VIP every 50 ms all along."""
    kube, config, spare = cluster["kube"], cluster["config"], cluster["spare"]
    (master,) = lab.vip_holders()
    config.lb["addressPools"] += [{"name": "extra", "addresses": [str(EXTRA_POOL)]},
                                  {"name": "edge", "addresses": [f"{NET.ip(252)}/30"], "manualAssign": True}]
    config.lb["nodePoolSpec"]["nodes"].append({"address": spare["address"]})
    dropped = config.docs[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"].pop()
    path = config.write("rolling.yaml")
    with api_client(lab) as client:
        time.sleep(1)
        proc = update(lab, path, "--yes", timeout=900)
        time.sleep(1)
    print(proc.stdout)
    print(f"API VIP during the rolling update: {client.ok} requests ok, {len(client.failed)} failed "
          f"(at {client.failed} s)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert client.ok > 100 and client.failed == [], client.failed
    out = proc.stdout
    assert "Hand edits" not in out and "0 drift(s) undone" in out  # nobody edited anything by hand
    assert "Address pools to add" in out and "Load-balancer nodes to add" in out and f"remove backend " \
        f"{dropped['address']}:6444" in out
    # one node at a time, the VRRP master last among the kept nodes, the new node after it
    segment = re.escape(NET.ip(0).rsplit(".", 1)[0])
    order = [m.group(1) for m in re.finditer(rf"({segment}\.\d+)\s+(?:backup|VRRP master|new node):", out)]
    assert order[-2:] == [master, spare["address"]], order
    assert lab.vip_holders() == [master]  # the VIP never moved
    # the new node: joined, labelled, a speaker, a running keepalived + haproxy
    lb_ips = {n["address"] for n in lab.lb_nodes()}
    wait_for(lambda: labelled(kube) == lb_ips, 30, "all three LB nodes labelled")
    wait_for(lambda: speakers(kube) == lb_ips, 60, "a speaker on each LB node")
    assert lab.pod_pid(spare, "keepalived") and lab.pod_pid(spare, "haproxy")
    cfg = lab.node_file(lab.node(master), "/etc/haproxy/haproxy.cfg").read_text()
    assert f"{dropped['address']}:6444" not in cfg
    # the new pool hands out addresses
    ip = netaddr.IPAddress(lb_service(kube, "from-extra", {"metallb.io/address-pool": "extra"}))
    assert ip in EXTRA_POOL
    # the applied config is recorded in the cluster
    cm = kube("read_namespaced_config_map", "bmctl-applied-config", "kube-system")
    assert f"{NET.ip(160)}-{NET.ip(170)}" in cm.data["config.yaml"]
    # and a second run finds nothing to do
    again = update(lab, path, "--yes")
    assert again.returncode == 0 and "Nothing to update" in again.stdout, again.stdout + again.stderr


def test_the_added_lb_node_can_become_master(lab, cluster):
    spare = cluster["spare"]
    others = [n for n in lab.lb_nodes() if n["address"] != spare["address"]]
    for n in others:
        lab.set_link(n, up=False)
    try:
        wait_for(lambda: lab.vip_holders(nodes=[spare]) == [spare["address"]], 15, "the new node to take the VIP")
        lab.wait_request(timeout=15, path="/readyz")
    finally:
        for n in others:
            lab.set_link(n, up=True)
    wait_for(lambda: len(lab.vip_holders()) == 1, 15, "one VIP holder again")


def test_stranding_an_assigned_ip_is_refused(lab, cluster):
    kube, config = cluster["kube"], cluster["config"]
    assert lb_service(kube, "edge-ip", {"metallb.io/loadBalancerIPs": NET.ip(255)}) == NET.ip(255)
    config.pool("edge")["avoidBuggyIPs"] = True
    before_files, before_objects = node_files(lab), metallb_objects(lab)
    proc = update(lab, config.write("strand.yaml"), "--yes")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"default/edge-ip ({NET.ip(255)})" in proc.stderr and "Nothing was changed" in proc.stderr
    assert node_files(lab) == before_files and metallb_objects(lab) == before_objects
    config.pool("edge")["avoidBuggyIPs"] = False


def test_manual_assign_toggle_stops_auto_assignment(lab, cluster):
    kube, config = cluster["kube"], cluster["config"]
    for name in ("lab-services", "extra"):
        config.pool(name)["manualAssign"] = True
    proc = update(lab, config.write("manual.yaml"), "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pool lab-services: manualAssign false -> true" in proc.stdout
    assert metallb_objects(lab)[("IPAddressPool", "lab-services")]["autoAssign"] is False
    lb_service(kube, "after-toggle", wait=False)
    time.sleep(8)
    assert external_ip(kube, "after-toggle") is None  # no pool hands out addresses unasked any more
    assert netaddr.IPAddress(external_ip(kube, "from-extra")) in EXTRA_POOL  # assigned IPs stay
    # toggled back: the waiting Service gets an address
    for name in ("lab-services", "extra"):
        config.pool(name)["manualAssign"] = False
    proc = update(lab, config.write("auto.yaml"), "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: external_ip(kube, "after-toggle"), 60, "an IP once auto-assignment is back", 0.5)


def test_hand_edits_are_shown_and_undone(lab, cluster):
    api = custom_api(lab)
    in_client(lab, api.patch_namespaced_custom_object, "metallb.io", "v1beta1", "metallb-system", "ipaddresspools",
              "extra", {"spec": {"addresses": [f"{NET.ip(160)}-{NET.ip(165)}"], "autoAssign": False}})
    in_client(lab, api.create_namespaced_custom_object, "metallb.io", "v1beta1", "metallb-system", "ipaddresspools",
              {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": {"name": "by-hand"},
               "spec": {"addresses": [f"{NET.ip(190)}/32"], "autoAssign": False}})
    path = cluster["config"].write("drift.yaml")
    proc = update(lab, path)  # no --yes and no terminal: shows the drift, then cancels
    assert proc.returncode == 1 and "cancelled" in proc.stderr, proc.stdout + proc.stderr
    assert "IPAddressPool extra: spec.addresses[0] changed" in proc.stdout, proc.stdout
    assert "IPAddressPool by-hand: not declared" in proc.stdout, proc.stdout
    proc = update(lab, path, "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    objects = metallb_objects(lab)
    assert objects[("IPAddressPool", "extra")] == {"addresses": [str(EXTRA_POOL)], "autoAssign": True,
                                                   "avoidBuggyIPs": False}
    assert ("IPAddressPool", "by-hand") not in objects
    assert "Nothing to update" in update(lab, path, "--yes").stdout


def test_removing_an_lb_node_stops_everything_on_it(lab, cluster):
    kube, config = cluster["kube"], cluster["config"]
    holder = lab.vip_holders()[0]
    gone = next(n for n in config.lb["nodePoolSpec"]["nodes"] if n["address"] != holder)
    config.lb["nodePoolSpec"]["nodes"].remove(gone)
    node = lab.node(gone["address"])
    with api_client(lab) as client:
        proc = update(lab, config.write("remove.yaml"), "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert client.failed == [], client.failed
    assert gone["address"] in labelled_all(kube) and gone["address"] not in labelled(kube)
    wait_for(lambda: gone["address"] not in speakers(kube), 60, "the removed node's speaker to stop")
    for path in LB_FILES:
        assert not lab.node_file(node, path).exists(), path
    wait_for(lambda: not lab.running(node, "keepalived") and not lab.running(node, "haproxy"),
             60, "keepalived and haproxy stopped on the removed node")
    assert gone["address"] not in lab.vip_holders() and len(lab.vip_holders()) == 1


def labelled_all(kube) -> set[str]:
    return {a.address for n in kube("list_node").items for a in n.status.addresses if a.type == "InternalIP"}


def cluster_state(lab, kube) -> dict:
    cm = kube("read_namespaced_config_map", "bmctl-applied-config", "kube-system")
    return {"files": node_files(lab), "metallb": metallb_objects(lab), "labelled": labelled(kube),
            "applied": cm.data["config.yaml"]}


@pytest.mark.timeout(1200)
def test_update_killed_at_random_points_converges(lab, cluster):
    """`update loadbalancer` SIGKILLed at 20 random moments of an update that removes an LB node,
    toggles a pool and drops a control-plane backend, re-run each time; the final run leaves what an
    uninterrupted update leaves: every LB file on every node, every MetalLB object, the lbnode labels
    and the recorded config. (A run that finishes before its kill is undone, so the next has work.)"""
    import random
    rng = random.Random(5)
    kube, config = cluster["kube"], cluster["config"]
    before = config.write("before-kills.yaml")
    holder = lab.vip_holders()[0]
    config.lb["nodePoolSpec"]["nodes"] = [n for n in config.lb["nodePoolSpec"]["nodes"] if n["address"] == holder]
    config.pool("edge")["manualAssign"] = False
    config.docs[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"].pop()
    after = config.write("after-kills.yaml")
    start = time.monotonic()
    proc = update(lab, after, "--yes")
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = cluster_state(lab, kube)
    assert update(lab, before, "--yes").returncode == 0
    assert cluster_state(lab, kube) != reference
    kills = kill_at_random_points(
        lambda: lab.bmctl("update", "loadbalancer", "--yes", config=after, background=True),
        rng, 0.9 * took, earliest=0.3,
        undo=lambda: update(lab, before, "--yes"))
    print(f"uninterrupted update {took:.1f} s; killed at {len(kills)} points: {sorted(kills)}")
    assert len(kills) == 20
    proc = update(lab, after, "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: cluster_state(lab, kube) == reference, 30, "the state of the uninterrupted update")
    assert len(lab.vip_holders()) == 1
    assert "Nothing to update" in update(lab, after, "--yes").stdout
