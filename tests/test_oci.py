"""bmctl's own registry client (bmctl/release/oci.py) and `bmctl push images`, against real registries.

A plain-HTTP registry (crane's `registry serve`, the lab's registry) and a registry with TLS and
htpasswd auth (the CNCF Distribution registry, bmctl/lab/tlsregistry.py), each started on
127.0.0.1 for one test and stopped by pid. The images: the lab's pause image (built from the cached
pause binary), a one-file image and a two-platform Docker manifest list, in one bundle layout
named as upstream names them, containerd's way (registry.k8s.io/pause:3.10.1,
quay.io/metallb/speaker:v0.15.2, docker.io/library/haproxy:2.8-alpine; the digest is the entry's
own). A tiny HTTP server serving tampered content checks that a pull verifies every digest. Needs
the crane, registry and pause binaries (python -m bmctl.lab.binaries; the registry is built here
when Go is there).
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from bmctl.commands import images as images_cmd
from bmctl.errors import BmctlError
from bmctl.lab import binaries, images, pki, tlsregistry
from bmctl.release import oci
from conftest import require
from lab.registries import docker_image, free_port, start_crane_registry, stop_crane_registry

USER, PASSWORD = "bmctl-pusher", "pw-Zq81-never-shown"
PAUSE = "registry.k8s.io/pause:3.10.1"
SPEAKER = "quay.io/metallb/speaker:v0.15.2"
HAPROXY = "docker.io/library/haproxy:2.8-alpine"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- prerequisites and images -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prerequisites():
    missing = [n for n in ("crane", "pause") if not binaries.binary(n).exists()]
    require(not missing, f"lab binaries {missing} (python -m bmctl.lab.binaries)")
    if not binaries.binary("registry").exists():
        require(shutil.which(binaries.go()) is not None, "go (to build the Distribution registry)")
        binaries.ensure(["distribution"])  # one time, ~1.5 min
    return True


@pytest.fixture(scope="module")
def bundle(prerequisites, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A layout with the three images, and reference -> manifest digest."""
    work = tmp_path_factory.mktemp("images")
    # the lab's pause image, as images.specs() builds it
    pause = images.write_layout(images.Image("pause", binaries.PAUSE_TAG,
                                             [images.users(), images._bin("pause", "pause")], entrypoint=["/pause"],
                                             user="65535:65535", source="bmctl/lab/cmd/pause"), work / "pause")
    speaker = images.write_layout(images.Image("speaker", "v0.15.2", [{"speaker.txt": images.data("speaker\n")}],
                                               entrypoint=["/speaker"]), work / "speaker")
    w = oci.LayoutWriter(work / "bundle")
    for built, name in ((pause, f"{PAUSE}@{pause.digest}"), (speaker, SPEAKER)):
        src = oci.DirLayout(built.layout)
        oci.copy_image(src, src.images()[0], w, name)
    children = [docker_image(w, "amd64"), docker_image(w, "arm64")]
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_LIST, "manifests": children}).encode()
    w.add_blob(index)
    w.add_image(sha(index), oci.DOCKER_LIST, len(index), HAPROXY)
    w.close()
    return work / "bundle", {PAUSE: pause.digest, SPEAKER: speaker.digest, HAPROXY: sha(index),
                             "haproxy-amd64": children[0]["digest"], "haproxy-arm64": children[1]["digest"]}


# -- registries -----------------------------------------------------------------------------------

@pytest.fixture
def plain_registry(prerequisites, tmp_path) -> str:
    """crane's registry on 127.0.0.1 (plain HTTP, no auth); its IP:PORT."""
    proc, address = start_crane_registry(tmp_path)
    try:
        yield address
    finally:
        stop_crane_registry(proc)


@pytest.fixture
def tls_registry(prerequisites, tmp_path) -> tlsregistry.TlsRegistry:
    """The Distribution registry on 127.0.0.1 with TLS (its own CA) and htpasswd auth for USER."""
    reg = tlsregistry.start(tmp_path / "tlsreg", port=free_port(), users={USER: PASSWORD})
    try:
        yield reg
    finally:
        tlsregistry.stop(reg.pid)


def everything_from(registry: oci.Registry):
    return lambda host: registry


def assert_same_blobs(pulled: Path, source: Path) -> None:
    for blob in (pulled / "blobs" / "sha256").iterdir():
        assert blob.read_bytes() == (source / "blobs" / "sha256" / blob.name).read_bytes(), blob.name
        assert sha(blob.read_bytes()) == "sha256:" + blob.name


# -- references and credentials (no registry) -----------------------------------------------------

def test_references_map_to_repositories_without_their_host():
    assert oci.target_of("registry.k8s.io/kube-apiserver:v1.34.2") == ("kube-apiserver", "v1.34.2", None)
    assert oci.target_of("docker.io/library/haproxy:2.8-alpine") == ("library/haproxy", "2.8-alpine", None)
    assert oci.target_of("haproxy:2.8-alpine") == ("library/haproxy", "2.8-alpine", None)
    assert oci.target_of("quay.io/metallb/speaker:v0.15.2") == ("metallb/speaker", "v0.15.2", None)
    digest = "sha256:" + "a" * 64
    assert oci.target_of(f"registry.k8s.io/pause:3.10.1@{digest}") == ("pause", "3.10.1", digest)
    assert str(oci.parse_reference("localhost:5000/x/y:1")) == "localhost:5000/x/y:1"
    for bad in ("registry.k8s.io/Pause:1", "registry.k8s.io/pause", "pause@sha256:123"):
        with pytest.raises(BmctlError):
            oci.parse_reference(bad)


def test_registry_endpoints():
    r = oci.Registry("198.51.100.3:5000/v2/mirror/ns")
    assert (r.base, r.namespace, r.name) == ("https://198.51.100.3:5000", "mirror/ns", "198.51.100.3:5000/mirror/ns")
    assert r.reference("pause", "3.10.1") == "198.51.100.3:5000/mirror/ns/pause:3.10.1"
    assert oci.Registry("http://198.51.100.3:5000").base == "http://198.51.100.3:5000"
    assert oci.Registry("198.51.100.3:5000", insecure_http=True).base == "http://198.51.100.3:5000"
    assert PASSWORD not in repr(oci.Registry("h:1", username=USER, password=PASSWORD))
    with pytest.raises(BmctlError, match="not a registry endpoint"):
        oci.Registry("198.51.100.3:5000/Bad Name")
    with pytest.raises(BmctlError, match="scheme ftp is neither https nor http"):
        oci.Registry("ftp://198.51.100.3:5000")
    with pytest.raises(BmctlError, match="does not exist"):
        oci.Registry("198.51.100.3:5000", cacert="/nonexistent/ca.crt")


def test_credentials_from_docker_config(tmp_path):
    auth = base64.b64encode(b"alice:pa:ss").decode()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "198.51.100.3:5000": {"auth": auth},
        "https://registry.example.com/v1/": {"username": "bob", "password": "pw"},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"carol:hub").decode()},
        "broken.example:1": {"auth": "bm90LWEtcGFpcg=="}}}))
    assert oci.credentials_from_docker_config(cfg, "198.51.100.3:5000") == ("alice", "pa:ss")
    assert oci.credentials_from_docker_config(cfg, "198.51.100.3:5000/v2/ns") == ("alice", "pa:ss")
    assert oci.credentials_from_docker_config(cfg, "https://registry.example.com") == ("bob", "pw")
    assert oci.credentials_from_docker_config(cfg, "docker.io") == ("carol", "hub")
    assert oci.credentials_from_docker_config(cfg, "198.51.100.4:5000") is None
    with pytest.raises(BmctlError, match="not the base64 of USER:PASSWORD"):
        oci.credentials_from_docker_config(cfg, "broken.example:1")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BmctlError, match="not JSON"):
        oci.credentials_from_docker_config(tmp_path / "bad.json", "x:1")


def test_layout_writer_refuses_content_that_does_not_match(tmp_path):
    w = oci.LayoutWriter(tmp_path / "l")
    good = b"hello"
    with pytest.raises(BmctlError, match="refused"):
        w.add_blob(io.BytesIO(b"jello"), sha(good), len(good))
    with pytest.raises(BmctlError, match="refused"):
        w.add_blob(io.BytesIO(good + b"!"), sha(good), len(good))
    assert w.add_blob(io.BytesIO(good), sha(good), len(good)) == sha(good)
    assert [p.name for p in (tmp_path / "l" / "blobs" / "sha256").iterdir()] == [sha(good).split(":")[1]]


def test_tar_layouts_are_read_in_place(bundle, tmp_path):
    layout_dir, digests = bundle
    expected = oci.DirLayout(layout_dir).index()
    with tarfile.open(tmp_path / "top.tar", "w") as tar:  # the layout at the top of the tar, ./-prefixed
        tar.add(layout_dir, arcname=".")
    top = oci.open_layout(tmp_path / "top.tar")
    under = oci.open_layout(_bundle_tar(layout_dir, tmp_path / "bundle.tar"))
    for layout in (top, under):
        assert isinstance(layout, oci.TarLayout) and layout.index() == expected
        manifest = layout.read_blob(digests[PAUSE])
        config = json.loads(manifest)["config"]["digest"]
        assert layout.has_blob(config) and not layout.has_blob("sha256:" + "0" * 64)
        with layout.open_blob(config) as f:
            assert f.read() == (layout_dir / "blobs" / "sha256" / config.split(":")[1]).read_bytes()
        assert layout.blob_size(config) == (layout_dir / "blobs" / "sha256" / config.split(":")[1]).stat().st_size
    assert (top.prefix, under.prefix) == ("", "images/")


# -- plain HTTP ------------------------------------------------------------------------------------

def test_push_then_pull_by_tag_and_digest(bundle, plain_registry, tmp_path):
    layout_dir, digests = bundle
    registry = oci.Registry(f"http://{plain_registry}")
    pushed = oci.push_layout(oci.DirLayout(layout_dir), registry)
    assert [tuple(p) for p in pushed] == [(f"{plain_registry}/pause:3.10.1", digests[PAUSE]),
                                          (f"{plain_registry}/metallb/speaker:v0.15.2", digests[SPEAKER]),
                                          (f"{plain_registry}/library/haproxy:2.8-alpine", digests[HAPROXY])]
    assert all(p.blobs_sent > 0 and not p.already for p in pushed)
    assert registry.manifest_digest("library/haproxy", digests["haproxy-arm64"]) == digests["haproxy-arm64"]

    with oci.LayoutWriter(tmp_path / "pulled") as w:
        by_tag = oci.pull(PAUSE, w, registry_for=everything_from(registry))
        by_digest = oci.pull(f"registry.k8s.io/pause@{digests[PAUSE]}", w, registry_for=everything_from(registry))
        speaker = oci.pull(SPEAKER, w, registry_for=everything_from(registry))
        arm = oci.pull("haproxy:2.8-alpine", w, platform="linux/arm64", registry_for=everything_from(registry))
    # named containerd's way: the reference without a digest (a digest-only one keeps it), the digest apart
    assert by_tag == (PAUSE, digests[PAUSE])
    assert by_digest == (f"registry.k8s.io/pause@{digests[PAUSE]}", digests[PAUSE])
    assert speaker == (SPEAKER, digests[SPEAKER])
    assert arm == (HAPROXY, digests["haproxy-arm64"])  # the platform's manifest
    assert_same_blobs(tmp_path / "pulled", layout_dir)
    names = {d["annotations"][oci.NAME_ANNOTATION]: d for d in oci.DirLayout(tmp_path / "pulled").images()}
    assert set(names) == {PAUSE, f"registry.k8s.io/pause@{digests[PAUSE]}", SPEAKER, HAPROXY}
    assert names[PAUSE]["annotations"][oci.REF_ANNOTATION] == "3.10.1" and names[PAUSE]["digest"] == digests[PAUSE]
    assert oci.REF_ANNOTATION not in names[f"registry.k8s.io/pause@{digests[PAUSE]}"]["annotations"]
    assert names[HAPROXY]["mediaType"] == oci.DOCKER_MANIFEST
    assert names[HAPROXY]["digest"] == digests["haproxy-arm64"]

    # the pulled layout pushes again as it is: no blob sent; only haproxy's tag moves (index -> arm64 manifest)
    again = oci.push_layout(oci.DirLayout(tmp_path / "pulled"), registry)
    assert {p.digest for p in again} == {digests[PAUSE], digests[SPEAKER], digests["haproxy-arm64"]}
    assert sum(p.blobs_sent for p in again) == 0
    assert [p.reference for p in again if not p.already] == [f"{plain_registry}/library/haproxy:2.8-alpine"]
    assert registry.manifest_digest("library/haproxy", "2.8-alpine") == digests["haproxy-arm64"]

    with oci.LayoutWriter(tmp_path / "all") as w:  # platform=None keeps the whole index
        got = oci.pull(f"{HAPROXY}@{digests[HAPROXY]}", w, platform=None, registry_for=everything_from(registry))
    assert got == (HAPROXY, digests[HAPROXY])
    assert_same_blobs(tmp_path / "all", layout_dir)
    with pytest.raises(BmctlError, match=r"has no image for linux/s390x \(it has linux/amd64, linux/arm64\)"):
        oci.pull(f"{HAPROXY}@{digests[HAPROXY]}", oci.LayoutWriter(tmp_path / "x"), platform="linux/s390x",
                 registry_for=everything_from(registry))
    with pytest.raises(BmctlError, match="haproxy:2.8-alpine is an image for linux/arm64, not linux/amd64"):
        oci.pull(HAPROXY, oci.LayoutWriter(tmp_path / "x"), registry_for=everything_from(registry))
    with pytest.raises(BmctlError, match=r"pause:9.9 is not on registry .* \(404"):
        oci.pull("registry.k8s.io/pause:9.9", oci.LayoutWriter(tmp_path / "x"), registry_for=everything_from(registry))


def test_second_push_sends_no_blob(bundle, plain_registry):
    layout_dir, _ = bundle
    registry = oci.Registry(f"http://{plain_registry}")
    first = oci.push_layout(oci.DirLayout(layout_dir), registry)
    second = oci.push_layout(oci.DirLayout(layout_dir), oci.Registry(f"http://{plain_registry}"))
    assert [tuple(p) for p in second] == [tuple(p) for p in first]
    assert sum(p.blobs_sent for p in second) == 0 and sum(p.bytes_sent for p in second) == 0
    assert all(p.already for p in second)


def test_namespace_endpoint_puts_images_under_it(bundle, plain_registry):
    layout_dir, digests = bundle
    pushed = oci.push_layout(oci.DirLayout(layout_dir), oci.Registry(f"{plain_registry}/v2/ns", insecure_http=True))
    assert pushed[0].reference == f"{plain_registry}/ns/pause:3.10.1"
    root = oci.Registry(f"http://{plain_registry}")
    assert root.manifest_digest("ns/pause", "3.10.1") == digests[PAUSE]
    assert root.manifest_digest("ns/metallb/speaker", "v0.15.2") == digests[SPEAKER]
    assert root.manifest_digest("pause", "3.10.1") is None


def test_a_layout_whose_reference_names_another_digest_is_refused(bundle, tmp_path, plain_registry):
    layout_dir, digests = bundle
    shutil.copytree(layout_dir, tmp_path / "l")
    index = json.loads((tmp_path / "l" / "index.json").read_text())
    other = "sha256:" + "0" * 64
    index["manifests"][0]["annotations"][oci.NAME_ANNOTATION] = f"{PAUSE}@{other}"
    (tmp_path / "l" / "index.json").write_text(json.dumps(index))
    with pytest.raises(BmctlError, match=f"names digest {other}, but the layout's manifest is {digests[PAUSE]}"):
        oci.push_layout(oci.DirLayout(tmp_path / "l"), oci.Registry(f"http://{plain_registry}"))


def test_layouts_named_with_their_digest_still_push(bundle, tmp_path, plain_registry):
    """Layouts written before the containerd naming (HOST/REPO:TAG@DIGEST) push as they are; a writer
    that extends one names the image again without the digest, in place of the old entry."""
    layout_dir, digests = bundle
    shutil.copytree(layout_dir, tmp_path / "l")
    index = json.loads((tmp_path / "l" / "index.json").read_text())
    assert index["manifests"][0]["annotations"][oci.NAME_ANNOTATION] == PAUSE  # copy_image's name, no digest
    index["manifests"][0]["annotations"][oci.NAME_ANNOTATION] = f"{PAUSE}@{digests[PAUSE]}"
    (tmp_path / "l" / "index.json").write_text(json.dumps(index))
    pushed = oci.push_layout(oci.DirLayout(tmp_path / "l"), oci.Registry(f"http://{plain_registry}"))
    assert tuple(pushed[0]) == (f"{plain_registry}/pause:3.10.1", digests[PAUSE])
    assert pushed[0].source == f"{PAUSE}@{digests[PAUSE]}"

    w = oci.LayoutWriter(tmp_path / "l")
    desc = w.add_image(digests[PAUSE], oci.OCI_MANIFEST, index["manifests"][0]["size"], f"{PAUSE}@{digests[PAUSE]}")
    assert desc["annotations"] == {oci.NAME_ANNOTATION: PAUSE, oci.REF_ANNOTATION: "3.10.1"}
    w.close()
    names = [d["annotations"][oci.NAME_ANNOTATION] for d in oci.DirLayout(tmp_path / "l").images()]
    assert names == [SPEAKER, HAPROXY, PAUSE]
    with pytest.raises(BmctlError, match=f"names digest sha256:0{{64}}, not the manifest's {digests[PAUSE]}"):
        w.add_image(digests[PAUSE], oci.OCI_MANIFEST, 1, f"{PAUSE}@sha256:{'0' * 64}")


# -- TLS and authentication ---------------------------------------------------------------------------

def test_tls_registry_with_credentials(bundle, tls_registry, tmp_path):
    layout_dir, digests = bundle
    registry = oci.Registry(tls_registry.address, cacert=tls_registry.cacert, username=USER, password=PASSWORD)
    pushed = oci.push_layout(oci.DirLayout(layout_dir), registry)
    assert [p.digest for p in pushed] == [digests[PAUSE], digests[SPEAKER], digests[HAPROXY]]
    again = oci.push_layout(oci.DirLayout(layout_dir), registry)
    assert all(p.already for p in again)
    with oci.LayoutWriter(tmp_path / "pulled") as w:
        got = oci.pull(f"registry.k8s.io/pause:3.10.1@{digests[PAUSE]}", w, registry_for=everything_from(registry))
        amd = oci.pull(HAPROXY, w, registry_for=everything_from(registry))
    assert got[1] == digests[PAUSE] and amd[1] == digests["haproxy-amd64"]
    assert_same_blobs(tmp_path / "pulled", layout_dir)


def test_wrong_or_missing_credentials_are_named_without_the_password(bundle, tls_registry):
    layout_dir, _ = bundle
    wrong = PASSWORD[::-1]
    for user, password, expected in ((USER, wrong, f"registry {tls_registry.address} refused the credentials of "
                                                   f"'{USER}' (401"),
                                     (None, None, f"registry {tls_registry.address} requires credentials (401")):
        registry = oci.Registry(tls_registry.address, cacert=tls_registry.cacert, username=user, password=password)
        for attempt in (registry.ping, lambda: oci.push_layout(oci.DirLayout(layout_dir), registry)):
            with pytest.raises(BmctlError) as err:
                attempt()
            text = err.value.render()
            assert expected in text, text
            assert wrong not in text and PASSWORD not in text and "Basic " not in text and "Authorization" not in text


def test_tls_is_verified(bundle, tls_registry, plain_registry, tmp_path):
    with pytest.raises(BmctlError) as err:
        oci.Registry(tls_registry.address, username=USER, password=PASSWORD).ping()
    address = tls_registry.address
    assert f"registry {address}: TLS certificate of {address} not trusted" in err.value.message
    assert "--cacert" in err.value.fix
    other = tmp_path / "other"
    other.mkdir()
    pki.make_ca(other)
    with pytest.raises(BmctlError, match="not trusted .*not even with --cacert"):
        oci.Registry(tls_registry.address, cacert=other / "ca.crt", username=USER, password=PASSWORD).ping()
    with pytest.raises(BmctlError, match="serves HTTPS, not plain HTTP"):
        oci.Registry(f"http://{tls_registry.address}", username=USER, password=PASSWORD).ping()
    with pytest.raises(BmctlError, match="does not speak TLS"):
        oci.Registry(plain_registry).ping()
    with pytest.raises(BmctlError, match="refused the connection"):
        oci.Registry(f"http://127.0.0.1:{free_port()}").ping()


# -- `bmctl push images` ------------------------------------------------------------------------------

def _bundle_tar(layout_dir: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        tar.add(layout_dir, arcname="images")
        data = b"bundle readme\n"
        info = tarfile.TarInfo("README")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return dest


def test_push_images_from_a_bundle_tar(bundle, tls_registry, tmp_path, capsys, monkeypatch):
    layout_dir, digests = bundle
    tar = _bundle_tar(layout_dir, tmp_path / "bundle.tar")
    creds = tmp_path / "config.json"
    creds.write_text(json.dumps({"auths": {tls_registry.address: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))

    results = images_cmd.push_images(tar, tls_registry.address, tls_registry.cacert, creds, False)
    output = capsys.readouterr().out
    assert [r.digest for r in results] == [digests[PAUSE], digests[SPEAKER], digests[HAPROXY]]
    assert f"{PAUSE} -> {tls_registry.address}/pause:3.10.1@{digests[PAUSE]} (3 blob(s)" in output
    assert f"{HAPROXY} -> {tls_registry.address}/library/haproxy:2.8-alpine@{digests[HAPROXY]} (4 blob(s)" in output
    assert f"Pushed 3 image(s) to {tls_registry.address}: 9 blob(s) sent" in output
    assert PASSWORD not in output

    # again, the credentials typed at the prompt (--need-credential), into a namespace: nothing is there
    answers = iter([USER, PASSWORD])
    monkeypatch.setattr("typer.prompt", lambda text, **kw: next(answers))
    images_cmd.push_images(tar, f"{tls_registry.address}/v2/mirror", tls_registry.cacert, None, True)
    images_cmd.push_images(layout_dir, f"{tls_registry.address}/v2/mirror", tls_registry.cacert, creds, False)
    output = capsys.readouterr().out
    assert output.count("(already there)") == 3
    assert f"Pushed 3 image(s) to {tls_registry.address}/mirror: 0 blob(s) sent (0.0 MiB, 0 bytes), 3 already " \
           "there" in output

    with pytest.raises(BmctlError, match="has no credentials for 127.0.0.2:5000"):
        images_cmd.push_images(tar, "127.0.0.2:5000", None, creds, False)
    (tmp_path / "bundle.tar.gz").write_bytes(gzip.compress(tar.read_bytes()))
    with pytest.raises(BmctlError, match="gzip-compressed"):
        images_cmd.push_images(tmp_path / "bundle.tar.gz", tls_registry.address, tls_registry.cacert, creds, False)
    with pytest.raises(BmctlError, match="holds no OCI image layout under images/"):
        images_cmd.push_images(_empty_tar(tmp_path / "empty.tar"), tls_registry.address, tls_registry.cacert, creds,
                               False)


def _empty_tar(dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        info = tarfile.TarInfo("README")
        tar.addfile(info, io.BytesIO(b""))
    return dest


# -- a registry that serves tampered content ----------------------------------------------------------

class _Tampering(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[str, bytes]] = {}

    def _answer(self, body: bool) -> None:
        route = self.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        media_type, data = route
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, *args) -> None:
        pass


def test_pull_refuses_content_that_does_not_match_its_digest(tmp_path):
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = b"the real layer"
    tampered = b"the evil layer"  # the same size
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": sha(layer), "size": len(layer)}]}).encode()
    longer = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                         "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                                    "size": len(config) - 1}, "layers": []}).encode()
    _Tampering.routes = {
        "/v2/": ("application/json", b"{}"),
        "/v2/evil/manifests/v1": (oci.OCI_MANIFEST, manifest),
        "/v2/evil/manifests/v2": (oci.OCI_MANIFEST, longer),
        f"/v2/evil/manifests/{sha(b'another manifest')}": (oci.OCI_MANIFEST, manifest),
        f"/v2/evil/blobs/{sha(config)}": ("application/octet-stream", config),
        f"/v2/evil/blobs/{sha(layer)}": ("application/octet-stream", tampered),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Tampering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        registry = oci.Registry(f"http://127.0.0.1:{server.server_address[1]}")
        w = oci.LayoutWriter(tmp_path / "l")
        with pytest.raises(BmctlError, match=f"blob {sha(layer)}: the content received has digest {sha(tampered)}.*"
                                             "refused"):
            oci.pull("example.com/evil:v1", w, registry_for=everything_from(registry))
        with pytest.raises(BmctlError, match=f"more than the {len(config) - 1} bytes its descriptor names; refused"):
            oci.pull("example.com/evil:v2", w, registry_for=everything_from(registry))
        with pytest.raises(BmctlError, match=f"served a manifest with digest {sha(manifest)}; refused"):
            oci.pull(f"example.com/evil@{sha(b'another manifest')}", w, registry_for=everything_from(registry))
        w.close()
        kept = sorted(p.name for p in (tmp_path / "l" / "blobs" / "sha256").iterdir())
        assert kept == [sha(config).split(":")[1]]  # the good config only: no tampered blob, no temp file
        assert oci.DirLayout(tmp_path / "l").images() == []
    finally:
        server.shutdown()
        server.server_close()


# -- Bearer tokens ------------------------------------------------------------------------------------

class _TokenService(http.server.BaseHTTPRequestHandler):
    """A Docker token service: Basic credentials of USER in, a JWT (RS256, x5c) for the asked scope out."""
    key = cert_der = None
    issued: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "bmctl-test-issuer", "sub": USER, "aud": "bmctl-test-registry", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=")  # noqa: E731
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
        signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        body = json.dumps({"token": (signing_input + b"." + b64(signature)).decode()}).encode()
        self.issued.append(",".join(query.get("scope", [])))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def token_registry(prerequisites, tmp_path):
    """The Distribution registry (TLS) taking Bearer tokens from a token service of this test."""
    signer = tmp_path / "signer"
    signer.mkdir()
    pki.make_ca(signer, cn="bmctl test token signer")
    _TokenService.key = pki.load(signer / "ca.key")
    _TokenService.cert_der = pki.load(signer / "ca.crt").public_bytes(serialization.Encoding.DER)
    _TokenService.issued = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = {"realm": f"http://127.0.0.1:{server.server_address[1]}/token", "service": "bmctl-test-registry",
                 "issuer": "bmctl-test-issuer", "rootcertbundle": str(signer / "ca.crt")}
        reg = tlsregistry.start(tmp_path / "tokenreg", port=free_port(), token=token)
        try:
            yield reg
        finally:
            tlsregistry.stop(reg.pid)
    finally:
        server.shutdown()
        server.server_close()


def test_bearer_token_flow(bundle, token_registry, tmp_path):
    layout_dir, digests = bundle
    registry = oci.Registry(token_registry.address, cacert=token_registry.cacert, username=USER, password=PASSWORD)
    pushed = oci.push_layout(oci.DirLayout(layout_dir), registry)
    assert [p.digest for p in pushed] == [digests[PAUSE], digests[SPEAKER], digests[HAPROXY]]
    scopes = set(_TokenService.issued)
    assert scopes == {f"repository:{r}:pull,push" for r in ("pause", "metallb/speaker", "library/haproxy")}
    assert len(_TokenService.issued) == len(scopes)  # one token per scope, kept, whatever the threads
    with oci.LayoutWriter(tmp_path / "pulled") as w:
        assert oci.pull(PAUSE, w, registry_for=everything_from(registry))[1] == digests[PAUSE]
    assert_same_blobs(tmp_path / "pulled", layout_dir)

    for user, password, expected in ((USER, "nope", f"registry {token_registry.address} refused the credentials of "
                                                    f"'{USER}' (401 from its token service 127.0.0.1:"),
                                     (None, None, f"registry {token_registry.address} requires credentials (401")):
        with pytest.raises(BmctlError) as err:
            oci.push_layout(oci.DirLayout(layout_dir), oci.Registry(token_registry.address, token_registry.cacert,
                                                                    user, password))
        assert expected in err.value.render() and PASSWORD not in err.value.render()
