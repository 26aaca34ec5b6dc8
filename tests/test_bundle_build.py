"""`bmctl bundle build` from upstream (bmctl/release/build.py), against a real HTTP server and a real
registry on 127.0.0.1; no network beyond it.

The HTTP server serves a folder laid out like upstream (dl.k8s.io/release/..., github.com/.../releases/
download/...), at the paths of bmctl's own release (bmctl/release/v1.34.2.yaml, read here), and is
passed as --mirror. Each download is a small stand-in (a file, or a .tar.gz/.tgz holding the files
`install` names), next to its checksum in the shape its project publishes: a bare digest (dl.k8s.io,
cri-tools), `HEX  FILE` (containerd, CNI plugins) or a list of such lines (runc). A crane registry
holds the lab's pause image under every name:tag of the release (haproxy: a two-platform Docker
manifest list), under one path per upstream host (registry.k8s.io/..., docker.io/...), and
`registry_for` points every host there. Needs the crane and pause binaries (python -m bmctl.lab.binaries).
The upstream manifests the release pins come from the Go module cache (the Go client downloads their
modules first), with GOPROXY=off and an empty bmctl cache: the build itself asks no module proxy.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import random
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bmctl.commands import bundle as bundle_cmd
from bmctl.commands import images as images_cmd
from bmctl.errors import BmctlError
from bmctl.lab import binaries, images
from bmctl.release import build, load, oci, upstream as upstream_files
from bmctl.release.bundle import MANIFESTS, Bundle
from conftest import go_module_dir, require
from lab.registries import docker_image, start_crane_registry, stop_crane_registry

RELEASE = load(None)  # bmctl's own: the URLs and references the test serves
VERSION = RELEASE.kubernetes
# The checksum file's shape, as each project publishes it.
SHAPES = {"kubelet": "bare", "kubeadm": "bare", "kubectl": "bare", "crictl": "bare", "containerd": "line",
          "runc": "list", "cni-plugins": "line"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def url_path(url: str) -> str:
    """Where a URL of the release lives under the mirror folder: HOST/PATH."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc + parts.path


def basename(url: str) -> str:
    return urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]


def targz(files: dict[str, bytes], dot: bool) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        if dot:  # the CNI plugins' archive: ./ and ./NAME
            info = tarfile.TarInfo("./")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}" if dot else name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


# -- upstream: the HTTP server ----------------------------------------------------------------------

class Upstream:
    """The mirror folder, its server, and what each path on the node must end up holding."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.expected: dict[str, tuple[bytes, str]] = {}  # path on node -> (content, part)
        self.requested: list[str] = []
        rng = random.Random(1342)
        for part in RELEASE.binaries.values():
            name = basename(part.url)
            content = {key: f"#!/bin/sh\n# stand-in for {part.name} {part.version}: {key}\n".encode()
                       + rng.randbytes(1_500_000 if part.name == "kubelet" else 2_000)
                       for key in part.install}
            for key, node_path in part.install.items():
                self.expected[node_path] = (content[key], part.name)
            if set(part.install) == {name}:
                download = content[name]
            else:
                extra = {"LICENSE": b"Apache-2.0\n", "README.md": b"readme\n"}
                if part.name == "containerd":
                    extra = {"bin/containerd-stress": b"stress\n"}
                download = targz({**content, **extra}, dot=name.endswith(".tgz"))
            self.put(url_path(part.url), download)
            digest = sha256(download)
            shape = SHAPES.get(part.name, "line")
            if shape == "bare":
                sums = f"{digest}\n"
            elif shape == "line":
                sums = f"{digest}  {name}\n"
            else:  # runc's runc.sha256sum: every file of the release, one line each, some in binary mode
                others = ["runc.386", "runc.arm64", "runc.armel", "runc.tar.xz", "libseccomp-2.5.6.tar.gz"]
                lines = [f"{sha256(o.encode())} *{o}" for o in others[:2]] + [f"{digest}  {name}"] \
                    + [f"{sha256(o.encode())}  {o}" for o in others[2:]]
                sums = "\n".join(lines) + "\n"
            self.put(url_path(part.checksum_url), sums.encode())
        handler = functools.partial(_Handler, self, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.mirror = f"http://127.0.0.1:{self.server.server_address[1]}"

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def file(self, url: str) -> Path:
        return self.root / url_path(url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, upstream: Upstream, *args, **kwargs) -> None:
        self.upstream = upstream
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self.upstream.requested.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


# -- upstream: the registry -------------------------------------------------------------------------

class Registry:
    """The images of the release in one crane registry, one path per upstream host."""

    def __init__(self, folder: Path) -> None:
        self.proc, self.address = start_crane_registry(folder)
        try:
            pause = images.write_layout(images.Image("pause", binaries.PAUSE_TAG,
                                                     [images.users(), images._bin("pause", "pause")],
                                                     entrypoint=["/pause"], user="65535:65535",
                                                     source="bmctl/lab/cmd/pause"), folder / "pause")
            w = oci.LayoutWriter(folder / "layout")
            src = oci.DirLayout(pause.layout)
            self.digests: dict[str, str] = {}  # reference -> digest of the linux/amd64 manifest
            for name, ref in RELEASE.images.items():
                if name == "haproxy":  # a two-platform manifest list
                    children = [docker_image(w, "amd64"), docker_image(w, "arm64")]
                    index = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_LIST,
                                        "manifests": children}).encode()
                    self.haproxy_index = w.add_blob(index)
                    w.add_image(self.haproxy_index, oci.DOCKER_LIST, len(index), ref)
                    self.digests[ref] = children[0]["digest"]
                else:
                    oci.copy_image(src, src.images()[0], w, ref)
                    self.digests[ref] = pause.digest
            w.close()

            def target(source: str) -> str:
                ref = oci.parse_reference(source)
                return f"{ref.host}/{ref.repo}:{ref.tag}"

            oci.push_layout(oci.DirLayout(folder / "layout"), oci.Registry(f"http://{self.address}"), target)
        except BaseException:
            stop_crane_registry(self.proc)
            raise
        self._registries: dict[str, oci.Registry] = {}
        self.hosts: list[str] = []

    def registry_for(self, host: str) -> oci.Registry:
        """registry.k8s.io, ghcr.io, quay.io, docker.io -> http://ADDRESS/HOST (the host's path here)."""
        self.hosts.append(host)
        if host not in self._registries:
            self._registries[host] = oci.Registry(f"http://{self.address}/{host}")
        return self._registries[host]

    def stop(self) -> None:
        stop_crane_registry(self.proc)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    missing = [n for n in ("crane", "pause") if not binaries.binary(n).exists()]
    require(not missing, f"lab binaries {missing} (python -m bmctl.lab.binaries)")
    server = Upstream(tmp_path_factory.mktemp("upstream"))
    try:
        registry = Registry(tmp_path_factory.mktemp("registry"))
        try:
            yield server, registry
        finally:
            registry.stop()
    finally:
        server.stop()


@pytest.fixture
def changed(upstream):
    """Change a served file for one test: changed(path, new bytes); put back afterwards."""
    saved: dict[Path, bytes] = {}

    def change(path: Path, data: bytes) -> None:
        saved.setdefault(path, path.read_bytes())
        path.write_bytes(data)

    try:
        yield change
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


@pytest.fixture(autouse=True)
def manifests_from_the_module_cache(monkeypatch, tmp_path):
    for manifest in RELEASE.all_manifests():
        go_module_dir(manifest.module, manifest.version)
    monkeypatch.setenv("GOPROXY", "off")
    monkeypatch.setenv("BMCTL_UPSTREAM_CACHE", str(tmp_path / "upstream-cache"))


def build_with(upstream, tmp_path: Path, output: Path | None = None, **kw) -> tuple[Path, list[str]]:
    server, registry = upstream
    lines: list[str] = []
    output = output or tmp_path / "out" / "bundle.tar"
    kw.setdefault("mirror", server.mirror)
    build.build_official(kw.pop("kubernetes", VERSION), output, registry_for=registry.registry_for, say=lines.append,
                         workdir=tmp_path / "work", **kw)
    return output, lines


def assert_nothing_left(tmp_path: Path, output: Path) -> None:
    assert not output.exists()
    assert list((tmp_path / "work").iterdir()) == []
    assert not output.parent.exists() or list(output.parent.iterdir()) == []  # no temp file either


# -- the builds -------------------------------------------------------------------------------------

def test_full_build_verifies_and_pushes(upstream, tmp_path):
    server, registry = upstream
    server.requested.clear()
    start = time.monotonic()
    output, lines = build_with(upstream, tmp_path)
    took = time.monotonic() - start

    bundle = Bundle.open(output)
    bundle.verify()
    assert bundle.manifest["source"] == f"upstream (mirror {server.mirror})"
    # every path on the node, with the sha256 of the file `install` names, from the right part
    assert set(bundle.software) == set(server.expected)
    for node_path, (content, part) in server.expected.items():
        assert (bundle.software[node_path].sha256, bundle.software[node_path].part) == (sha256(content), part)
        assert bundle.software[node_path].size == len(content)
    with bundle.node_archive() as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
        inside = {"/" + m.name: sha256(tar.extractfile(m).read()) for m in tar.getmembers()}
    assert inside == {p: sha256(c) for p, (c, _) in server.expected.items()}
    # every image pinned by the digest pulled (haproxy: its linux/amd64 manifest, not the list)
    assert bundle.release.images == {n: f"{r}@{registry.digests[r]}" for n, r in RELEASE.images.items()}
    assert {p.name for p in bundle.release.binaries.values()} == set(RELEASE.binaries)
    # every upstream manifest the release pins, as its Go module has it, and the pins in the bundle's release
    assert bundle.release.manifests == RELEASE.manifests
    members = {upstream_files.member(m, f): f.sha256 for m in RELEASE.all_manifests() for f in m.files}
    assert sorted(n for n in bundle.members if n.startswith(MANIFESTS)) == sorted(members)
    for name, digest in members.items():
        with bundle.open_member(name) as f:
            assert sha256(f.read()) == digest, name
    assert any(line.startswith("  gateway-api: sigs.k8s.io/gateway-api v1.6.1, 11 file(s)") for line in lines), lines
    assert set(registry.hosts) == {"registry.k8s.io", "ghcr.io", "quay.io", "docker.io"}
    # --mirror: every url and checksumUrl of the release fetched as MIRROR/HOST/PATH, each with a progress line
    assert sorted(server.requested) == sorted("/" + url_path(u) for p in RELEASE.binaries.values()
                                              for u in (p.url, p.checksum_url))
    for part in RELEASE.binaries.values():
        for url in (part.url, part.checksum_url):
            assert any(line.startswith(f"  {part.name}: {basename(url)} ") and " MB in " in line for line in lines), \
                (url, lines)
    assert list((tmp_path / "work").iterdir()) == []  # the work dir is gone
    assert [p.name for p in output.parent.iterdir()] == ["bundle.tar"]  # no temp file next to the bundle

    # the bundle's images push into another registry, each under its tag, as pulled
    proc, other = start_crane_registry(tmp_path / "other")
    try:
        results = images_cmd.push_images(output, f"http://{other}", None, None, False)
        assert {r.source: r.digest for r in results} == {r: registry.digests[r] for r in RELEASE.images.values()}
        target = oci.Registry(f"http://{other}")
        for ref in RELEASE.images.values():
            repo, tag, _ = oci.target_of(ref)
            assert target.manifest_digest(repo, tag) == registry.digests[ref], ref
    finally:
        stop_crane_registry(proc)
    assert took < 30, took


def test_the_bundle_carries_the_pinned_manifests(tmp_path, monkeypatch):
    """Without the HTTP server and registry (stand-ins for the node software and the images): the
    build puts every upstream manifest the release pins into the bundle, from the Go module cache
    (GOPROXY=off), and its release names every pin; the bundle then serves them to a render."""
    def no_images(release, layout, registry_for=None, say=print):
        layout.mkdir(parents=True)
        return {name: f"{ref}@sha256:{'0' * 64}" for name, ref in release.images.items()}

    monkeypatch.setattr(build, "fetch_software", lambda *a, **kw: {})
    monkeypatch.setattr(build, "pull_images", no_images)
    output, lines = build_with((SimpleNamespace(mirror=None), SimpleNamespace(registry_for=None)), tmp_path)
    bundle = Bundle.open(output)
    bundle.verify()
    assert bundle.release.manifests == RELEASE.manifests
    for manifest in RELEASE.all_manifests():
        for file in manifest.files:
            with bundle.open_member(upstream_files.member(manifest, file)) as f:
                assert sha256(f.read()) == file.sha256
        assert any(line.startswith(f"  {manifest.name}: {manifest.module} {manifest.version}") for line in lines)
    # read back from the bundle alone: an empty cache, no Go module cache, no proxy
    assert (tmp_path / "upstream-cache" / "sigs.k8s.io").is_dir()  # the build kept them in bmctl's cache
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "no-modcache"))
    monkeypatch.setenv("BMCTL_UPSTREAM_CACHE", str(tmp_path / "empty-cache"))
    crds = upstream_files.texts(bundle.release, "gateway-api", output)
    assert len(crds) == 11 and not (tmp_path / "empty-cache").exists()


def test_cli_build_prints_the_bundle(upstream, tmp_path, monkeypatch, capsys):
    """bmctl bundle build --kubernetes v1.34.2 --mirror URL: ./bmctl-bundle-v1.34.2-linux-amd64.tar, the
    images from oci.pull's own default registries (pointed at the test registry here)."""
    server, registry = upstream
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(oci, "default_registry", registry.registry_for)
    path = bundle_cmd.build(VERSION, None, "official", None, server.mirror)
    assert path == Path("bmctl-bundle-v1.34.2-linux-amd64.tar") and path.is_file()
    printed = capsys.readouterr().out
    assert f"Bundle {path.resolve()}" in printed
    assert f"sha256  {sha256(path.read_bytes())}" in printed
    assert f"({path.stat().st_size} bytes)" in printed
    for name, ref in RELEASE.images.items():
        assert f"{ref}@{registry.digests[ref]}" in printed, name
    for part in RELEASE.binaries.values():
        assert any(line.split()[:2] == [part.name, part.version] for line in printed.splitlines()), part.name
    # nothing else in the working folder (the test's bmctl cache for upstream files lives there too)
    assert [p.name for p in tmp_path.iterdir() if p.name != "upstream-cache"] == [path.name]
    with pytest.raises(BmctlError, match="--from 'usb' is not a bundle source"):
        bundle_cmd.build(VERSION, None, "usb", None, None)
    with pytest.raises(BmctlError, match="--release and --mirror are for --from official"):
        bundle_cmd.build(VERSION, None, "lab", None, server.mirror)
    with pytest.raises(BmctlError, match=r"the lab builds Kubernetes v1\.34\.2, not v1\.33\.0"):
        bundle_cmd.build("v1.33.0", None, "lab", None, None)


def test_a_corrupted_download_is_refused(upstream, tmp_path, changed):
    server, _ = upstream
    kubelet = RELEASE.binaries["kubelet"]
    good = server.file(kubelet.url).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    changed(server.file(kubelet.url), bytes(bad))
    output = tmp_path / "out" / "bundle.tar"
    with pytest.raises(BmctlError) as err:
        build_with(upstream, tmp_path, output)
    text = err.value.render()
    assert "kubelet: kubelet downloaded from " in text
    assert f"{server.mirror}/{url_path(kubelet.url)} has sha256 {sha256(bytes(bad))[:16]}..." in text
    assert f"says {sha256(good)[:16]}...; refused" in text and kubelet.checksum_url in text
    assert_nothing_left(tmp_path, output)


def test_a_checksum_list_without_the_file_is_refused(upstream, tmp_path, changed):
    server, _ = upstream
    runc = RELEASE.binaries["runc"]
    sums = server.file(runc.checksum_url)
    lines = sums.read_text().splitlines()
    kept = [line for line in lines if not line.endswith(basename(runc.url))]
    assert len(kept) == len(lines) - 1 >= 2
    changed(sums, ("\n".join(kept) + "\n").encode())
    output = tmp_path / "out" / "bundle.tar"
    with pytest.raises(BmctlError, match=rf"{server.mirror}/\S+/runc\.sha256sum has no sha256 for runc\.amd64"):
        build_with(upstream, tmp_path, output)
    assert_nothing_left(tmp_path, output)


def test_a_missing_download_is_named(upstream, tmp_path):
    server, _ = upstream
    crictl = RELEASE.binaries["crictl"]
    path = server.file(crictl.url)
    path.rename(path.with_name("moved"))
    output = tmp_path / "out" / "bundle.tar"
    try:
        with pytest.raises(BmctlError) as err:
            build_with(upstream, tmp_path, output)
    finally:
        path.with_name("moved").rename(path)
    assert err.value.message == f"download of {server.mirror}/{url_path(crictl.url)} failed: 404 File not found."
    assert err.value.fix == f"check that {server.mirror} serves {url_path(crictl.url)}."
    assert_nothing_left(tmp_path, output)


def test_release_files_pin_and_name_members(upstream, tmp_path):
    """--release FILE: digests it pins are checked (an image index's digest before the platform is
    chosen); a wrong one, or an archive member the download lacks, is refused."""
    _, registry = upstream
    data = yaml.safe_load((Path(build.__file__).parent / f"{VERSION}.yaml").read_text())
    pause, haproxy = RELEASE.images["pause"], RELEASE.images["haproxy"]
    data["images"]["pause"] = f"{pause}@{registry.digests[pause]}"
    data["images"]["haproxy"] = f"{haproxy}@{registry.haproxy_index}"
    release_file = tmp_path / "release.yaml"
    release_file.write_text(yaml.safe_dump(data))
    output, _ = build_with(upstream, tmp_path, release_file=release_file)
    images_ = Bundle.open(output).release.images
    assert images_["pause"] == f"{pause}@{registry.digests[pause]}"
    assert images_["haproxy"] == f"{haproxy}@{registry.digests[haproxy]}"  # the amd64 manifest of the list
    output.unlink()

    data["images"]["etcd"] = f"{RELEASE.images['etcd']}@sha256:{'0' * 64}"
    release_file.write_text(yaml.safe_dump(data))
    with pytest.raises(BmctlError, match=r"etcd@sha256:0{64} is not on registry"):
        build_with(upstream, tmp_path, output, release_file=release_file)
    assert_nothing_left(tmp_path, output)

    data["images"]["etcd"] = RELEASE.images["etcd"]
    data["binaries"]["cni-plugins"]["install"]["wireguard"] = "/opt/cni/bin/wireguard"
    release_file.write_text(yaml.safe_dump(data))
    with pytest.raises(BmctlError, match=r"binaries\.cni-plugins\.install: cni-plugins-linux-amd64-v\S+\.tgz \(https:"
                                         r"\S+\) has no member wireguard \(it has LICENSE, README\.md, bandwidth"):
        build_with(upstream, tmp_path, output, release_file=release_file)
    assert_nothing_left(tmp_path, output)


def test_releases_that_cannot_be_built_are_refused(tmp_path):
    with pytest.raises(BmctlError) as err:
        build.build_official("v1.99.0", tmp_path / "b.tar")
    assert "bmctl has no release for Kubernetes 'v1.99.0' (it has v1.34.2)" in err.value.message
    assert "pass --release FILE" in err.value.fix
    with pytest.raises(BmctlError, match="no release for Kubernetes '../v1.34.2'"):
        build.build_official("../v1.34.2", tmp_path / "b.tar")
    data = yaml.safe_load((Path(build.__file__).parent / f"{VERSION}.yaml").read_text())
    release_file = tmp_path / "release.yaml"
    release_file.write_text(yaml.safe_dump(data))
    with pytest.raises(BmctlError, match=rf"is for Kubernetes {VERSION}, not v1\.35\.0"):
        build.build_official("v1.35.0", tmp_path / "b.tar", release_file=release_file)
    images_only = {k: v for k, v in data.items() if k != "binaries"}
    release_file.write_text(yaml.safe_dump(images_only))
    with pytest.raises(BmctlError, match="binaries: no part kubelet, kubeadm, crictl, containerd, runc, cni-plugins"):
        build.build_official(VERSION, tmp_path / "b.tar", release_file=release_file)
    del data["binaries"]["runc"]["checksumUrl"]
    release_file.write_text(yaml.safe_dump(data))
    with pytest.raises(BmctlError, match="binaries: no url and checksumUrl for runc"):
        build.build_official(VERSION, tmp_path / "b.tar", release_file=release_file)
    with pytest.raises(BmctlError, match="--mirror 'mirror.example' is not an http"):
        build.build_official(VERSION, tmp_path / "b.tar", mirror="mirror.example")
    assert [p.name for p in tmp_path.iterdir()] == ["release.yaml"]


def test_mirror_rewrites_every_url():
    mirror = "http://127.0.0.1:8080/artefacts/"
    urls = [u for p in RELEASE.binaries.values() for u in (p.url, p.checksum_url)]
    assert len(urls) == 2 * len(RELEASE.binaries)
    for url in urls:
        assert url.startswith("https://")
        assert build.mirrored(url, mirror) == "http://127.0.0.1:8080/artefacts/" + url[len("https://"):]
        assert build.mirrored(url, None) == url
    assert build.mirrored("https://dl.k8s.io/a/b?x=1", "http://m") == "http://m/dl.k8s.io/a/b?x=1"


def test_checksum_files_in_every_shape():
    h = {n: sha256(n.encode()) for n in ("kubelet", "c.tar.gz", "runc.amd64", "runc.arm64")}
    assert build.parse_checksum(f"{h['kubelet']}\n", "kubelet", "u") == h["kubelet"]
    assert build.parse_checksum(h["kubelet"].upper(), "kubelet", "u") == h["kubelet"]
    assert build.parse_checksum(f"{h['c.tar.gz']}  c.tar.gz\n", "c.tar.gz", "u") == h["c.tar.gz"]
    runc = f"{h['runc.arm64']} *runc.arm64\n{h['runc.amd64']}  runc.amd64\n"
    assert build.parse_checksum(runc, "runc.amd64", "u") == h["runc.amd64"]
    assert build.parse_checksum(runc, "runc.arm64", "u") == h["runc.arm64"]
    assert build.parse_checksum(f"{h['runc.amd64']}  ./dist/runc.amd64\n", "runc.amd64", "u") == h["runc.amd64"]
    assert build.parse_checksum(f"SHA256 (c.tar.gz) = {h['c.tar.gz']}\n", "c.tar.gz", "u") == h["c.tar.gz"]
    with pytest.raises(BmctlError, match="URL has no sha256 for runc.386"):
        build.parse_checksum(runc, "runc.386", "URL")
    with pytest.raises(BmctlError, match="has no sha256 for c.tar.gz"):
        build.parse_checksum(f"{h['c.tar.gz']}  other.tar.gz\n", "c.tar.gz", "u")
    with pytest.raises(BmctlError, match="has no sha256"):
        build.parse_checksum("<html>Not Found</html>\n", "kubelet", "u")
    with pytest.raises(BmctlError, match="gives 2 different sha256 for x"):
        build.parse_checksum(f"{h['runc.amd64']}  x\n{h['runc.arm64']}  x\n", "x", "u")


def test_build_lab_links_the_labs_bundle(tmp_path, monkeypatch):
    from bmctl.lab import release as lab_release

    cached = tmp_path / "cache" / "lab-0123.tar"
    cached.parent.mkdir()
    cached.write_bytes(b"a bundle")
    monkeypatch.setattr(lab_release, "bundle", lambda say=print, built=None: cached)
    out = build.build_lab(tmp_path / "out" / "lab.tar", say=lambda m: None)
    assert out.read_bytes() == b"a bundle" and out.stat().st_ino == cached.stat().st_ino
    (tmp_path / "out" / "old.tar").write_bytes(b"old")
    out = build.build_lab(tmp_path / "out" / "old.tar", say=lambda m: None)
    assert out.read_bytes() == b"a bundle"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lab.tar", "old.tar"]
