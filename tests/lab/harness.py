"""Test-side helpers around `bmctl lab`: run bmctl from the client namespace, probe the VIP,
inject faults (link cuts, killed processes, stopped backends) and read every node's addresses.

Everything a helper starts is stopped by pid by the fixture that started it.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bmctl.lab.lab import Lab
from bmctl.lab.net import pick

HERE = Path(__file__).resolve().parent
# The lab's addresses on this machine (documentation ranges none of its own addresses or routes
# use); every lab a test starts uses this segment, so tests can name addresses before it is up.
NET = pick()
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


@contextmanager
def in_netns(name: str):
    """Run the block's sockets in a network namespace (setns affects only the calling thread)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def make_cert(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-standin")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "apiserver.crt", folder / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class LabHarness:
    def __init__(self, workdir: Path, control_planes: int = 3, lb_nodes: int = 0, workers: int = 0,
                 real_nodes: bool = True, router: bool = False) -> None:
        self.workdir = workdir
        self.workspace = workdir / "bmctl-workspace"
        self.lab = Lab(self.workspace / "lab" / "lab-state")
        self.sizes = (control_planes, lb_nodes, workers)
        self.real_nodes = real_nodes
        self.router = router
        self.backends: dict[str, subprocess.Popen] = {}
        self.extra: list[subprocess.Popen] = []
        self.state: dict = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def up(self) -> "LabHarness":
        (self.workspace / "lab").mkdir(parents=True, exist_ok=True)
        self.state = self.lab.up(*self.sizes, host_address=False, subnet=NET.segment, real_nodes=self.real_nodes,
                                 router=self.router)
        return self

    def down(self) -> None:
        for proc in [*self.backends.values(), *self.extra]:
            stop(proc)
        self.backends.clear()
        self.extra.clear()
        if self.lab.exists:
            # keep the nodes' logs (units: containerd, kubelet) next to the test's workspace
            keep = self.workdir / "lab-logs"
            for node in self.nodes:
                src = self.lab.state_dir / node["name"]
                for log in [*src.glob("*.log"), *(src / "pods").glob("*.log")]:
                    (keep / node["name"]).mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, keep / node["name"] / log.name)
            self.lab.down()

    @property
    def config(self) -> Path:
        return Path(self.state["config"])

    @property
    def client_ns(self) -> str:
        return self.state["client_ns"]

    @property
    def bridge_ns(self) -> str:
        return self.state["bridge_ns"]

    @property
    def nodes(self) -> list[dict]:
        return self.state["nodes"]

    def node(self, address: str) -> dict:
        return next(n for n in self.nodes if n["address"] == address)

    def control_planes(self) -> list[dict]:
        return [n for n in self.nodes if n["role"] == "control-plane"]

    def lb_nodes(self) -> list[dict]:
        lbs = [n for n in self.nodes if n["role"] == "load-balancer"]
        return lbs or self.control_planes()

    # -- running things -------------------------------------------------------------------------
    def bmctl(self, *args: str, config: Path | None = None, timeout: float = 300, check: bool = False,
              background: bool = False, cluster: bool = True):
        """bmctl from the client namespace, with -c the lab's config (or `config`) unless cluster=False."""
        argv = ["ip", "netns", "exec", self.client_ns, sys.executable, "-m", "bmctl", *args]
        if cluster and (config is not None or "-c" not in args):
            argv += ["-c", str(config or self.config)]
        env = {**os.environ, "BMCTL_WORKSPACE": str(self.workspace), "COLUMNS": "200"}
        if background:
            return subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
        proc = subprocess.run(argv, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"bmctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start_backends(self) -> None:
        certs = make_cert(self.lab.state_dir)
        script = self.lab.state_dir / "kube-apiserver"
        script.write_text(f"#!{sys.executable}\n" + (HERE / "kube-apiserver").read_text())
        script.chmod(0o755)
        for node in self.control_planes():
            self.start_backend(node, script, certs)

    def start_backend(self, node: dict, script: Path | None = None, certs=None) -> None:
        script = script or self.lab.state_dir / "kube-apiserver"
        certs = certs or (self.lab.state_dir / "apiserver.crt", self.lab.state_dir / "apiserver.key")
        proc = subprocess.Popen(["ip", "netns", "exec", node["netns"], str(script), f"{node['address']}:6444",
                                 node["name"], str(certs[0]), str(certs[1])], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.backends[node["address"]] = proc
        wait_for(lambda: self.lab._listening(node["netns"], 6444), 10, f"backend on {node['name']}")

    def stop_backend(self, address: str) -> None:
        stop(self.backends.pop(address))

    def start_in(self, netns: str, argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.extra.append(proc)
        return proc

    # -- observing ------------------------------------------------------------------------------
    def addresses(self, node: dict) -> list[str]:
        out = subprocess.run(["ip", "-n", node["netns"], "-j", "addr", "show"], capture_output=True, text=True,
                             check=True).stdout
        return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]

    def vip_holders(self, vip: str = NET.ip(10), nodes: list[dict] | None = None) -> list[str]:
        return [n["address"] for n in (nodes or self.nodes) if vip in self.addresses(n)]

    def request(self, vip: str = NET.ip(10), port: int = 443, path: str = "/", timeout: float = 1.0) -> str | None:
        """GET https://vip:port/path from the client namespace; the body, or None on failure."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with in_netns(self.client_ns):
                sock = socket.create_connection((vip, port), timeout=timeout)
            with ctx.wrap_socket(sock) as tls:
                tls.settimeout(timeout)
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except (OSError, ssl.SSLError):
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        return body.decode() if head.startswith(b"HTTP/1.1 200") else None

    def wait_request(self, timeout: float = 15.0, **kw) -> float:
        """Seconds until a request through the VIP succeeds (raises after timeout)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.request(timeout=0.5, **kw) is not None:
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"no successful request through the VIP within {timeout} s")

    def crictl(self, node: dict, *args: str, check: bool = True) -> str:
        """crictl on the node; with check=False, "" when it fails (e.g. containerd still starting)."""
        proc = self.lab.node_exec(node["name"], ["crictl", "--runtime-endpoint",
                                                 "unix:///run/containerd/containerd.sock", *args], check=check)
        return proc.stdout if proc.returncode == 0 else ""

    def container(self, node: dict, pod: str) -> str:
        """The id of the running container of that name on the node."""
        ids = self.crictl(node, "ps", "-q", "--name", f"^{pod}$", "--state", "Running").split()
        assert len(ids) == 1, f"{pod} on {node['name']}: running containers {ids}"
        return ids[0]

    def pod_logs(self, node: dict, pod: str) -> str:
        """What the running container of that name wrote (stdout and stderr)."""
        proc = self.lab.node_exec(node["name"], ["crictl", "--runtime-endpoint",
                                                 "unix:///run/containerd/containerd.sock", "logs",
                                                 self.container(node, pod)])
        return proc.stdout + proc.stderr

    def running(self, node: dict, pod: str) -> bool:
        """Whether a container of that name runs on the node (not while its containerd starts)."""
        return bool(self.crictl(node, "ps", "-q", "--name", f"^{pod}$", "--state", "Running", check=False).split())

    def pod_pid(self, node: dict, pod: str) -> int:
        """The pid (as this machine sees it) of the main process of a static pod's running container."""
        if not self.real_nodes:
            return int((self.lab.state_dir / node["name"] / "pods" / f"{pod}_{pod}.pid").read_text())
        return int(self.crictl(node, "inspect", "-o", "go-template", "--template", "{{.info.pid}}",
                               self.container(node, pod)))

    def reboot(self, node: dict) -> None:
        self.lab.reboot(node["name"])

    def set_link(self, node: dict, up: bool) -> None:
        """A pulled (and plugged) cable: the bridge's side of the node's link goes down, so the node
        loses its carrier and keeps its routes (marked linkdown)."""
        port = node["name"]
        subprocess.run(["ip", "-n", self.bridge_ns, "link", "set", port, "up" if up else "down"], check=True)

    def set_admin(self, node: dict, up: bool) -> None:
        """`ip link set eth0 down` (and up) on the node itself: every route through eth0 goes; when it
        comes up, the node's network configuration puts its configured routes back (bmctl/lab/node.py)."""
        subprocess.run(["ip", "-n", node["netns"], "link", "set", "eth0", "up" if up else "down"], check=True)

    def fault(self, node: dict, kind: str, up: bool) -> None:
        """kind: "carrier" (set_link) or "admin" (set_admin)."""
        (self.set_link if kind == "carrier" else self.set_admin)(node, up)

    def node_file(self, node: dict, path: str) -> Path:
        """A file as the node sees it (the lab keeps each node's folders under its state)."""
        from bmctl.lab.lab import NODE_DIRS
        from bmctl.lab.realnode import NODE_DIRS as REAL_NODE_DIRS
        for d in sorted(NODE_DIRS + REAL_NODE_DIRS, key=len, reverse=True):
            if path.startswith(d + "/"):
                return self.lab.state_dir / node["name"] / "fs" / d.strip("/").replace("/", "_") / path[len(d) + 1:]
        raise KeyError(path)


class Kube:
    """CoreV1 calls made from the client namespace (the VIP is reachable only on the lab segment)."""

    def __init__(self, lab: "LabHarness") -> None:
        from kubernetes import client, config as kconfig
        self.lab = lab
        self.core = client.CoreV1Api(kconfig.new_client_from_config(
            config_file=str(lab.workspace / "lab" / "lab-kubeconfig")))

    def __call__(self, method: str, *args, **kw):
        with in_netns(self.lab.client_ns):
            return getattr(self.core, method)(*args, **kw)


def metallb_objects(lab: "LabHarness") -> dict:
    """Every IPAddressPool and L2Advertisement in the cluster: (kind, name) -> spec."""
    from kubernetes import client, config as kconfig
    api = client.CustomObjectsApi(kconfig.new_client_from_config(
        config_file=str(lab.workspace / "lab" / "lab-kubeconfig")))
    with in_netns(lab.client_ns):
        pools = api.list_namespaced_custom_object("metallb.io", "v1beta1", "metallb-system", "ipaddresspools")
        l2 = api.list_namespaced_custom_object("metallb.io", "v1beta1", "metallb-system", "l2advertisements")
    return {(o["kind"], o["metadata"]["name"]): o["spec"] for o in [*pools["items"], *l2["items"]]}


def web_image(lab: "LabHarness") -> str:
    """The lab release's small web server (answers with its pod name and the client's address)."""
    import yaml
    return yaml.safe_load(Path(lab.state["release"]).read_text())["images"]["web"]


def start_web_service(lab: "LabHarness", kube: Kube, namespace: str = "demo") -> tuple[str, str]:
    """A Deployment of the lab's web server on the worker (port 8080) and a LoadBalancer Service on
    port 80; returns the Service's external IP and the Deployment's name."""
    from kubernetes import client
    worker = next(n for n in lab.nodes if n["role"] == "worker")
    kube("create_namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    apps = client.AppsV1Api(kube.core.api_client)
    with in_netns(lab.client_ns):
        apps.create_namespaced_deployment(namespace, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": worker["name"]},
                                           "containers": [{"name": "web", "image": web_image(lab),
                                                           "ports": [{"containerPort": 8080}],
                                                           "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                                              "periodSeconds": 1}}]}}}})
    kube("create_namespaced_service", namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})

    def external_ip():
        svc = kube("read_namespaced_service", "web", namespace)
        ing = (svc.status.load_balancer.ingress or []) if svc.status.load_balancer else []
        return ing[0].ip if ing else None
    ip = wait_for(external_ip, 60, "an EXTERNAL-IP for the LoadBalancer Service", 0.5)
    wait_for(lambda: http_get(lab, ip), 90, "the web pod to answer through the Service IP", 0.5)
    return ip, "web"


def http_get(lab: "LabHarness", ip: str, port: int = 80, timeout: float = 1.0) -> str | None:
    """A plain HTTP GET from the client namespace; the raw response, or None."""
    try:
        with in_netns(lab.client_ns):
            sock = socket.create_connection((ip, port), timeout=timeout)
        with sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            return sock.recv(4096).decode(errors="replace") or None
    except OSError:
        return None


def announcer(lab: "LabHarness", ip: str) -> dict:
    """The LB node whose MAC the client resolved `ip` to (the speaker that answered ARP)."""
    http_get(lab, ip)
    out = subprocess.run(["ip", "-n", lab.client_ns, "neigh", "show", ip], capture_output=True, text=True).stdout
    mac = out.split("lladdr")[1].split()[0]
    for node in lab.lb_nodes():
        link = subprocess.run(["ip", "-n", node["netns"], "link", "show", "eth0"], capture_output=True, text=True).stdout
        if mac in link:
            return node
    raise AssertionError(f"{ip} is answered by {mac}, which is no LB node")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def kill_at_random_points(start, rng, longest: float, count: int = 20, earliest: float = 0.2,
                          undo=None, attempts: int | None = None) -> list[float]:
    """Kill `count` runs with SIGKILL, each at a random moment: `start()` returns a run (a Popen in
    its own process group), which is killed after a time drawn from [earliest, window]. The window
    starts at `longest` (an uninterrupted run's time) and shrinks to the moment at which a run was
    found already finished, since runs over partly done work are quicker than the first. A run that
    finished before its kill is handed to `undo` when it succeeded, so the next run has work to do.
    Returns the kill moments (s); the caller asserts how many landed."""
    kills: list[float] = []
    window = longest
    for _ in range(attempts or 4 * count):
        if len(kills) == count:
            break
        at = rng.uniform(earliest, window)
        run = start()
        time.sleep(at)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            kills.append(round(at, 2))
            run.communicate()
            continue
        run.communicate()
        window = max(earliest + 0.1, min(window, at))
        if undo is not None and run.returncode == 0:
            undone = undo()
            assert undone.returncode == 0, undone.stdout + undone.stderr
    return kills


class RequestLoop:
    """`once()` every `interval` seconds in a thread while the block runs: `ok` counts the calls that
    returned None, `failed` holds (seconds since start, why) of the others."""

    def __init__(self, once, interval: float = 0.05) -> None:
        import threading
        self.once = once
        self.interval = interval
        self.ok = 0
        self.failed: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        start = self.started = time.monotonic()
        while not self.stop.is_set():
            t = time.monotonic()
            why = self.once()
            if why is None:
                self.ok += 1
            else:
                self.failed.append((round(t - start, 2), why))
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def __enter__(self) -> "RequestLoop":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class LabConfig:
    """The lab config as documents; `write(name)` saves a variant (for one update) under configs/."""

    def __init__(self, lab: "LabHarness") -> None:
        import yaml
        self.lab = lab
        self.docs = list(yaml.safe_load_all(lab.config.read_text()))

    @property
    def lb(self) -> dict:
        return self.docs[2]["spec"]["loadBalancer"]

    def pool(self, name: str) -> dict:
        return next(p for p in self.lb["addressPools"] if p["name"] == name)

    def write(self, name: str = "lab.yaml") -> Path:
        import yaml
        path = self.lab.workdir / "configs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump_all(self.docs, sort_keys=False))
        return path


def write_variant(lab: "LabHarness", mutate, name: str) -> Path:
    """A copy of the lab's config, changed by `mutate(docs)`, next to it as `name`."""
    import yaml
    docs = list(yaml.safe_load_all(lab.config.read_text()))
    mutate(docs)
    path = lab.config.parent / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def wait_for(cond, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def running_lab(workdir: Path, control_planes: int, lb_nodes: int = 0, workers: int = 0,
                needs: tuple[str, ...] = (), real_nodes: bool = True, router: bool = False):
    """A lab for a test module; fails under CI=true (skips elsewhere) when a prerequisite is missing,
    and is always torn down."""
    from bmctl.lab import binaries
    from conftest import require
    missing = lab_prerequisites(real_nodes) + [p for p in needs if not binaries.binary(p).exists()]
    require(not missing, f"lab prerequisites: {', '.join(missing)}"
            + (" (python -m bmctl.lab.binaries builds the Go parts)" if needs else ""))
    if router:
        from bmctl.lab import router as lab_router
        missing += lab_router.missing()
        require(not missing, f"lab prerequisites: {', '.join(missing)}")
    harness = LabHarness(workdir, control_planes, lb_nodes, workers, real_nodes, router)
    try:
        harness.up()
        yield harness
    finally:
        harness.down()


def lab_prerequisites(real_nodes: bool = False) -> list[str]:
    tools = ("ip", "unshare", "keepalived", "haproxy", "curl", "ssh-keygen", "arping", "nsenter") + \
        (("containerd", "runc") if real_nodes else ())
    missing = [t for t in tools if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("sshd")
    if os.geteuid() != 0:
        missing.append("root")
    return missing
