"""What a Kubernetes version means for bmctl: the Kubernetes version it installs and the image of
every pod it runs (name -> reference). The one place where versions and image references live.

A real cluster gets the release bmctl ships (bmctl/release/v1.34.2.yaml: upstream's references);
the lab gets the one it built (bmctl/lab/release.py), named by the config header's `releaseFile`.
Both flow through the same code: kubeadm's image settings, the pod specs, containerd's sandbox image.
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
class Release:
    kubernetes: str
    images: dict[str, str]
    source: str = "bmctl's own"
    binaries: dict[str, Part] = field(default_factory=dict)

    def image(self, name: str) -> str:
        return self.images[name]

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
    return Release(version, images, source, _parts(data.get("binaries"), source))


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


def default() -> Release:
    text = resources.files("bmctl.release").joinpath(f"{DEFAULT_VERSION}.yaml").read_text()
    return _check(yaml.safe_load(text), f"bmctl's release {DEFAULT_VERSION}")


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
        name = getattr(config.header, key)
        if name is None:
            continue
        path = Path(name).expanduser()
        if not path.is_absolute() and config.path:
            path = Path(config.path).resolve().parent / path
        return _cached(str(path), key == "bundlePath")
    return _cached(None)


@functools.lru_cache(maxsize=8)
def _cached(path: str | None, bundle: bool = False) -> Release:
    if bundle:
        from bmctl.release.bundle import load_release
        return load_release(path)
    return load(path)
