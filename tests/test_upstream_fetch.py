"""Where bmctl gets the upstream manifests its release pins (bmctl/release/upstream.py): the bundle,
its cache, the Go module cache, a Go module proxy, each file checked against its pinned sha256; and
the one-paragraph error when none has it. The proxy is an http.server on 127.0.0.1 serving module
zips laid out as a Go module proxy lays them out; HOME, the caches and GOPROXY point into tmp_path,
so nothing outside the test is read or written."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from bmctl import release as releases
from bmctl.errors import BmctlError
from bmctl.release import Manifest, Release, UpstreamFile, upstream
from bmctl.release import bundle as bundles
from conftest import base_docs, dump

MODULE = "example.com/Upstream/thing"        # a capital: escaped as !upstream in paths and URLs
VERSION = "v1.2.3"
APP = b"kind: ConfigMap\nmetadata:\n  name: app\n"
CRDS = b"kind: CustomResourceDefinition\nmetadata:\n  name: things.example.com\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module_zip(files: dict[str, bytes], module: str = MODULE, version: str = VERSION) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as z:
        z.writestr(f"{module}@{version}/go.mod", f"module {module}\n")
        for path, data in files.items():
            z.writestr(f"{module}@{version}/{path}", data)
    return raw.getvalue()


def pinned_release(app_sha: str = sha256(APP)) -> Release:
    """bmctl's own release with flannel and metallb-native pinned to files of the test's module."""
    own = releases.default()
    return Release(own.kubernetes, own.images, "a test release", own.binaries, {
        "flannel": Manifest("flannel", MODULE, VERSION, (UpstreamFile("deploy/app.yaml", app_sha),)),
        "metallb-native": Manifest("metallb-native", MODULE, VERSION,
                                   (UpstreamFile("config/crds.yaml", sha256(CRDS)),)),
    })


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, requests: list, **kwargs) -> None:
        self.requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def env(tmp_path, monkeypatch):
    """HOME, bmctl's cache and an empty Go module cache in tmp_path; no module proxy yet."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BMCTL_UPSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "gomodcache"))
    monkeypatch.setenv("GOPROXY", "off")
    return tmp_path


@pytest.fixture
def proxy(env, monkeypatch):
    """A module proxy on 127.0.0.1 (GOPROXY points at it): serve(files) publishes MODULE@VERSION's zip;
    .requests lists the paths asked for."""
    root = env / "proxy"
    root.mkdir()
    requests: list[str] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Handler, directory=str(root), requests=requests))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GOPROXY", f"http://127.0.0.1:{server.server_port},direct")

    class Proxy:
        def serve(self, files: dict[str, bytes]) -> None:
            folder = root / "example.com" / "!upstream" / "thing" / "@v"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{VERSION}.zip").write_bytes(module_zip(files))

    p = Proxy()
    p.requests = requests
    try:
        yield p
    finally:
        server.shutdown()
        server.server_close()


def cached(env: Path, path: str) -> Path:
    return env / "cache" / "example.com" / "!upstream" / f"thing@{VERSION}" / path


# -- the module proxy -----------------------------------------------------------------------------

def test_a_file_comes_from_the_module_proxy_and_is_cached(proxy, env):
    proxy.serve({"deploy/app.yaml": APP, "config/crds.yaml": CRDS, "main.go": b"package main\n"})
    release = pinned_release()
    assert upstream.texts(release, "flannel") == [APP.decode()]
    assert proxy.requests == [f"/example.com/!upstream/thing/@v/{VERSION}.zip"]
    # extracted: the pinned files of that module (the other manifest's too, from the same zip), nothing else
    assert cached(env, "deploy/app.yaml").read_bytes() == APP
    assert cached(env, "config/crds.yaml").read_bytes() == CRDS
    assert not cached(env, "main.go").exists()
    assert [p.name for p in (env / "cache").iterdir()] == ["example.com"]  # no download left behind
    # then from the cache: no second request
    assert upstream.texts(release, "metallb-native") == [CRDS.decode()]
    assert upstream.read(release.manifest("flannel"), release.manifest("flannel").files[0])[1] == \
        f"cache {env / 'cache'}"
    assert len(proxy.requests) == 1


def test_a_wrong_sha256_from_the_proxy_is_refused(proxy, env):
    proxy.serve({"deploy/app.yaml": APP + b"# changed\n", "config/crds.yaml": CRDS})
    with pytest.raises(BmctlError) as exc:
        upstream.texts(pinned_release(), "flannel")
    text = exc.value.render()
    assert f"upstream file deploy/app.yaml of {MODULE} {VERSION} (manifest flannel)" in text
    assert f"has sha256 {sha256(APP + b'# changed' + bytes([10]))[:16]}..., the release pins {sha256(APP)[:16]}...; " \
           "refused" in text
    assert not cached(env, "deploy/app.yaml").exists()


def test_a_proxy_without_the_module_is_named(proxy, env):
    with pytest.raises(BmctlError) as exc:
        upstream.texts(pinned_release(), "flannel")
    assert f"/example.com/!upstream/thing/@v/{VERSION}.zip failed: 404" in exc.value.message
    assert "bmctl bundle fetch-manifests" in exc.value.fix


def test_goproxy_lists(monkeypatch):
    monkeypatch.setattr(upstream, "_go_env", lambda name: "https://go-default.example,direct")
    cases = {"": ["https://go-default.example"], "off": [], "direct": [],
             "https://a.example,https://b.example/go/": ["https://a.example", "https://b.example/go"],
             "https://a.example|direct": ["https://a.example"], "off,https://a.example": [],
             "file:///srv/goproxy,off,https://late.example": ["file:///srv/goproxy"]}
    for setting, urls in cases.items():
        monkeypatch.setenv("GOPROXY", setting)
        assert upstream.proxies()[0] == urls, setting


# -- the cache and the Go module cache -----------------------------------------------------------

def test_a_changed_cache_file_is_refused_not_used(env):
    path = cached(env, "deploy/app.yaml")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"kind: Changed\n")
    with pytest.raises(BmctlError) as exc:
        upstream.texts(pinned_release(), "flannel")
    assert f"from {path} has sha256" in exc.value.message and f"rm {path}" in exc.value.fix


def test_the_go_module_cache_extracted_or_zipped(env):
    """GOPROXY=off: what the Go client already downloaded is used, the module's folder or its zip."""
    folder = env / "gomodcache" / "example.com" / "!upstream" / f"thing@{VERSION}" / "deploy"
    folder.mkdir(parents=True)
    (folder / "app.yaml").write_bytes(APP)
    release = pinned_release()
    assert upstream.texts(release, "flannel") == [APP.decode()]
    zipped = env / "gomodcache" / "cache" / "download" / "example.com" / "!upstream" / "thing" / "@v"
    zipped.mkdir(parents=True)
    (zipped / f"{VERSION}.zip").write_bytes(module_zip({"config/crds.yaml": CRDS}))
    assert upstream.texts(release, "metallb-native") == [CRDS.decode()]
    assert not (env / "cache").exists()  # read in place; fetch-manifests (keep=True) copies into the cache
    flannel = release.manifest("flannel")
    assert upstream.read(flannel, flannel.files[0], keep=True) == (APP, f"Go module cache {env / 'gomodcache'}")
    assert cached(env, "deploy/app.yaml").read_bytes() == APP


# -- the bundle -----------------------------------------------------------------------------------

def write_bundle(env: Path, manifests: dict[str, bytes]) -> Path:
    own = releases.default()
    content = {"kubernetes": own.kubernetes,
               "images": {n: f"{ref}@sha256:{'0' * 64}" for n, ref in own.images.items()},
               "manifests": {n: m.data() for n, m in pinned_release().manifests.items()}}
    (env / "layout").mkdir(exist_ok=True)
    files = {}
    for i, (rel, data) in enumerate(manifests.items()):
        files[rel] = env / f"manifest-{i}"
        files[rel].write_bytes(data)
    return bundles.write(env / "bundle.tar", content, {}, env / "layout", "test", manifests=files)


def test_the_bundle_comes_first(env):
    path = write_bundle(env, {f"{MODULE}@{VERSION}/deploy/app.yaml": APP})  # unescaped: not the member name
    bundle = bundles.Bundle.open(path)
    bundle.verify()  # SHA256SUMS covers the manifests
    assert bundle.release.manifests == pinned_release().manifests
    path = write_bundle(env, {f"example.com/!upstream/thing@{VERSION}/deploy/app.yaml": APP,
                              f"example.com/!upstream/thing@{VERSION}/config/crds.yaml": CRDS})
    bundles.Bundle.open(path).verify()
    release = pinned_release()
    assert upstream.texts(release, "flannel", path) == [APP.decode()]
    assert upstream.texts(release, "metallb-native", path) == [CRDS.decode()]
    assert not (env / "cache").exists()


def test_a_bundle_member_with_another_sha256_is_refused(env):
    path = write_bundle(env, {f"example.com/!upstream/thing@{VERSION}/deploy/app.yaml": b"kind: Other\n"})
    with pytest.raises(BmctlError) as exc:
        upstream.texts(pinned_release(), "flannel", path)
    assert f"from bundle {path} (manifests/example.com/!upstream/thing@{VERSION}/deploy/app.yaml)" in exc.value.message
    assert "bmctl bundle build" in exc.value.fix


def test_a_bundle_without_the_file_falls_through(env):
    """A bundle built before bundles carried manifests: the cache (and so on) is asked next."""
    path = write_bundle(env, {})
    target = cached(env, "deploy/app.yaml")
    target.parent.mkdir(parents=True)
    target.write_bytes(APP)
    assert upstream.texts(pinned_release(), "flannel", path) == [APP.decode()]
    with pytest.raises(BmctlError) as exc:
        upstream.texts(pinned_release(), "metallb-native", path)
    assert f"the bundle {path} has no manifests/example.com/!upstream/thing@{VERSION}/config/crds.yaml" \
        in exc.value.message


# -- nothing anywhere -----------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("goproxy, why", [("off", "no module proxy to ask (GOPROXY=off)"),
                                          ("unreachable", "Connection refused")])
def test_nothing_available_is_one_paragraph_naming_the_file_and_the_command(env, monkeypatch, goproxy, why):
    if goproxy == "unreachable":
        goproxy = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("GOPROXY", goproxy)
    with pytest.raises(BmctlError) as exc:
        upstream.texts(pinned_release(), "flannel")
    message = exc.value.message
    for fact in ("deploy/app.yaml", MODULE, VERSION, "manifest flannel", f"not in bmctl's cache {env / 'cache'}",
                 f"not in the Go module cache {env / 'gomodcache'}", why):
        assert fact in message, (fact, message)
    assert exc.value.fix.startswith("run `bmctl bundle fetch-manifests` on a machine that reaches a Go module proxy")
    assert "\n" not in exc.value.render()


def test_create_cluster_dry_run_without_the_manifests_says_so(env, tmp_path):
    """bmctl's own pins, nothing on this machine and no proxy: exit 1, the paragraph, no traceback."""
    config = tmp_path / "c.yaml"
    config.write_text(dump(base_docs()))
    proc = subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(config), "--dry-run",
                           "--workspace", str(tmp_path / "ws")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GOPROXY": "off"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "error: upstream file " in proc.stderr
    assert "go.universe.tf/metallb v0.15.2" in proc.stderr or "github.com/flannel-io/flannel v0.27.4" in proc.stderr
    assert "bmctl bundle fetch-manifests" in proc.stderr


def test_fetch_manifests_fills_the_cache(proxy, env):
    """`bmctl bundle fetch-manifests --release FILE`: every file the release pins, into the cache, from
    one download of the module; then again from the cache alone."""
    files = {f"{name}/file-{i}.yaml": f"kind: Thing\nmetadata: {{name: {name}-{i}}}\n".encode()
             for name in releases.MANIFESTS for i in range(2)}
    proxy.serve(files)
    own = releases.default()
    release_file = env / "release.yaml"
    release_file.write_text(yaml.safe_dump({
        "kubernetes": own.kubernetes, "images": own.images,
        "manifests": {name: {"module": MODULE, "version": VERSION,
                             "files": [{"path": p, "sha256": sha256(d)} for p, d in files.items()
                                       if p.startswith(f"{name}/")]} for name in releases.MANIFESTS}}))
    command = [sys.executable, "-m", "bmctl", "bundle", "fetch-manifests", "--release", str(release_file)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert len(proxy.requests) == 1
    for path, data in files.items():
        assert cached(env, path).read_bytes() == data
        assert f"{MODULE}@{VERSION}  {path}  sha256 {sha256(data)[:16]}..." in proc.stdout
    assert f"8 files in {env / 'cache'}" in proc.stdout
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "GOPROXY": "off"})
    assert proc.returncode == 0 and proc.stdout.count(f"(cache {env / 'cache'})") == 8, proc.stderr


# -- the release's `manifests:` -------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(nosuch=m["flannel"]), "manifests.nosuch: bmctl deploys no manifest of that name"),
    (lambda m: m["flannel"].update(module="Not A Module"), "manifests.flannel.module: 'Not A Module' is not a Go "
                                                          "module path"),
    (lambda m: m["flannel"].update(version="0.27.4"), "manifests.flannel.version: '0.27.4' is not a Go module version"),
    (lambda m: m["flannel"]["files"][0].update(path="../etc/passwd"), "files[0].path: '../etc/passwd' is not a path"),
    (lambda m: m["flannel"]["files"][0].update(sha256="abc"), "files[0].sha256: 'abc' is not a sha256"),
    (lambda m: m["flannel"].update(files=[]), "manifests.flannel: needs `module`, `version` and `files`"),
    (lambda m: m["gateway-api"]["files"].append(m["gateway-api"]["files"][0]), "files: a path is listed twice"),
])
def test_bad_pins_are_refused(change, message):
    data = yaml.safe_load((Path(releases.__file__).parent / f"{releases.DEFAULT_VERSION}.yaml").read_text())
    change(data["manifests"])
    with pytest.raises(BmctlError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        releases._check(data, "release file r.yaml")


def test_bmctl_s_release_pins_every_manifest_it_deploys():
    own = releases.default()
    assert set(own.manifests) == set(releases.MANIFESTS)
    # a release without `manifests:` (the lab's shape) deploys bmctl's own pins
    bare = releases._check({"kubernetes": own.kubernetes, "images": own.images}, "bare")
    assert bare.manifests == {} and bare.all_manifests() == own.all_manifests()
