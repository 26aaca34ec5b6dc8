"""`bmctl bundle build`: the offline bundle for a Kubernetes version (bmctl/release/build.py), and
`bmctl bundle fetch-manifests`: the upstream manifests a release pins, into bmctl's cache
(bmctl/release/upstream.py)."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from rich.markup import escape

from bmctl.errors import BmctlError
from bmctl.output import out
from bmctl import release as releases
from bmctl.release import build as builder
from bmctl.release import upstream
from bmctl.release.bundle import MANIFESTS, Bundle

SOURCES = ("official", "lab")


def default_output(kubernetes: str) -> Path:
    return Path(f"bmctl-bundle-{kubernetes}-linux-amd64.tar")


def _say(message: str) -> None:
    out.print(escape(message))


def build(kubernetes: str, output: Path | None, source: str = "official", release_file: Path | None = None,
          mirror: str | None = None, registry_for=None) -> Path:
    """Build the bundle for KUBERNETES from upstream (`official`: release artefacts and registries, or
    MIRROR for the artefacts) or take the lab's (`lab`); print where it is and what it holds."""
    if source not in SOURCES:
        raise BmctlError(f"--from {source!r} is not a bundle source.", "pass --from official or --from lab.")
    start = time.monotonic()
    path = Path(output).expanduser() if output else default_output(kubernetes)
    if source == "lab":
        from bmctl.lab import binaries

        if release_file is not None or mirror is not None:
            raise BmctlError("--release and --mirror are for --from official; the lab's bundle holds what the lab "
                             "built.", "drop them, or pass --from official.")
        if kubernetes != binaries.KUBERNETES:
            raise BmctlError(f"the lab builds Kubernetes {binaries.KUBERNETES}, not {kubernetes}.",
                             f"pass --kubernetes {binaries.KUBERNETES} with --from lab, or --from official.")
        _say(f"Taking the lab's bundle (Kubernetes {kubernetes}) to {path}.")
        builder.build_lab(path, say=_say)
    else:
        _say(f"Building the bundle of Kubernetes {kubernetes} from "
             f"{'mirror ' + mirror if mirror else 'upstream'} into {path}.")
        builder.build_official(kubernetes, path, release_file=release_file, mirror=mirror,
                               registry_for=registry_for, say=_say)
    summary(path, time.monotonic() - start)
    return path


def summary(path: Path, seconds: float | None = None) -> None:
    """The bundle file's path, size and sha256, its images and its node software's versions."""
    bundle = Bundle.open(path)
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    release = bundle.release
    _say(f"Bundle {path.resolve()}" + (f" (built in {seconds:.0f} s)" if seconds is not None else "") + ":")
    _say(f"  size    {size / 1e6:.1f} MB ({size} bytes)")
    _say(f"  sha256  {sha.hexdigest()}")
    _say(f"  source  {bundle.manifest.get('source', '?')}")
    _say(f"  Kubernetes {release.kubernetes}; images ({len(release.images)}):")
    width = max(len(n) for n in release.images)
    for name, ref in release.images.items():
        _say(f"    {name:{width}}  {ref}")
    _say(f"  node software ({len(bundle.software)} files):")
    width = max((len(n) for n in release.binaries), default=0)
    for name, part in release.binaries.items():
        files = sorted(p.rsplit("/", 1)[-1] for p, f in bundle.software.items() if f.part == name)
        _say(f"    {name:{width}}  {part.version:10}  {', '.join(files)}")
    held = sum(1 for name in bundle.members if name.startswith(MANIFESTS))
    _say(f"  upstream manifests ({held} files):")
    pinned = release.all_manifests()
    width = max(len(m.name) for m in pinned)
    for manifest in pinned:
        _say(f"    {manifest.name:{width}}  {manifest.version:10}  {manifest.module}, {len(manifest.files)} file(s)")


def fetch_manifests(release_file: Path | None = None) -> list[upstream.Fetched]:
    """Every upstream manifest the release pins (bmctl's own, or RELEASE_FILE's) into bmctl's cache,
    from the Go module cache or the Go module proxy (GOPROXY), each checked against its sha256."""
    release = releases.load(release_file)
    _say(f"Fetching the upstream manifests that {release.source} pins into {upstream.cache_dir()}.")
    fetched = upstream.fetch(release, say=_say)
    width = max(len(f.manifest.name) for f in fetched)
    for f in fetched:
        _say(f"  {f.manifest.name:{width}}  {f.manifest.module}@{f.manifest.version}  {f.file.path}  "
             f"sha256 {f.file.sha256[:16]}... ({f.source})")
    _say(f"{len(fetched)} files in {upstream.cache_dir()}: copy that folder to the same path on a workstation "
         "without access to a module proxy (or point BMCTL_UPSTREAM_CACHE at it).")
    return fetched
