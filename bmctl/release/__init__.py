"""What a Kubernetes version means for bmctl: the Kubernetes version it installs and the image of
every pod it runs (name -> reference). The one place where versions and image references live.

A real cluster gets the release bmctl ships (bmctl/release/v1.34.2.yaml: upstream's references);
the lab gets the one it built (bmctl/lab/release.py), named by the config header's `releaseFile`.
Both flow through the same code: kubeadm's image settings, the pod specs, containerd's sandbox image.

A release also pins the upstream manifests bmctl deploys (`manifests:`: MetalLB's, flannel's, Gateway
API's CRDs): for each its Go module, version, and every file's path in the module and sha256. None of
them is kept in this repository: bmctl/release/upstream.py gets them (bundle, cache, Go module cache or
module proxy) and checks each against its sha256. A release file without `manifests:` (the lab's) uses
bmctl's own pins.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from bmctl.errors import BmctlError

DEFAULT_VERSION = "v1.34.2"
# Every image a release names (bmctl checks a release file has each one).
IMAGES = ("pause", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns",
          "flannel", "flannel-cni-plugin", "metallb-controller", "metallb-speaker", "haproxy", "keepalived")
# Images known to lack what bmctl's files need: reference -> why (warned about by create cluster).
KNOWN_SHORT = {
    "docker.io/osixia/keepalived:2.0.20": "its Keepalived 2.0.20 does not know max_auto_priority and the per-instance "
    "check_unicast_src that bmctl writes (both 2.1+): it logs \"Unknown keyword\" and runs without them, so "
    "unicast adverts are accepted from any source",
}
_REF = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9.:_/-]*?)/(?P<name>[a-z0-9._-]+):(?P<tag>[\w][\w.-]{0,127})"
                  r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


# The node software a release installs (see `binaries:` in v1.34.2.yaml); kubectl is optional.
PARTS = ("kubelet", "kubeadm", "crictl", "containerd", "runc", "cni-plugins")
NODE_PATH = re.compile(r"^/(usr/local/(s?bin)|opt/cni/bin)/[A-Za-z0-9._-]+$")

# The upstream manifests bmctl deploys (see `manifests:` in v1.34.2.yaml).
MANIFESTS = ("metallb-native", "metallb-frr", "flannel", "gateway-api")
_MODULE = re.compile(r"^[a-z0-9][a-z0-9.-]*\.[a-z]+(/[A-Za-z0-9._~-]+)*$")
_MODULE_VERSION = re.compile(r"^v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+incompatible)?$")
_MODULE_PATH = re.compile(r"^(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9._~+-]+(/[A-Za-z0-9._~+-]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Part:
    """One piece of node software: its version, where upstream publishes it (with its checksum), and
    `install`: file of the download (or member of its archive) -> path on the node."""
    name: str
    version: str
    install: dict[str, str]
    url: str | None = None
    checksum_url: str | None = None


@dataclass(frozen=True)
class UpstreamFile:
    """One file of an upstream Go module: its path inside the module and its sha256."""
    path: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """An upstream manifest bmctl deploys: Go module, version and its file(s), in apply order."""
    name: str
    module: str
    version: str
    files: tuple[UpstreamFile, ...]

    def where(self, file: UpstreamFile) -> str:
        """MODULE@VERSION/PATH, as the module's zip names the file."""
        return f"{self.module}@{self.version}/{file.path}"

    def data(self) -> dict:
        """The release file's shape of this entry."""
        return {"module": self.module, "version": self.version,
                "files": [{"path": f.path, "sha256": f.sha256} for f in self.files]}


@dataclass(frozen=True)
class Release:
    kubernetes: str
    images: dict[str, str]
    source: str = "bmctl's own"
    binaries: dict[str, Part] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)

    def image(self, name: str) -> str:
        return self.images[name]

    def manifest(self, name: str) -> Manifest:
        """The pinned upstream manifest `name` (one of MANIFESTS): this release's, else bmctl's own."""
        found = self.manifests.get(name) or _own().manifests.get(name)
        if found is None:
            raise BmctlError(f"{self.source}: manifests: no pin for {name}.",
                             f"pin {name} as bmctl/release/{DEFAULT_VERSION}.yaml does.")
        return found

    def all_manifests(self) -> list[Manifest]:
        """Every manifest bmctl deploys, as this release pins it (bmctl's own pins for the others)."""
        return [self.manifest(name) for name in MANIFESTS]

    def parts(self, name: str) -> tuple[str, str, str, str | None]:
        """(repository, name, tag, digest) of an image reference."""
        m = _REF.match(self.images[name])
        assert m, self.images[name]  # checked by load()
        return m["repo"], m["name"], m["tag"], m["digest"]

    @property
    def image_repository(self) -> str:
        """kubeadm's imageRepository: where kube-apiserver (and its siblings) live."""
        return self.parts("kube-apiserver")[0]

    def kubeadm_image(self, name: str) -> tuple[str, str]:
        """kubeadm's (imageRepository, imageTag) for etcd or CoreDNS: kubeadm appends the image
        name (`etcd`, `coredns`) to the repository itself."""
        repo, _, tag, digest = self.parts(name)
        return repo, tag + (f"@{digest}" if digest else "")


def shortcomings(release: Release) -> list[tuple[str, str]]:
    """(image name, why) for each image of the release known to fall short."""
    return [(name, KNOWN_SHORT[ref.split("@")[0]]) for name, ref in release.images.items()
            if ref.split("@")[0] in KNOWN_SHORT]


def _check(data: object, source: str) -> Release:
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise BmctlError(f"{source}: not a bmctl release file (no `images` mapping).",
                         "write `kubernetes: vX.Y.Z` and `images: {NAME: REFERENCE, ...}`.")
    version = data.get("kubernetes")
    if not isinstance(version, str) or not re.fullmatch(r"v\d+\.\d+\.\d+", version):
        raise BmctlError(f"{source}: kubernetes: {version!r} is not a Kubernetes version.",
                         f"write it as {DEFAULT_VERSION}.")
    images = {str(k): v for k, v in data["images"].items()}
    missing = [n for n in IMAGES if n not in images]
    if missing:
        raise BmctlError(f"{source}: images: no reference for {', '.join(missing)}.",
                         "name every image of the release (see bmctl/release/v1.34.2.yaml).")
    bad = [f"{n}: {r!r}" for n, r in images.items() if not isinstance(r, str) or not _REF.match(r)]
    if bad:
        raise BmctlError(f"{source}: images: {'; '.join(bad)} is not an image reference REPOSITORY/NAME:TAG"
                         "[@sha256:DIGEST].", "write each one as upstream names it, e.g. registry.k8s.io/pause:3.10.1.")
    for name in ("kube-controller-manager", "kube-scheduler", "kube-proxy"):
        repo, image, tag, _ = Release(version, images).parts(name)
        ref_repo, _, ref_tag, _ = Release(version, images).parts("kube-apiserver")
        if repo != ref_repo or image != name or tag != version or ref_tag != version:
            raise BmctlError(f"{source}: images: kubeadm runs kube-apiserver, {name} ... as "
                             f"IMAGE_REPOSITORY/{name}:{version}; {images[name]} does not fit.",
                             "keep the control-plane images in one repository, under their own names, tagged "
                             "with the release's Kubernetes version.")
    return Release(version, images, source, _parts(data.get("binaries"), source),
                   _manifests(data.get("manifests"), source))


def _parts(data: object, source: str) -> dict[str, Part]:
    """The `binaries:` section (optional: a release file that only names images installs nothing)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BmctlError(f"{source}: binaries: not a mapping of part name -> settings.",
                         "see bmctl/release/v1.34.2.yaml for the shape.")
    out = {}
    for name, spec in data.items():
        where = f"{source}: binaries.{name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("version"), str) \
                or not isinstance(spec.get("install"), dict) or not spec["install"]:
            raise BmctlError(f"{where}: needs `version` and `install` (file -> path on the node).",
                             "see bmctl/release/v1.34.2.yaml for the shape.")
        bad = [p for p in spec["install"].values() if not isinstance(p, str) or not NODE_PATH.match(p)]
        if bad:
            raise BmctlError(f"{where}.install: {bad[0]!r} is not a path bmctl installs to.",
                             "install into /usr/local/bin, /usr/local/sbin or /opt/cni/bin.")
        for key in ("url", "checksumUrl"):
            if spec.get(key) is not None and not str(spec[key]).startswith(("https://", "http://")):
                raise BmctlError(f"{where}.{key}: {spec[key]!r} is not an http(s) URL.", "write the full URL.")
        out[str(name)] = Part(str(name), spec["version"], {str(k): v for k, v in spec["install"].items()},
                              spec.get("url"), spec.get("checksumUrl"))
    return out


def _manifests(data: object, source: str) -> dict[str, Manifest]:
    """The `manifests:` section (optional: bmctl's own pins stand in for a missing one)."""
    shape = f"see bmctl/release/{DEFAULT_VERSION}.yaml for the shape."
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BmctlError(f"{source}: manifests: not a mapping of manifest name -> module, version and files.", shape)
    out = {}
    for name, spec in data.items():
        where = f"{source}: manifests.{name}"
        if name not in MANIFESTS:
            raise BmctlError(f"{where}: bmctl deploys no manifest of that name (it deploys {', '.join(MANIFESTS)}).",
                             "remove it, or correct its name.")
        if not isinstance(spec, dict) or not isinstance(spec.get("files"), list) or not spec["files"]:
            raise BmctlError(f"{where}: needs `module`, `version` and `files` (a list of path and sha256).", shape)
        module, version = spec.get("module"), spec.get("version")
        if not isinstance(module, str) or not _MODULE.match(module):
            raise BmctlError(f"{where}.module: {module!r} is not a Go module path.",
                             "write it as the module's go.mod names it, e.g. go.universe.tf/metallb.")
        if not isinstance(version, str) or not _MODULE_VERSION.match(version):
            raise BmctlError(f"{where}.version: {version!r} is not a Go module version.",
                             "write the release's tag, e.g. v0.15.2.")
        files = []
        for i, item in enumerate(spec["files"]):
            path = item.get("path") if isinstance(item, dict) else None
            sha = item.get("sha256") if isinstance(item, dict) else None
            if not isinstance(path, str) or not _MODULE_PATH.match(path):
                raise BmctlError(f"{where}.files[{i}].path: {path!r} is not a path inside the module.",
                                 "write it relative to the module's root, e.g. config/manifests/metallb-native.yaml.")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise BmctlError(f"{where}.files[{i}].sha256: {sha!r} is not a sha256 (64 lowercase hex digits).",
                                 f"write the file's sha256 (`sha256sum {path.rsplit('/', 1)[-1]}`).")
            files.append(UpstreamFile(path, sha))
        if len({f.path for f in files}) != len(files):
            raise BmctlError(f"{where}.files: a path is listed twice.", "list each file once.")
        out[str(name)] = Manifest(str(name), module, version, tuple(files))
    return out


def default() -> Release:
    text = resources.files("bmctl.release").joinpath(f"{DEFAULT_VERSION}.yaml").read_text()
    return _check(yaml.safe_load(text), f"bmctl's release {DEFAULT_VERSION}")


# bmctl's own release, read once: the pins a release without `manifests:` uses (wraps default()
# itself, so a test that replaces default() does not change them).
_own = functools.lru_cache(maxsize=1)(default)


def load(path: str | Path | None) -> Release:
    """The release a config names (`releaseFile` in its header), or bmctl's own."""
    if path is None:
        return default()
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BmctlError(f"release file {path}: {exc.strerror}.", "check the header's releaseFile path.") from None
    except yaml.YAMLError as exc:
        raise BmctlError(f"release file {path}: not valid YAML ({exc}).", "fix the file.") from None
    return _check(data, f"release file {path}")


def of(config) -> Release:
    """The release a loaded config uses: its header's releaseFile, else the release inside its
    bundle (bundlePath), else bmctl's own; paths relative to the config file."""
    for key in ("releaseFile", "bundlePath"):
        path = _header_path(config, key)
        if path is not None:
            return _cached(str(path), key == "bundlePath")
    return _cached(None)


def bundle_path(config) -> Path | None:
    """The bundle a loaded config names (header `bundlePath`, relative to the config file), or None."""
    return _header_path(config, "bundlePath")


def _header_path(config, key: str) -> Path | None:
    name = getattr(config.header, key)
    if name is None:
        return None
    path = Path(name).expanduser()
    if not path.is_absolute() and config.path:
        path = Path(config.path).resolve().parent / path
    return path


@functools.lru_cache(maxsize=8)
def _cached(path: str | None, bundle: bool = False) -> Release:
    if bundle:
        from bmctl.release.bundle import load_release
        return load_release(path)
    return load(path)
