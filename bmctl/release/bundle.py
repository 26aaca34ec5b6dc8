"""The offline bundle: one file with everything a cluster's nodes need and no network to fetch it.

A bundle is an uncompressed tar file:

    bundle.yaml            what it is: the Kubernetes version, the release (every image reference,
                           with digests, and the node software's parts and versions), and `software`:
                           every file node-software.tar.gz installs (path on the node -> sha256, size)
    node-software.tar.gz   the node software laid out by path on the node (usr/local/bin/kubelet, ...):
                           the one file bmctl uploads to each node, checked there against its sha256
    images/                every image as one OCI image layout (index.json names each by reference)
    images.txt             the image list, one reference per line
    manifests/             the upstream manifests the release pins (`manifests:`: MetalLB's, flannel's,
                           Gateway API's CRDs), each as manifests/MODULE@VERSION/PATH, the file its Go
                           module holds; bmctl/release/upstream.py reads them from here first and checks
                           each against the release's sha256 (a bundle without them, built before they
                           were added, still works: bmctl then looks in its cache and the Go module cache)
    SHA256SUMS             sha256 of every other member (`sha256sum -c` format)

`Bundle.open(path)` reads bundle.yaml; `verify()` checks every member against SHA256SUMS, and the
manifest's own record of the node archive, before anything is sent to a node. A bundle has no
signature: SHA256SUMS catches corruption (a truncated copy, a bad disk), not a forger.

Built by `bmctl bundle build` (bmctl/release/build.py): from upstream's release artefacts and
registries on a workstation with internet access, or by the lab (bmctl/lab/release.py) from the
binaries and images built here.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml

from bmctl.errors import BmctlError
from bmctl.release import Release, _check

FORMAT = 1
MANIFEST = "bundle.yaml"
NODE_ARCHIVE = "node-software.tar.gz"
IMAGES = "images/"
IMAGE_LIST = "images.txt"
MANIFESTS = "manifests/"
SUMS = "SHA256SUMS"
CHUNK = 1 << 20


@dataclass(frozen=True)
class SoftwareFile:
    path: str       # on the node
    sha256: str
    size: int
    part: str       # kubelet, containerd, cni-plugins, ...
    mode: int = 0o755


def _sha256_file(f) -> tuple[str, int]:
    digest, n = hashlib.sha256(), 0
    while chunk := f.read(CHUNK):
        digest.update(chunk)
        n += len(chunk)
    return digest.hexdigest(), n


class Bundle:
    """An offline bundle on the workstation."""

    def __init__(self, path: Path, manifest: dict, members: dict[str, tarfile.TarInfo]) -> None:
        self.path = path
        self.manifest = manifest
        self.members = members
        self.release: Release = _check(manifest.get("release"), f"bundle {path.name}")
        self.software = {p: SoftwareFile(p, v["sha256"], int(v["size"]), v["part"], int(str(v.get("mode", "755")), 8))
                         for p, v in manifest.get("software", {}).items()}
        archive = manifest.get("nodeArchive") or {}
        self.archive_sha256: str = archive.get("sha256", "")
        self.archive_size: int = int(archive.get("size", 0))

    # -- reading --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        path = Path(path).expanduser()
        where = f"bundle {path}"
        try:
            with tarfile.open(path, "r:") as tar:
                members = {m.name: m for m in tar.getmembers()}
                if MANIFEST not in members:
                    raise BmctlError(f"{where}: no {MANIFEST} in it: not a bmctl bundle.",
                                     "build one with `bmctl bundle build`.")
                manifest = yaml.safe_load(tar.extractfile(members[MANIFEST]).read())
        except OSError as exc:
            raise BmctlError(f"{where}: {exc.strerror or exc}.", "check the header's bundlePath.") from None
        except (tarfile.TarError, EOFError) as exc:
            raise BmctlError(f"{where}: not a readable tar file ({exc}); the copy may be truncated.",
                             "copy the bundle again (compare its size and sha256 with the original).") from None
        except yaml.YAMLError:
            raise BmctlError(f"{where}: {MANIFEST} is not valid YAML; the bundle is corrupted.",
                             "copy the bundle again or rebuild it with `bmctl bundle build`.") from None
        if not isinstance(manifest, dict) or manifest.get("bundle") != FORMAT:
            raise BmctlError(f"{where}: format {manifest.get('bundle') if isinstance(manifest, dict) else '?'!r} "
                             f"is not bmctl's bundle format {FORMAT}.", "rebuild it with this bmctl's `bundle build`.")
        return cls(path, manifest, members)

    @property
    def kubernetes(self) -> str:
        return self.release.kubernetes

    def verify(self, say: Callable[[str], None] = lambda m: None) -> None:
        """Check every member against SHA256SUMS (and the node archive against the manifest).

        Raises BmctlError naming the first member that does not match; reads the whole file."""
        where = f"bundle {self.path}"
        if SUMS not in self.members:
            raise BmctlError(f"{where}: no {SUMS}: the bundle is incomplete.", "copy it again or rebuild it.")
        start = time.monotonic()
        with tarfile.open(self.path, "r:") as tar:
            sums: dict[str, str] = {}
            for line in tar.extractfile(self.members[SUMS]).read().decode().splitlines():
                digest, _, name = line.partition("  ")
                sums[name] = digest
            files = {n: m for n, m in self.members.items() if m.isfile() and n != SUMS}
            unlisted = sorted(set(files) - set(sums))
            missing = sorted(set(sums) - set(files))
            if unlisted or missing:
                raise BmctlError(f"{where}: {'members not in ' + SUMS + ': ' + ', '.join(unlisted[:3]) if unlisted else ''}"
                                 f"{'; ' if unlisted and missing else ''}"
                                 f"{'missing members: ' + ', '.join(missing[:3]) if missing else ''}; "
                                 "the bundle is corrupted or was changed.",
                                 "copy it again, or rebuild it with `bmctl bundle build`.")
            for name, member in files.items():
                digest, _ = _sha256_file(tar.extractfile(member))
                if digest != sums[name]:
                    raise BmctlError(f"{where}: {name} has sha256 {digest[:16]}..., {SUMS} says {sums[name][:16]}...; "
                                     "the bundle is corrupted (nothing was sent to any node).",
                                     "copy the bundle again (or rebuild it with `bmctl bundle build`) and re-run.")
            if sums.get(NODE_ARCHIVE) != self.archive_sha256:
                raise BmctlError(f"{where}: {NODE_ARCHIVE} does not match {MANIFEST}; the bundle is corrupted.",
                                 "copy it again, or rebuild it with `bmctl bundle build`.")
        say(f"bundle {self.path.name}: {len(files)} files verified in {time.monotonic() - start:.1f} s")

    def open_member(self, name: str):
        """A file object for one member (the caller closes it); the tar stays open while it is read."""
        tar = tarfile.open(self.path, "r:")
        f = tar.extractfile(self.members[name])
        if f is None:
            tar.close()
            raise KeyError(name)
        return _Member(tar, f)

    def node_archive(self):
        return self.open_member(NODE_ARCHIVE)

    def images(self) -> list[str]:
        return list(self.release.images.values())


class _Member(io.RawIOBase):
    def __init__(self, tar: tarfile.TarFile, f) -> None:
        self._tar, self._f = tar, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        b[:len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        if not self.closed:
            self._tar.close()
        super().close()


def load_release(path: str | Path) -> Release:
    """The release a bundle carries (reads bundle.yaml only)."""
    return Bundle.open(path).release


# -- writing ------------------------------------------------------------------------------------
class _Hashing:
    """A file object that hashes what is read through it."""

    def __init__(self, f) -> None:
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


def _node_archive(files: dict[str, tuple[Path, str]], out: Path) -> dict[str, dict]:
    """node-software.tar.gz from {path on node: (local file, part)}; the manifest's `software`."""
    software: dict[str, dict] = {}
    # mtime 0 and a fixed gzip header: the same inputs give the same archive (and sha256)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for node_path in sorted(files):
            local, part = files[node_path]
            info = tarfile.TarInfo(node_path.lstrip("/"))
            info.size = os.path.getsize(local)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o755, 0, 0, 0, "root", "root"
            with open(local, "rb") as f:
                hashing = _Hashing(f)
                tar.addfile(info, hashing)  # one read of the file: archived and hashed
            software[node_path] = {"sha256": hashing.digest.hexdigest(), "size": hashing.size, "part": part,
                                   "mode": "755"}
    return software


def merge_layouts(layouts: Iterable[tuple[str, Path]], out: Path) -> None:
    """One OCI image layout at `out` holding every (reference, single-image layout) given, each blob
    checked on the way, named as containerd names images (oci.LayoutWriter)."""
    from bmctl.release import oci
    with oci.LayoutWriter(out) as writer:
        for reference, layout in layouts:
            source = oci.DirLayout(layout)
            oci.copy_image(source, source.index()["manifests"][0], writer, reference)


def write(path: Path, release: dict, software: dict[str, tuple[Path, str]], layout: Path, source: str,
          say: Callable[[str], None] = lambda m: None, manifests: dict[str, Path] | None = None) -> Path:
    """Write a bundle: `release` (a release file's content, images with digests), `software` (path on
    the node -> (local file, part)), `layout` (one OCI layout holding every image of the release),
    `manifests` (MODULE@VERSION/PATH -> local file: the upstream manifests the release pins, checked
    by the caller). Written next to `path` and renamed into place: a killed build leaves no half bundle."""
    path = Path(path)
    release_obj = _check(release, f"the release of bundle {path}")  # refuse a bad release early
    missing = [ref for ref in release_obj.images.values() if "@sha256:" not in ref]
    if missing:
        raise BmctlError(f"bundle {path}: {missing[0]} has no digest.", "pin every image by digest in the bundle.")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".bundle-") as tmp:
        work = Path(tmp)
        archive = work / NODE_ARCHIVE
        files = _node_archive(software, archive)
        say(f"node software: {len(files)} files, {archive.stat().st_size / 1e6:.0f} MB compressed")
        with open(archive, "rb") as f:
            archive_sha, archive_size = _sha256_file(f)
        manifest = {"bundle": FORMAT, "kubernetes": release["kubernetes"], "platform": "linux/amd64",
                    "source": source, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "release": release, "software": files,
                    "nodeArchive": {"name": NODE_ARCHIVE, "sha256": archive_sha, "size": archive_size}}
        (work / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        (work / IMAGE_LIST).write_text("".join(f"{ref}\n" for ref in release["images"].values()))
        members = [(MANIFEST, work / MANIFEST), (IMAGE_LIST, work / IMAGE_LIST), (NODE_ARCHIVE, archive)]
        for p in sorted(Path(layout).rglob("*")):
            if p.is_file():
                members.append((IMAGES + str(p.relative_to(layout)), p))
        members += [(MANIFESTS + name, local) for name, local in sorted((manifests or {}).items())]
        sums = []
        part = work / "bundle.tar"
        with tarfile.open(part, "w", format=tarfile.GNU_FORMAT) as tar:
            for name, local in members:
                if name == NODE_ARCHIVE:
                    digest = archive_sha
                else:
                    with open(local, "rb") as f:
                        digest = _sha256_file(f)[0]
                sums.append(f"{digest}  {name}\n")
                tar.add(local, arcname=name, recursive=False, filter=_owned_by_root)
            (work / SUMS).write_text("".join(sums))
            tar.add(work / SUMS, arcname=SUMS, filter=_owned_by_root)
        os.replace(part, path)
    say(f"bundle {path}: {path.stat().st_size / 1e6:.0f} MB, {len(release['images'])} images, "
        f"{len(manifests or {})} upstream manifest files, written in {time.monotonic() - start:.0f} s")
    return path


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info
