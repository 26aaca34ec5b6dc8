"""A whole cluster on the lab: real etcd, kube-apiserver, kube-proxy and MetalLB (built from their Go
modules) behind bmctl's VIP; a LoadBalancer Service reachable from the client namespace.

Lab stand-ins (documented in bmctl/lab/): kubeadm, and the kubelet's part (running pods as
processes, Node and Pod objects, EndpointSlices). The test's own backend "pod" is a process the test
starts on the worker, with a Pod object whose status the test sets, as a kubelet would.
"""
from __future__ import annotations

import subprocess
import sys
import time

import netaddr
import pytest

from bmctl.lab import binaries
from conftest import require
from lab.harness import LabHarness, in_netns, lab_prerequisites, stop, wait_for

VIP = "192.0.2.10"
PARTS = ("etcd", "kube-apiserver", "kube-proxy", "metallb-controller", "metallb-speaker")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    missing = lab_prerequisites() + [p for p in PARTS if not binaries.binary(p).exists()]
    require(not missing, f"lab prerequisites: {', '.join(missing)} (python -m bmctl.lab.binaries builds the Go parts)")
    harness = LabHarness(tmp_path_factory.mktemp("k8s"), control_planes=3, lb_nodes=2, workers=1)
    try:
        harness.up()
        yield harness
    finally:
        harness.down()


@pytest.fixture(scope="module")
def cluster(lab):
    proc = lab.bmctl("create", "cluster", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from kubernetes import client, config as kconfig
    api = kconfig.new_client_from_config(config_file=str(lab.workspace / "lab" / "lab-kubeconfig"))
    return proc, client.CoreV1Api(api)


def k(call, *args, **kw):
    """An API call made from the client namespace (the VIP is reachable only on the lab segment)."""
    with in_netns(k.netns):
        return call(*args, **kw)


def test_create_cluster_from_nothing(lab, cluster):
    proc, core = cluster
    k.netns = lab.client_ns
    for phase in ("Preflight", "Control-plane load balancer", "Kubernetes (kubeadm)", "MetalLB", "Verification"):
        assert phase in proc.stdout
    nodes = k(core.list_node).items
    ips = {a.address for n in nodes for a in n.status.addresses if a.type == "InternalIP"}
    assert ips == {n["address"] for n in lab.nodes}
    lb_ips = {n["address"] for n in lab.lb_nodes()}
    labelled = {a.address for n in nodes for a in n.status.addresses
                if a.type == "InternalIP" and (n.metadata.labels or {}).get("baremetal.cluster.gke.io/lbnode") == "true"}
    assert labelled == lb_ips
    speakers = k(core.list_namespaced_pod, "metallb-system", label_selector="component=speaker").items
    assert {p.status.host_ip for p in speakers} == lb_ips


@pytest.fixture(scope="module")
def service(lab, cluster):
    _, core = cluster
    k.netns = lab.client_ns
    worker = next(n for n in lab.nodes if n["role"] == "worker")
    backend = subprocess.Popen(["ip", "netns", "exec", worker["netns"], sys.executable, "-m", "http.server", "8080",
                                "--bind", worker["address"]], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}
        k(core.create_namespace, ns)
        wait_for(lambda: k(core.list_namespaced_service_account, "demo").items, 30, "the default ServiceAccount")
        k(core.create_namespaced_pod, "demo", {"apiVersion": "v1", "kind": "Pod",
                                               "metadata": {"name": "web", "labels": {"app": "web"}},
                                               "spec": {"nodeName": worker["name"], "containers": [
                                                   {"name": "web", "image": "python", "ports": [{"containerPort": 8080}]}]}})
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        k(core.patch_namespaced_pod_status, "web", "demo", {"status": {
            "phase": "Running", "podIP": worker["address"], "podIPs": [{"ip": worker["address"]}],
            "hostIP": worker["address"], "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}})
        k(core.create_namespaced_service, "demo", {"apiVersion": "v1", "kind": "Service",
                                                   "metadata": {"name": "web"},
                                                   "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                                                            "ports": [{"port": 80, "targetPort": 8080}]}})

        def external_ip():
            svc = k(core.read_namespaced_service, "web", "demo")
            ing = (svc.status.load_balancer.ingress or []) if svc.status.load_balancer else []
            return ing[0].ip if ing else None
        ip = wait_for(external_ip, 60, "an EXTERNAL-IP for the LoadBalancer Service", 0.5)
        yield ip
    finally:
        stop(backend)


def http(lab, ip: str, timeout: float = 1.0) -> str | None:
    import socket
    try:
        with in_netns(lab.client_ns):
            sock = socket.create_connection((ip, 80), timeout=timeout)
        with sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            data = sock.recv(4096)
        return data.decode(errors="replace")
    except OSError:
        return None


def test_service_gets_an_ip_from_the_auto_pool(lab, service):
    ip = netaddr.IPAddress(service)
    assert netaddr.IPAddress("192.0.2.101") <= ip <= netaddr.IPAddress("192.0.2.150")
    assert int(ip) % 256 not in (0, 255)


def test_client_reaches_the_backend_through_the_service_ip(lab, service):
    wait_for(lambda: http(lab, service), 30, "HTTP through the Service IP", 0.2)
    assert "200" in http(lab, service).splitlines()[0]


def announcer(lab, ip: str) -> dict:
    http(lab, ip)
    out = subprocess.run(["ip", "-n", lab.client_ns, "neigh", "show", ip], capture_output=True, text=True).stdout
    mac = out.split("lladdr")[1].split()[0]
    for node in lab.lb_nodes():
        link = subprocess.run(["ip", "-n", node["netns"], "link", "show", "eth0"], capture_output=True, text=True).stdout
        if mac in link:
            return node
    raise AssertionError(f"{ip} is answered by {mac}, which is no LB node")


def test_service_ip_moves_when_its_lb_node_is_cut(lab, service):
    wait_for(lambda: http(lab, service), 30, "HTTP through the Service IP", 0.2)
    node = announcer(lab, service)
    lab.set_link(node, up=False)
    try:
        start = time.monotonic()
        wait_for(lambda: http(lab, service, timeout=0.5), 60, "the Service IP to answer from the other LB node", 0.1)
        took = time.monotonic() - start
        assert announcer(lab, service)["address"] != node["address"]
        print(f"service IP failover: {took:.2f} s")
    finally:
        lab.set_link(node, up=True)


def test_api_vip_survives_a_control_plane_node_down(lab, cluster):
    _, core = cluster
    k.netns = lab.client_ns
    node = lab.control_planes()[2]
    lab.set_link(node, up=False)
    try:
        time.sleep(3)
        for _ in range(10):
            assert len(k(core.list_node).items) == len(lab.nodes)
    finally:
        lab.set_link(node, up=True)
