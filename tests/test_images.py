"""The lab's binaries and images (bmctl/lab/binaries.py, images.py, registry.py, release.py), for real.

The binaries report the versions they are stamped with; every image's tools run from the image's
own root (chroot: the shared libraries picked from Debian are all there); the HAProxy image keeps the
official image's contract (user haproxy = uid 99, STOPSIGNAL SIGUSR1, entrypoint); `keepalived -t`
and `haproxy -c` of the images' own binaries accept every rendered config; layouts are reproducible;
and a registry in a throwaway network namespace takes every image, serves the release's references,
and containerd pulls through the hosts.toml mirror the lab's nodes use, then runs CoreDNS (nonroot, port 53)
and HAProxy (uid 99, stopped by its STOPSIGNAL).
Needs the binaries and images built (`python -m bmctl.lab.images`, which .ci/run does) and root.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import require, require_root, require_tool
from test_render import keepalived_dirs, netns_with_eth0, node_dirs, rendered  # noqa: F401 (fixtures)

from lab.layouts import image_config, unpack

from bmctl.lab import binaries, images, registry, release
from bmctl.lab.net import pick

# A documentation range that collides with none of this machine's addresses and routes (its own
# network can be one: see bmctl/lab/net.py).
REGISTRY_NET = pick().segment.rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def built():
    missing = [n for n, _, st, _ in binaries.listing() if st != "ok"]
    require(not missing, f"lab binaries built (python -m bmctl.lab.binaries): missing or stale {missing}")
    return images.build_all(say=lambda _: None)  # from the cache: .ci/run built them


@pytest.fixture(scope="module")
def roots(built, tmp_path_factory):
    """name -> unpacked root, unpacked once per module on first use."""
    base = tmp_path_factory.mktemp("roots")
    cache = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = unpack(built[name], base / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def netns():
    """A throwaway network namespace (loopback up), removed afterwards."""
    require_root()
    require_tool("ip")
    name = f"bmctl-img-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def chroot(root: Path, *argv: str, netns: str | None = None, user: str | None = None) -> subprocess.CompletedProcess:
    """Run argv inside the image's root (a private mount namespace with /proc and /dev)."""
    require_root()
    cmd = ['mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && shift && exec chroot "$@"']
    spec = [f"--userspec={user}"] if user else []
    for d in ("proc", "dev"):
        (root / d).mkdir(exist_ok=True)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "unshare", "-m", "--propagation", "private", "sh", "-c", *cmd, "sh", str(root),
                           *spec, str(root), *argv], capture_output=True, text=True, timeout=120)


# -- binaries --------------------------------------------------------------------------------------

VERSIONS = {  # binary -> (argv, what its output must contain)
    "kubelet": (["--version"], "Kubernetes v1.34.2"),
    "kubeadm": (["version", "-o", "short"], "v1.34.2"),
    "kube-apiserver": (["--version"], "Kubernetes v1.34.2"),
    "kube-controller-manager": (["--version"], "Kubernetes v1.34.2"),
    "kube-scheduler": (["--version"], "Kubernetes v1.34.2"),
    "kube-proxy": (["--version"], "Kubernetes v1.34.2"),
    "kubectl": (["version", "--client", "-o", "json"], '"gitVersion": "v1.34.2"'),
    "etcd": (["--version"], "etcd Version: 3.6.5"),
    "etcdctl": (["version"], "etcdctl version: 3.6.5"),
    "etcdutl": (["version"], "etcdutl version: 3.6.5"),
    "coredns": (["-version"], "CoreDNS-1.12.1"),
    "flanneld": (["--version"], "v0.27.4"),
    "flannel-cni-plugin": ([], "CNI flannel plugin v0.9.1"),
    "crane": (["version"], "v0.22.1"),
    "crictl": (["--version"], "crictl version v1.34.0"),
    "pause": (["-v"], "pause.go"),
}


@pytest.mark.parametrize("name", sorted(VERSIONS))
def test_binary_reports_its_version(name, built):
    argv, expected = VERSIONS[name]
    proc = subprocess.run([str(binaries.binary(name)), *argv], capture_output=True, text=True, timeout=60)
    assert expected in proc.stdout + proc.stderr, f"{name}: {proc.stdout}{proc.stderr}"


def test_metallb_is_stamped(built):
    for name in ("metallb-controller", "metallb-speaker"):
        assert b"942c2fe5" in binaries.binary(name).read_bytes()


def test_binaries_are_static(built):
    """Every binary runs on any node and in a FROM-scratch image: no ELF interpreter."""
    for group in binaries.GROUPS:
        for name in group.binaries:
            interp, needed = images.elf_dependencies(binaries.binary(name))
            assert interp is None and needed == [], f"{name}: {interp} {needed}"


def test_web_names_pod_host_and_client(built, netns):
    """The test web server answers with the pod and host names, the client's address, the Host header
    and X-Forwarded-For."""
    curl = require_tool("curl")
    proc = subprocess.Popen(["ip", "netns", "exec", netns, str(binaries.binary("web")), "--port", "18081"],
                            env={**os.environ, "POD_NAME": "web-abc", "NODE_NAME": "lab-w1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(50):
            got = subprocess.run(["ip", "netns", "exec", netns, curl, "-s", "-H", "Host: a.test",
                                  "-H", "X-Forwarded-For: 203.0.113.9", "http://127.0.0.1:18081/x"],
                                 capture_output=True, text=True)
            if got.returncode == 0:
                break
            time.sleep(0.1)
        assert re.fullmatch(r"pod=web-abc host=lab-w1 client=127\.0\.0\.1:\d+ method=GET path=/x vhost=a\.test "
                            r"xff=203\.0\.113\.9\n", got.stdout), got
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0


# -- images ----------------------------------------------------------------------------------------

def test_every_image_has_path_and_the_expected_names(built):
    assert list(built) == list(images.IMAGE_NAMES)
    assert built["pause"].tag == "3.10.1" and built["etcd"].tag == "3.6.5-0" and built["coredns"].tag == "v1.12.1"
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
        assert built[name].tag == "v1.34.2"
    for b in built.values():
        assert any(e.startswith("PATH=") for e in image_config(b)["Env"]), b.name


def test_haproxy_image_keeps_the_official_contract(built, roots):
    cfg = image_config(built["haproxy"])
    assert cfg["User"] in ("haproxy", "99")
    assert cfg["StopSignal"] == "SIGUSR1"
    assert cfg["Entrypoint"] == ["docker-entrypoint.sh"]
    assert cfg["Cmd"] == ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
    assert cfg["WorkingDir"] == "/var/lib/haproxy"
    root = roots("haproxy")
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    assert passwd["haproxy"][2:4] == ["99", "99"]
    assert (root / "var/lib/haproxy").stat().st_uid == 99
    assert (root / "usr/local/etc/haproxy").is_dir()
    proc = chroot(root, "docker-entrypoint.sh", "haproxy", "-v", user="99:99")
    assert proc.returncode == 0 and "HAProxy version 2." in proc.stdout, proc.stderr


@pytest.mark.parametrize("image", ["haproxy", "keepalived"])
def test_lb_images_have_every_tool_the_pod_scripts_call(image, roots):
    """The reloader (templates/static-pods/reload-on-change.sh.j2) and the track script
    (templates/keepalived/check_haproxy.sh.j2) run under the image's /bin/sh."""
    tools = ["sh", "cat", "sha256sum", "cut", "mv", "rm", "sleep", "kill"] + (["wget"] if image == "keepalived" else [])
    script = ("set -e; for t in " + " ".join(tools) + "; do command -v $t >/dev/null || { echo missing $t; exit 1; }; "
              "done; echo abc > /tmp/x; cat /tmp/x | sha256sum | cut -d' ' -f1 > /tmp/y; mv /tmp/y /tmp/z; "
              "sleep 0.1 & wait $!; kill -0 $$; rm /tmp/x; cat /tmp/z")
    proc = chroot(roots(image), "/bin/sh", "-c", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb"


def test_haproxy_image_accepts_every_config(rendered, roots):  # noqa: F811
    out, _ = rendered
    cfgs = [n / "etc/haproxy/haproxy.cfg" for n in node_dirs(out) if (n / "etc/haproxy/haproxy.cfg").exists()]
    root = roots("haproxy")
    for cfg in cfgs:
        shutil.copyfile(cfg, root / "usr/local/etc/haproxy/haproxy.cfg")
        os.chmod(root / "usr/local/etc/haproxy/haproxy.cfg", 0o644)  # as on a node (the dry run keeps 0600)
        proc = chroot(root, "haproxy", "-c", "-f", "/usr/local/etc/haproxy/haproxy.cfg", user="99:99")
        assert proc.returncode == 0, f"{cfg}: {proc.stdout}{proc.stderr}"
    assert cfgs


def test_keepalived_image_accepts_every_config(rendered, netns_with_eth0, roots, tmp_path):  # noqa: F811
    """`keepalived -t` of the image's own keepalived (Debian 2.2.7) on every rendered config: it knows
    every keyword bmctl writes (max_auto_priority, check_unicast_src...), and the track script passes
    its script-security checks inside the image."""
    root = roots("keepalived")
    version = chroot(root, "keepalived", "--version")
    assert "Keepalived v2.2.7" in version.stdout + version.stderr
    checked = 0
    for node, target in keepalived_dirs(rendered, tmp_path):
        proc = subprocess.run(
            ["ip", "netns", "exec", netns_with_eth0, "unshare", "-m", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$2/etc/keepalived" && mount -t proc proc "$2/proc" && mount --rbind /dev "$2/dev" '
             '&& exec chroot "$2" keepalived -t -f /etc/keepalived/keepalived.conf',
             "sh", str(target), str(root)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{node.name}: {proc.stdout}{proc.stderr}"
        assert "Unknown keyword" not in proc.stdout + proc.stderr
        checked += 1
    out, _ = rendered
    assert checked >= 1 or all((n / "etc/bmctl/frr/frr.conf").exists()  # BGP mode: FRR holds the VIP
                               for n in node_dirs(out) if (n / "etc/haproxy").exists())


def test_track_script_runs_in_the_keepalived_image(rendered, roots, built, netns):  # noqa: F811
    """bmctl's track script, run by the image's /bin/sh with the image's HTTP client: it passes while
    something answers the HAProxy health URL (the lab's web server stands in) and fails once not."""
    out, _ = rendered
    script = next(out.glob("*/etc/keepalived/check_haproxy.sh"), None)
    if script is None:
        pytest.skip("no load-balancer node in this example")
    port = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", script.read_text())[1]
    root = roots("keepalived")
    shutil.copyfile(script, root / "etc/keepalived/check_haproxy.sh")
    os.chmod(root / "etc/keepalived/check_haproxy.sh", 0o755)
    web = subprocess.Popen(["ip", "netns", "exec", netns, str(binaries.binary("web")), "--port", port],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            up = chroot(root, "/etc/keepalived/check_haproxy.sh", netns=netns)
            if up.returncode == 0:
                break
            time.sleep(0.1)
        assert up.returncode == 0, up.stdout + up.stderr
    finally:
        web.terminate()
        web.wait(5)
    down = chroot(root, "/etc/keepalived/check_haproxy.sh", netns=netns)
    assert down.returncode != 0


def test_keepalived_t_catches_an_unknown_keyword(netns_with_eth0, roots, tmp_path):  # noqa: F811
    """The check above is real: the image's keepalived -t fails on a keyword it does not know."""
    conf = tmp_path / "kconf"
    conf.mkdir()
    (conf / "keepalived.conf").write_text("global_defs {\n    router_id x\n    no_such_keyword 1\n}\n")
    root = roots("keepalived")
    proc = subprocess.run(
        ["ip", "netns", "exec", netns_with_eth0, "unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$2/etc/keepalived" && mount -t proc proc "$2/proc" && mount --rbind /dev "$2/dev" '
         '&& exec chroot "$2" keepalived -t -f /etc/keepalived/keepalived.conf',
         "sh", str(conf), str(root)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no_such_keyword" in proc.stdout + proc.stderr


@pytest.mark.parametrize("image", ["kube-proxy", "flannel"])
def test_netfilter_tools_work_in_the_image(image, roots, netns):
    """iptables (through iptables-wrapper), nft, ipset and conntrack run from the image's root and
    change a namespace's rules: their libraries and xtables modules are all in the image."""
    root = roots(image)
    script = (f"set -e; iptables -V; iptables -w -t nat -N BMCTL-{image}; "
              f"iptables -w -t nat -A BMCTL-{image} -p tcp --dport 80 -j MASQUERADE; iptables-save -t nat; "
              "iptables-legacy -V; ip6tables -w -L -n >/dev/null; nft list ruleset >/dev/null; "
              "conntrack -L >/dev/null 2>&1 || conntrack --version; ipset version")
    proc = chroot(root, "/bin/sh", "-c", script, netns=netns)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(nf_tables)" in proc.stdout and f"-A BMCTL-{image} -p tcp -m tcp --dport 80 -j MASQUERADE" in proc.stdout
    if image == "flannel":
        assert chroot(root, "ip", "-V").returncode == 0
    version = chroot(root, "kube-proxy" if image == "kube-proxy" else "/opt/bin/flanneld", "--version")
    assert ("v1.34.2" if image == "kube-proxy" else "v0.27.4") in version.stdout + version.stderr


def test_flannel_images_copy_with_cp(roots):
    """Upstream's kube-flannel.yml init containers call `cp` (flannel-cni-plugin: /flannel)."""
    for image, src in (("flannel-cni-plugin", "/flannel"), ("flannel", "/opt/bin/flanneld")):
        proc = chroot(roots(image), "cp", "-f", src, "/tmp/copied")
        assert proc.returncode == 0, proc.stderr


def test_coredns_binds_port_53_as_nonroot(built):
    """/coredns carries cap_net_bind_service=+ep (setcap, as upstream's image) and runs as nonroot."""
    cfg = image_config(built["coredns"])
    assert cfg["User"] == "nonroot:nonroot" and cfg["Entrypoint"] == ["/coredns"]
    blobs = built["coredns"].layout / "blobs" / "sha256"
    manifest = json.loads((blobs / built["coredns"].digest.split(":")[1]).read_text())
    with tarfile.open(blobs / manifest["layers"][-1]["digest"].split(":")[1], "r:gz") as tar:
        member = tar.getmember("coredns")
    cap = member.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
    assert cap == images.file_capabilities(images.CAP_NET_BIND_SERVICE)[0][1]


def test_layouts_are_reproducible(tmp_path):
    image = images.Image("t", "1", [images.users(), {"etc/hello": images.data("hi\n"), "bin": images.folder()}],
                         entrypoint=["/bin/true"], stop_signal="SIGUSR1")
    a = images.write_layout(image, tmp_path / "a")
    b = images.write_layout(image, tmp_path / "b")
    assert a.digest == b.digest
    assert images.Image("t", "1", [{"etc/hello": images.data("hi!\n")}]).key() != image.key()


# -- registry and release --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_registry(built, netns, tmp_path_factory):
    """The registry at A.3:5000 (a free documentation /24) in the throwaway namespace, every image pushed by publish()."""
    ip = f"{REGISTRY_NET}.3"
    for argv in (["link", "add", "reg0", "type", "veth", "peer", "name", "reg0p"],
                 ["addr", "add", f"{ip}/24", "dev", "reg0"], ["link", "set", "reg0p", "up"], ["link", "set", "reg0", "up"]):
        subprocess.run(["ip", "-n", netns, *argv], check=True)
    disk = tmp_path_factory.mktemp("registry") / "blobs"
    start = time.monotonic()
    pid, rel = release.publish(netns, ip, disk, say=lambda _: None)
    state = {"ip": ip, "pid": pid, "release": rel, "seconds": time.monotonic() - start, "disk": disk}
    try:
        yield state
    finally:
        registry.stop(state["pid"])
        assert not Path(f"/proc/{state['pid']}").exists() or b"registry" not in Path(f"/proc/{state['pid']}/cmdline").read_bytes()


def test_publish_serves_every_reference(lab_registry, netns, tmp_path):
    ip, rel = lab_registry["ip"], lab_registry["release"]
    assert rel["kubernetes"] == "v1.34.2"
    assert list(rel["images"]) == list(images.IMAGE_NAMES)
    crane = registry.crane()
    for name, ref in rel["images"].items():
        m = re.fullmatch(rf"{release.REGISTRY_HOST}/{re.escape(name)}:([\w.-]+)@(sha256:[0-9a-f]{{64}})", ref)
        assert m, ref
        for pulled in (f"{ip}:5000/{name}:{m[1]}", f"{ip}:5000/{name}@{m[2]}"):
            proc = subprocess.run(["ip", "netns", "exec", netns, crane, "digest", "--insecure", pulled],
                                  capture_output=True, text=True, timeout=60)
            assert proc.stdout.strip() == m[2], proc.stderr
    written = release.write_release(tmp_path / "release.yaml", rel)
    assert yaml.safe_load((tmp_path / "release.yaml").read_text()) == rel == written


def test_publish_again_takes_seconds(lab_registry, netns):
    """A registry restarted on the same blobs (a lab brought up again) and every cached image pushed
    again: the manifests only."""
    registry.stop(lab_registry["pid"])
    start = time.monotonic()
    lab_registry["pid"], again = release.publish(netns, lab_registry["ip"], lab_registry["disk"], say=lambda _: None)
    seconds = time.monotonic() - start
    assert again == lab_registry["release"]
    print(f"publish: {lab_registry['seconds']:.1f}s onto an empty registry, {seconds:.1f}s again")
    assert seconds < 10


@pytest.fixture(scope="module")
def containerd(lab_registry, netns, tmp_path_factory):
    """Debian's containerd in the throwaway namespace (private root, state and socket; the host's
    cgroup mounts: nsenter, not `ip netns exec`), configured with the lab nodes' hosts.toml mirror
    for registry.bmctl-lab.internal. Yields ctr(*args): ctr against it, from inside the namespace."""
    binary, ctr_binary = shutil.which("containerd"), shutil.which("ctr")
    require(bool(binary and ctr_binary), "containerd and ctr (Debian package containerd)")
    ip = lab_registry["ip"]
    work = tmp_path_factory.mktemp("containerd")
    run_id = f"bmctl-img-{uuid.uuid4().hex[:8]}"
    state = Path("/run") / run_id
    hosts = work / "certs.d" / release.REGISTRY_HOST
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(f'server = "http://{ip}:5000"\n\n[host."http://{ip}:5000"]\n'
                                      '  capabilities = ["pull", "resolve"]\n')
    (work / "config.toml").write_text(f'version = 2\nroot = "{work}/root"\nstate = "{state}/state"\n'
                                      'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                                      f'[grpc]\n  address = "{state}/containerd.sock"\n')
    enter = ["nsenter", f"--net=/run/netns/{netns}"]
    log = open(work / "containerd.log", "wb")
    proc = subprocess.Popen([*enter, binary, "--config", str(work / "config.toml")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def ctr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*enter, ctr_binary, "--address", f"{state}/containerd.sock", *args],
                              capture_output=True, text=True, timeout=timeout)

    ctr.hosts_dir, ctr.cgroup, ctr.log = str(work / "certs.d"), f"/{run_id}", work / "containerd.log"
    try:
        for _ in range(100):
            if (state / "containerd.sock").exists():
                break
            time.sleep(0.1)
        yield ctr
    finally:
        for task in ctr("tasks", "ls", "-q").stdout.split():
            ctr("tasks", "kill", "-s", "SIGKILL", task)
            time.sleep(0.5)
            ctr("tasks", "rm", "-f", task)
        for container in ctr("containers", "ls", "-q").stdout.split():
            ctr("containers", "rm", container)
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", f"{work}/root"], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
        for group in Path("/sys/fs/cgroup").glob(f"*/{run_id}"):  # the containers' cgroups, made by runc
            for child in sorted(group.rglob("*"), reverse=True):
                if child.is_dir():
                    child.rmdir()
            group.rmdir()


def test_containerd_pulls_through_the_mirror(containerd, lab_registry):
    """containerd pulls release references by the lab's registry name, through a hosts.toml mirror
    to the registry's plain-HTTP address: what every lab node does."""
    rel = lab_registry["release"]
    for name in ("pause", "coredns", "haproxy"):
        pull = containerd("images", "pull", "--hosts-dir", containerd.hosts_dir, rel["images"][name])
        assert pull.returncode == 0, pull.stdout + pull.stderr + containerd.log.read_text()[-2000:]
    listed = containerd("images", "ls", "-q").stdout.split()
    assert {rel["images"][n] for n in ("pause", "coredns", "haproxy")} <= set(listed)


def test_images_run_as_their_users_under_containerd(containerd, lab_registry, netns, tmp_path):
    """Run by containerd and runc: CoreDNS as nonroot binds port 53 (the file capability); the HAProxy
    image runs as uid 99 and stops on `ctr tasks kill` with no signal given, i.e. its STOPSIGNAL
    (SIGUSR1: haproxy's soft stop), at once."""
    rel = lab_registry["release"]
    for name in ("coredns", "haproxy"):
        assert containerd("images", "pull", "--hosts-dir", containerd.hosts_dir, rel["images"][name]).returncode == 0
    (tmp_path / "Corefile").write_text(".:53 {\n  whoami\n}\n")
    (tmp_path / "haproxy.cfg").write_text("global\n  log stdout format raw local0\ndefaults\n  mode http\n"
                                          "  timeout client 5s\n  timeout server 5s\n  timeout connect 1s\n"
                                          "frontend f\n  bind 127.0.0.1:18080\n  http-request return status 200\n")
    os.chmod(tmp_path, 0o755)
    mount = f"type=bind,src={tmp_path},dst=/cfg,options=rbind:ro"
    run = containerd("run", "-d", "--net-host", "--cgroup", f"{containerd.cgroup}/dns", "--mount", mount,
                     rel["images"]["coredns"], "dns", "/coredns", "-conf", "/cfg/Corefile")
    assert run.returncode == 0, run.stderr
    ident = containerd("run", "--rm", "--net-host", "--cgroup", f"{containerd.cgroup}/id", rel["images"]["haproxy"],
                       "hap-id", "id", "-u")
    assert ident.stdout.strip() == "99", ident.stdout + ident.stderr
    run = containerd("run", "-d", "--net-host", "--cgroup", f"{containerd.cgroup}/hap", "--mount", mount,
                     rel["images"]["haproxy"], "hap", "docker-entrypoint.sh", "haproxy", "-f", "/cfg/haproxy.cfg")
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 10
    listening = ""
    while time.monotonic() < deadline and not (":53 " in listening and ":18080 " in listening):
        time.sleep(0.2)
        listening = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hlntu"], capture_output=True, text=True).stdout
    assert ":53 " in listening and ":18080 " in listening, listening + containerd("tasks", "ls").stdout
    start = time.monotonic()
    assert containerd("tasks", "kill", "hap").returncode == 0  # no -s: the image's StopSignal
    while time.monotonic() - start < 10 and "RUNNING" in containerd("tasks", "ls").stdout.split("hap ", 1)[-1][:40]:
        time.sleep(0.1)
    stopped = time.monotonic() - start
    tasks = containerd("tasks", "ls").stdout
    assert re.search(r"^hap\s+\d+\s+STOPPED", tasks, re.M), tasks
    assert stopped < 5, f"haproxy took {stopped:.1f}s to stop on its STOPSIGNAL"
