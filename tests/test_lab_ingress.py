"""The bundled ingress on a lab cluster (real Traefik, MetalLB, kube-proxy, containerd on every node):
an HTTPRoute and an Ingress routing host and path to Deployments on the worker, reached from the
client namespace through the ingress VIP; the client's address kept; HTTPS with the user's
certificate; the VIP announced only where a Traefik pod is ready, and moved when that node is cut
off; LB nodes added and removed by `update loadbalancer` with a client on the ingress VIP; hand edits
undone; the ingress turned off; reset.

The lab has 3 LB nodes; the cluster is created with two, the third is added by an update. Tests run
in file order on one cluster.
"""
from __future__ import annotations

import datetime
import subprocess
import time

import pytest

from lab.harness import NET, Kube, LabConfig, RequestLoop, announcer, in_netns, running_lab, wait_for, web_image

PARTS = ("kubelet", "kubeadm", "crictl", "crane", "traefik")
VIP = NET.ingress_vip
CLIENT = NET.client_ip
TLS_SECRET = "demo-tls"
LB_LABEL = "baremetal.cluster.gke.io/lbnode"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("ingress"), 1, 3, 1, needs=PARTS) as harness:
        yield harness


def apis(lab):
    from kubernetes import client, config as kconfig
    api = kconfig.new_client_from_config(config_file=str(lab.workspace / "lab" / "lab-kubeconfig"))
    return client.AppsV1Api(api), client.CustomObjectsApi(api), client.NetworkingV1Api(api)


def call(lab, fn, *args, **kw):
    with in_netns(lab.client_ns):
        return fn(*args, **kw)


@pytest.fixture(scope="module")
def cluster(lab):
    config = LabConfig(lab)
    spare = config.lb["nodePoolSpec"]["nodes"].pop()  # the third LB machine joins later, by an update
    config.lb["ingress"] = {"tlsSecret": TLS_SECRET}
    path = config.write("lab.yaml")
    proc = lab.bmctl("create", "cluster", config=path, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"proc": proc, "config": config, "path": path, "spare": lab.node(spare["address"]), "kube": Kube(lab)}


def curl(lab, url: str, *args: str, timeout: float = 3) -> tuple[int, str]:
    """curl from the client namespace: (HTTP status or 0, body)."""
    proc = subprocess.run(["ip", "netns", "exec", lab.client_ns, "curl", "-s", "--max-time", str(timeout),
                           "-w", "\n%{http_code}", *args, url], capture_output=True, text=True)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code) if code.isdigit() else 0, body


def get(lab, host: str, path: str, timeout: float = 3) -> tuple[int, str]:
    return curl(lab, f"http://{VIP}{path}", "-H", f"Host: {host}", timeout=timeout)


def fields(body: str) -> dict:
    return dict(f.split("=", 1) for f in body.split() if "=" in f)


def traefik_nodes(lab, kube) -> dict[str, bool]:
    """node name -> whether its Traefik pod is Ready (pods not being deleted)."""
    pods = kube("list_namespaced_pod", "bmctl-ingress", label_selector="app.kubernetes.io/name=traefik").items
    return {p.spec.node_name: any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            for p in pods if not p.metadata.deletion_timestamp}


def node_name(lab, kube, address: str) -> str:
    for n in kube("list_node").items:
        if any(a.address == address for a in n.status.addresses):
            return n.metadata.name
    raise AssertionError(address)


@pytest.fixture(scope="module")
def routes(lab, cluster):
    """Two Deployments of the lab's web server on the worker: web-a behind an HTTPRoute
    (a.example.test, /a), web-b behind a classic Ingress with no class (b.example.test, /b)."""
    kube = cluster["kube"]
    apps, custom, net = apis(lab)
    worker = next(n for n in lab.nodes if n["role"] == "worker")
    kube("create_namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    for app in ("web-a", "web-b"):
        call(lab, apps.create_namespaced_deployment, "demo", {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": {"app": app}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": worker["name"]},
                                           "containers": [{"name": "web", "image": web_image(lab),
                                                           "ports": [{"containerPort": 8080}],
                                                           "readinessProbe": {"httpGet": {"path": "/healthz",
                                                                                          "port": 8080},
                                                                              "periodSeconds": 1}}]}}}})
        kube("create_namespaced_service", "demo", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": app},
            "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]}})
    call(lab, custom.create_namespaced_custom_object, "gateway.networking.k8s.io", "v1", "demo", "httproutes", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "a"},
        "spec": {"parentRefs": [{"name": "bmctl-ingress", "namespace": "bmctl-ingress"}],
                 "hostnames": ["a.example.test"],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
                            "backendRefs": [{"name": "web-a", "port": 80}]}]}})
    call(lab, net.create_namespaced_ingress, "demo", {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "b"},
        "spec": {"rules": [{"host": "b.example.test", "http": {"paths": [
            {"path": "/b", "pathType": "Prefix", "backend": {"service": {"name": "web-b", "port": {"number": 80}}}}]}}]}})
    wait_for(lambda: get(lab, "a.example.test", "/a")[0] == 200 and get(lab, "b.example.test", "/b")[0] == 200,
             120, "both routes to answer through the ingress VIP", 0.5)
    return kube


def test_create_deploys_traefik_on_the_lb_nodes_behind_the_ingress_vip(lab, cluster):
    proc, kube = cluster["proc"], cluster["kube"]
    assert "Bundled ingress" in proc.stdout and "ingress ready" in proc.stdout
    # the named Secret does not exist yet: said, with the command that creates it
    assert f"the TLS Secret bmctl-ingress/{TLS_SECRET}" in proc.stdout and "create secret tls" in proc.stdout
    lb_names = {node_name(lab, kube, n["address"]) for n in lab.lb_nodes() if n["address"] != cluster["spare"]["address"]}
    assert traefik_nodes(lab, kube) == dict.fromkeys(lb_names, True)
    svc = kube("read_namespaced_service", "traefik", "bmctl-ingress")
    assert svc.spec.external_traffic_policy == "Local"
    assert [i.ip for i in svc.status.load_balancer.ingress] == [VIP]
    _, custom, _ = apis(lab)
    gw = call(lab, custom.get_namespaced_custom_object, "gateway.networking.k8s.io", "v1", "bmctl-ingress",
              "gateways", "bmctl-ingress")
    assert {c["type"]: c["status"] for c in gw["status"]["conditions"]}["Programmed"] == "True"
    assert [a["value"] for a in gw["status"]["addresses"]] == [VIP]
    # a request no route matches gets Traefik's 404: the VIP answers
    assert get(lab, "nothing.example.test", "/")[0] == 404


def test_httproute_and_ingress_route_by_host_and_path(lab, routes):
    code, body = get(lab, "a.example.test", "/a/page")
    assert code == 200 and fields(body)["pod"].startswith("web-a-") and fields(body)["path"] == "/a/page"
    code, body = get(lab, "b.example.test", "/b")
    assert code == 200 and fields(body)["pod"].startswith("web-b-") and fields(body)["vhost"] == "b.example.test"
    assert get(lab, "a.example.test", "/b")[0] == 404   # the path of the other host
    assert get(lab, "b.example.test", "/a")[0] == 404
    assert get(lab, "c.example.test", "/a")[0] == 404   # a host no route names
    # the Ingress (no class given) got the default IngressClass, and its status the VIP
    _, _, net = apis(lab)
    ing = call(lab, net.read_namespaced_ingress, "b", "demo")
    assert ing.spec.ingress_class_name == "bmctl"
    assert [i.ip for i in ing.status.load_balancer.ingress] == [VIP]


def test_backends_see_the_clients_own_address(lab, routes):
    for host, path in (("a.example.test", "/a"), ("b.example.test", "/b")):
        code, body = get(lab, host, path)
        assert code == 200 and fields(body)["xff"] == CLIENT, body
    # a forged X-Forwarded-For from the client is not trusted: the backend sees the real address
    code, body = curl(lab, f"http://{VIP}/a", "-H", "Host: a.example.test", "-H", "X-Forwarded-For: 192.0.2.77")
    assert code == 200 and fields(body)["xff"] == CLIENT, body


def _ca_and_cert(folder):
    """A CA and a server certificate for *.example.test (and the VIP) signed by it: PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.example.test"),
                                                        x509.IPAddress(ipaddress.ip_address(VIP))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = {"ca": folder / "ca.crt", "crt": folder / "tls.crt", "key": folder / "tls.key"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["crt"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def test_https_on_443_with_the_users_certificate(lab, routes, tmp_path):
    kube = routes
    pem = _ca_and_cert(tmp_path)
    resolve = f"a.example.test:443:{VIP}"
    # before the Secret exists, the name is not served with a certificate the client trusts
    code, _ = curl(lab, "https://a.example.test/a", "--resolve", resolve, "--cacert", str(pem["ca"]))
    assert code == 0
    kube("create_namespaced_secret", "bmctl-ingress", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": TLS_SECRET}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": pem["crt"].read_text(), "tls.key": pem["key"].read_text()}})
    wait_for(lambda: curl(lab, "https://a.example.test/a", "--resolve", resolve, "--cacert", str(pem["ca"]))[0] == 200,
             60, "HTTPS with the user's certificate", 0.5)
    code, body = curl(lab, "https://a.example.test/a/tls", "--resolve", resolve, "--cacert", str(pem["ca"]))
    assert code == 200 and fields(body)["pod"].startswith("web-a-") and fields(body)["xff"] == CLIENT


def _traefik_pid(lab, node: dict) -> int:
    cid = lab.crictl(node, "ps", "-q", "--name", "^traefik$", "--state", "Running").split()
    assert len(cid) == 1, cid
    return int(lab.crictl(node, "inspect", "-o", "go-template", "--template", "{{.info.pid}}", cid[0]))


def test_the_vip_is_announced_only_where_traefik_is_ready(lab, routes):
    """Traefik hung (SIGSTOP) on the announcing node: its pod turns unready, MetalLB announces the
    VIP from the other LB node, the ingress answers from there; the hung node never answers ARP again
    while its pod is unready."""
    kube = routes
    node = announcer(lab, VIP)
    pid = _traefik_pid(lab, node)
    import os
    import signal
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        wait_for(lambda: announcer(lab, VIP)["address"] != node["address"] and get(lab, "a.example.test", "/a",
                                                                                  timeout=1)[0] == 200,
                 60, "the ingress VIP to move to the LB node with a ready Traefik", 0.2)
        print(f"ingress VIP moved off a hung Traefik in {time.monotonic() - start:.1f} s")
        name = node_name(lab, kube, node["address"])
        assert traefik_nodes(lab, kube)[name] is False
        for _ in range(10):
            assert announcer(lab, VIP)["address"] != node["address"]
            time.sleep(0.3)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: all(traefik_nodes(lab, kube).values()), 60, "Traefik ready again everywhere", 0.5)


def test_cutting_the_announcing_nodes_link_moves_the_ingress(lab, routes):
    node = announcer(lab, VIP)
    lab.set_link(node, up=False)
    try:
        start = time.monotonic()
        wait_for(lambda: get(lab, "a.example.test", "/a", timeout=0.5)[0] == 200, 60,
                 "the ingress to answer from another LB node", 0.1)
        print(f"ingress VIP failover on a link cut: {time.monotonic() - start:.2f} s")
        assert announcer(lab, VIP)["address"] != node["address"]
    finally:
        lab.set_link(node, up=True)
    wait_for(lambda: len(traefik_nodes(lab, routes)) == 2 and all(traefik_nodes(lab, routes).values()), 120,
             "both Traefik pods ready again", 0.5)


def _get_through_vip() -> str | None:
    """GET http://VIP/a (Host a.example.test) on a new connection: None if the backend answered, else why."""
    import socket
    try:
        with socket.create_connection((VIP, 80), timeout=3) as sock:
            sock.settimeout(3)
            sock.sendall(b"GET /a HTTP/1.0\r\nHost: a.example.test\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    head = data.split(b"\r\n", 1)[0]
    return None if head.split(b" ")[1:2] == [b"200"] else head.decode()


def ingress_client(lab) -> RequestLoop:
    """_get_through_vip from the client namespace every 50 ms."""
    def once():
        with in_netns(lab.client_ns):
            return _get_through_vip()
    return RequestLoop(once)


class Moves:
    """The client's ARP entry for the ingress VIP every 50 ms while the block runs: when the
    announcing node changed, in seconds of `clock`'s (a RequestLoop) time."""

    def __init__(self, lab, clock: RequestLoop) -> None:
        import threading
        self.lab, self.clock = lab, clock
        self.changes: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _mac(self) -> str | None:
        out = subprocess.run(["ip", "-n", self.lab.client_ns, "neigh", "show", VIP], capture_output=True,
                             text=True).stdout
        return out.split("lladdr")[1].split()[0] if "lladdr" in out else None

    def _run(self) -> None:
        last = self.first
        while not self.stop.wait(0.05):
            mac = self._mac()
            if mac and mac != last:
                self.changes.append((round(time.monotonic() - self.clock.started, 2), mac))
                last = mac

    def __enter__(self) -> "Moves":
        get(self.lab, "a.example.test", "/a")  # a fresh ARP entry to start from
        self.first = self._mac()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_lb_nodes_added_and_removed_without_a_failed_request(lab, cluster, routes):
    """The spare machine joins as an LB node (its Traefik starts there), then the node announcing
    the ingress VIP leaves, with a client on the VIP every 50 ms (a new connection each). Every
    request is answered by the backend, except that a connection in flight at the very moment the
    announcement moves to another node is reset: the client's next packets reach the new node, which
    knows no such connection. That is layer 2's failover itself (the client's ARP entry moves all of
    the VIP's packets at once); a move happens when the announcing node leaves, and when a new node
    wins MetalLB's election (the lowest sha256 of node name and IP: in this lab, the spare n4). So:
    no failure away from a move, at most one per move."""
    kube = routes
    config = cluster["config"]
    spare = cluster["spare"]
    with ingress_client(lab) as client, Moves(lab, client) as moves:
        config.lb["nodePoolSpec"]["nodes"].append({"address": spare["address"]})
        proc = lab.bmctl("update", "loadbalancer", "--yes", config=config.write("add.yaml"), timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert traefik_nodes(lab, kube) == dict.fromkeys(
            {node_name(lab, kube, n["address"]) for n in lab.lb_nodes()}, True)
        time.sleep(2)
        leaving = announcer(lab, VIP)
        config.lb["nodePoolSpec"]["nodes"] = [n for n in config.lb["nodePoolSpec"]["nodes"]
                                              if n["address"] != leaving["address"]]
        proc = lab.bmctl("update", "loadbalancer", "--yes", config=config.write("remove.yaml"), timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        time.sleep(2)
    print(f"ingress VIP during the LB node changes: {client.ok} requests ok, {len(client.failed)} failed "
          f"{client.failed[:5]}; announcement moves at {moves.changes}")
    assert client.ok > 100 and len(moves.changes) >= 1  # the announcing node left: it moved at least then
    for at, why in client.failed:
        assert "reset" in why.lower() and any(abs(at - m) <= 1.5 for m, _ in moves.changes), (at, why, moves.changes)
    assert len(client.failed) <= len(moves.changes), (client.failed, moves.changes)
    left = node_name(lab, kube, leaving["address"])
    assert left not in traefik_nodes(lab, kube)
    assert announcer(lab, VIP)["address"] != leaving["address"]
    cluster["path"] = config.write("current.yaml")


def test_hand_edits_are_shown_and_undone(lab, cluster, routes):
    kube = routes
    apps, custom, _ = apis(lab)
    # a listener added to bmctl's Gateway, an argument changed on Traefik, the Service's policy flipped
    gw = call(lab, custom.get_namespaced_custom_object, "gateway.networking.k8s.io", "v1", "bmctl-ingress",
              "gateways", "bmctl-ingress")
    gw["spec"]["listeners"].append({"name": "extra", "protocol": "HTTP", "port": 9000})
    call(lab, custom.replace_namespaced_custom_object, "gateway.networking.k8s.io", "v1", "bmctl-ingress",
         "gateways", "bmctl-ingress", gw)
    kube("patch_namespaced_service", "traefik", "bmctl-ingress", {"spec": {"externalTrafficPolicy": "Cluster"}})
    proc = lab.bmctl("update", "loadbalancer", "--yes", config=cluster["path"], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Gateway bmctl-ingress: spec.listeners changed" in proc.stdout, proc.stdout
    assert "Service traefik: spec.externalTrafficPolicy changed" in proc.stdout, proc.stdout
    gw = call(lab, custom.get_namespaced_custom_object, "gateway.networking.k8s.io", "v1", "bmctl-ingress",
              "gateways", "bmctl-ingress")
    assert [lst["name"] for lst in gw["spec"]["listeners"]] == ["http", "https"]
    assert kube("read_namespaced_service", "traefik", "bmctl-ingress").spec.external_traffic_policy == "Local"
    code, body = get(lab, "a.example.test", "/a")
    assert code == 200 and fields(body)["xff"] == CLIENT


def test_bundled_ingress_off_removes_it_and_on_brings_it_back(lab, cluster, routes):
    kube = routes
    config = cluster["config"]
    config.docs[2]["spec"]["clusterNetwork"]["bundledIngress"] = False
    del config.lb["ingress"]
    proc = lab.bmctl("update", "loadbalancer", "--yes", config=config.write("off.yaml"), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "turn the bundled ingress off" in proc.stdout
    assert "bmctl-ingress" not in {n.metadata.name for n in kube("list_namespace").items}
    assert get(lab, "a.example.test", "/a", timeout=1)[0] == 0   # nothing answers on the VIP
    # the user's routes stay (the Gateway API CRDs are kept)
    _, custom, _ = apis(lab)
    assert call(lab, custom.get_namespaced_custom_object, "gateway.networking.k8s.io", "v1", "demo", "httproutes",
                "a")["metadata"]["name"] == "a"
    del config.docs[2]["spec"]["clusterNetwork"]["bundledIngress"]
    proc = lab.bmctl("update", "loadbalancer", "--yes", config=config.write("on.yaml"), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "turn the bundled ingress on" in proc.stdout
    wait_for(lambda: get(lab, "a.example.test", "/a", timeout=1)[0] == 200, 60, "the ingress back", 0.5)
    cluster["path"] = config.write("current.yaml")


def test_reset_takes_the_ingress_down(lab, cluster):
    proc = lab.bmctl("reset", "cluster", "--force", config=cluster["path"], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert get(lab, "a.example.test", "/a", timeout=1)[0] == 0
    assert curl(lab, f"http://{VIP}/", timeout=1)[0] == 0
