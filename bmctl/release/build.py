"""`bmctl bundle build`: an offline bundle (bmctl/release/bundle.py) made on a workstation with
internet access, from what upstream publishes, or copied from the lab's.

build_official(kubernetes, output, ...):
    1. the release: --release FILE, or bmctl's own for that Kubernetes version (bmctl/release/vX.Y.Z.yaml);
       its `binaries:` section names, for every part, the URL of the download and of its checksum
    2. every part downloaded (4 at a time) into a work dir, its sha256 checked against the checksum its
       project publishes next to it (a bare digest, `HEX  FILE`, or a list of such lines), then the
       files named in `install` taken from it (the download itself, or members of its .tar.gz/.tgz)
    3. every image of the release pulled for linux/amd64 into one OCI layout (bmctl/release/oci.py,
       each blob checked against its digest); the bundle's release pins each one by the digest pulled
       (a digest the release already pinned is checked by the pull: an image index's own digest
       before the platform's manifest is chosen)
    4. the upstream manifests the release pins (`manifests:`), got as bmctl/release/upstream.py gets
       them (its cache, the Go module cache, else the Go module proxy: GOPROXY, not --mirror) and
       checked against their sha256; the bundle's release carries every pin
    5. bundle.write(): the bundle is written next to `output` and renamed into place, so a failed or
       killed build leaves no half bundle; the work dir is removed in every case (a process killed
       with SIGKILL leaves its .bmctl-bundle-build-* folder next to the output)

`mirror` (http://HOST[:PORT][/PATH]) fetches every https://HOST/PATH of the release as
{mirror}/HOST/PATH: a site's artefact mirror laid out like dl.k8s.io and github.com.

build_lab(output): the lab's bundle (bmctl/lab/release.py, with the same upstream manifests),
hard-linked or copied to `output`.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from bmctl import __version__
from bmctl.errors import BmctlError
from bmctl.release import PARTS, Part, Release, _check, load
from bmctl.release import bundle as bundles
from bmctl.release import oci, upstream

PLATFORM = "linux/amd64"
CHUNK = 1 << 20
WORKERS = 4
TIMEOUT = 60
MAX_CHECKSUM_FILE = 1 << 20
_VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_BSD = re.compile(r"^SHA256 \((?P<name>.+)\) = (?P<hex>[0-9a-fA-F]{64})$")

Say = Callable[[str], None]


# -- the release --------------------------------------------------------------------------------

def versions() -> list[str]:
    """The Kubernetes versions bmctl ships a release for."""
    names = [p.name for p in resources.files("bmctl.release").iterdir()]
    found = [n[:-len(".yaml")] for n in names if n.endswith(".yaml") and _VERSION.match(n[:-len(".yaml")])]
    return sorted(found, key=lambda v: tuple(int(x) for x in v[1:].split(".")))


def release_for(kubernetes: str, release_file: Path | None = None) -> tuple[dict, Release]:
    """(the release file's content, the checked Release): `release_file`, else bmctl's own for
    `kubernetes`; the release must be for `kubernetes` and name where each part is downloaded."""
    if release_file is not None:
        release_file = Path(release_file).expanduser()
        if not release_file.is_file():
            raise BmctlError(f"release file {release_file} does not exist.",
                             "pass --release with the path of a release file (see bmctl/release/v1.34.2.yaml).")
        release = load(release_file)
        data = yaml.safe_load(release_file.read_text())
        if release.kubernetes != kubernetes:
            raise BmctlError(f"release file {release_file} is for Kubernetes {release.kubernetes}, not {kubernetes}.",
                             f"pass --kubernetes {release.kubernetes}, or the release file for {kubernetes}.")
    else:
        have = versions()
        if not _VERSION.match(kubernetes) or kubernetes not in have:
            raise BmctlError(f"bmctl has no release for Kubernetes {kubernetes!r} (it has {', '.join(have)}).",
                             f"pick one of {', '.join(have)}, or pass --release FILE with a release for "
                             f"{kubernetes} (see bmctl/release/{have[-1]}.yaml for the shape).")
        text = resources.files("bmctl.release").joinpath(f"{kubernetes}.yaml").read_text()
        data = yaml.safe_load(text)
        release = _check(data, f"bmctl's release {kubernetes}")
    missing = [name for name in PARTS if name not in release.binaries]
    unplaced = [p.name for p in release.binaries.values() if not (p.url and p.checksum_url)]
    if missing or unplaced:
        what = "; ".join(x for x in (f"no part {', '.join(missing)}" if missing else "",
                                     f"no url and checksumUrl for {', '.join(unplaced)}" if unplaced else "") if x)
        raise BmctlError(f"{release.source}: binaries: {what}; bmctl bundle build downloads every part of the node "
                         f"software ({', '.join(PARTS)}) from where its project publishes it.",
                         "name each part's `version`, `url`, `checksumUrl` and `install` (see "
                         "bmctl/release/v1.34.2.yaml).")
    return data, release


# -- downloads ----------------------------------------------------------------------------------

def mirrored(url: str, mirror: str | None) -> str:
    """Where `url` is fetched: itself, or with a mirror {mirror}/HOST/PATH (https://dl.k8s.io/release/x
    -> http://127.0.0.1:8080/dl.k8s.io/release/x)."""
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _basename(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def download(url: str, dest: Path, mirror: str | None = None, say: Say = print, label: str = "") -> tuple[str, int]:
    """Stream `url` (through `mirror`) to `dest`: (sha256 hex, size); one progress line when done."""
    fetch = mirrored(url, mirror)
    request = urllib.request.Request(fetch, headers={"User-Agent": f"bmctl/{__version__}"})
    fix = (f"check that {mirror} serves {urllib.parse.urlsplit(url).netloc}{urllib.parse.urlsplit(url).path}"
           if mirror else "check this machine's internet access (proxy: https_proxy), or pass --mirror URL")
    start = time.monotonic()
    sha, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp, open(dest, "wb") as out:
            while chunk := resp.read(CHUNK):
                sha.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise BmctlError(f"download of {fetch} failed: {exc.code} {exc.reason}.", f"{fix}.") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise BmctlError(f"cannot download {fetch}: {reason}.", f"{fix}.") from None
    except (TimeoutError, socket.timeout):
        raise BmctlError(f"download of {fetch} stalled (nothing for {TIMEOUT} s).", f"{fix}, then run again.") \
            from None
    except (http.client.HTTPException, ssl.SSLError, ConnectionError) as exc:
        raise BmctlError(f"download of {fetch} broke off after {size} bytes ({type(exc).__name__}: {exc}).",
                         f"{fix}, then run again.") from None
    except OSError as exc:
        raise BmctlError(f"download of {fetch} to {dest}: {exc.strerror or exc}.",
                         f"check the free space and permissions of {dest.parent}.") from None
    seconds = time.monotonic() - start
    say(f"  {label + ': ' if label else ''}{_basename(url)} {size / 1e6:.1f} MB in {seconds:.1f} s")
    return sha.hexdigest(), size


def parse_checksum(text: str, filename: str, where: str) -> str:
    """The sha256 (lowercase hex) a checksum file gives for `filename`: a bare digest (dl.k8s.io's
    kubelet.sha256), `HEX  FILE` / `HEX *FILE` lines (sha256sum's output: containerd, CNI plugins,
    runc's list of several files, matched by basename) or BSD's `SHA256 (FILE) = HEX`."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) == 1 and _HEX.match(lines[0]):
        return lines[0].lower()
    found = []
    for line in lines:
        bsd = _BSD.match(line)
        if bsd:
            digest, name = bsd["hex"], bsd["name"]
        else:
            digest, _, name = line.partition(" ")
            name = name.strip()
            if name.startswith("*"):
                name = name[1:]
        if _HEX.match(digest) and name and name.replace("\\", "/").rsplit("/", 1)[-1] == filename:
            found.append(digest.lower())
    if not found:
        raise BmctlError(f"{where} has no sha256 for {filename}.",
                         "check the part's url and checksumUrl in the release (they must belong together).")
    if len(set(found)) > 1:
        raise BmctlError(f"{where} gives {len(set(found))} different sha256 for {filename}.",
                         "check the part's checksumUrl in the release.")
    return found[0]


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _take(part: Part, download_path: Path, dest_dir: Path) -> dict[str, tuple[Path, str]]:
    """The files `part.install` names, from its download: {path on node: (local file, part)}."""
    name = _basename(part.url)
    files: dict[str, tuple[Path, str]] = {}
    members: dict[str, tarfile.TarInfo] | None = None
    tar: tarfile.TarFile | None = None
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i, (key, node_path) in enumerate(sorted(part.install.items())):
            local = dest_dir / f"{i}-{node_path.rsplit('/', 1)[-1]}"
            if key == name:
                try:
                    os.link(download_path, local)
                except OSError:
                    shutil.copyfile(download_path, local)
            else:
                if tar is None:
                    if not re.search(r"\.(tar\.gz|tgz|tar)$", name) or not tarfile.is_tarfile(download_path):
                        raise BmctlError(f"binaries.{part.name}.install names {key}, but the download {name} "
                                         f"({part.url}) is neither {key} nor a .tar.gz/.tgz archive.",
                                         f"name the download itself ({name}) or a member of its archive.")
                    tar = tarfile.open(download_path, "r:*")
                    members = {_member_name(m.name): m for m in tar.getmembers()}
                assert members is not None
                member = members.get(_member_name(key))
                if member is None:
                    listed = sorted(n for n, m in members.items() if not m.isdir())
                    raise BmctlError(f"binaries.{part.name}.install: {name} ({part.url}) has no member {key} "
                                     f"(it has {', '.join(listed[:12])}{', ...' if len(listed) > 12 else ''}).",
                                     f"name the member as the archive names it (release file, binaries.{part.name}).")
                try:
                    src = tar.extractfile(member)
                except KeyError:
                    src = None
                if src is None:
                    raise BmctlError(f"binaries.{part.name}.install: {key} in {name} is not a file.",
                                     "name a regular file of the archive.")
                with src, open(local, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            os.chmod(local, 0o755)
            files[node_path] = (local, part.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BmctlError(f"{part.name}: cannot read {name} ({part.url}): {exc}.",
                         "download it again (run the build again).") from None
    finally:
        if tar is not None:
            tar.close()
    return files


def fetch_part(part: Part, work: Path, mirror: str | None = None, say: Say = print) -> dict[str, tuple[Path, str]]:
    """Download one part and its checksum, verify, and take its install files out of it."""
    assert part.url and part.checksum_url
    folder = work / "downloads" / part.name
    folder.mkdir(parents=True, exist_ok=True)
    name = _basename(part.url)
    path = folder / name
    got, _ = download(part.url, path, mirror, say, label=part.name)
    sums_path = folder / ("checksum-" + _basename(part.checksum_url))
    download(part.checksum_url, sums_path, mirror, say, label=part.name)
    if sums_path.stat().st_size > MAX_CHECKSUM_FILE:
        raise BmctlError(f"{part.checksum_url} is larger than {MAX_CHECKSUM_FILE >> 20} MB: not a checksum file.",
                         f"check binaries.{part.name}.checksumUrl in the release.")
    want = parse_checksum(sums_path.read_text(errors="replace"), name, mirrored(part.checksum_url, mirror))
    if got != want:
        raise BmctlError(f"{part.name}: {name} downloaded from {mirrored(part.url, mirror)} has sha256 {got[:16]}..., "
                         f"its published checksum ({part.checksum_url}) says {want[:16]}...; refused (the bundle "
                         "was not written).",
                         "run the build again (a broken download); if it persists the server or a proxy on the way "
                         "serves another file than its project published: check it before trusting it.")
    return _take(part, path, work / "files" / part.name)


def fetch_software(release: Release, work: Path, mirror: str | None = None, say: Say = print,
                   workers: int = WORKERS) -> dict[str, tuple[Path, str]]:
    """Every part of the release, downloaded and verified: {path on node: (local file, part)}."""
    parts = list(release.binaries.values())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fetch_part, p, work, mirror, say) for p in parts]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    software: dict[str, tuple[Path, str]] = {}
    for part, files in zip(parts, results):
        for node_path, entry in files.items():
            if node_path in software:
                raise BmctlError(f"{release.source}: binaries: {software[node_path][1]} and {part.name} both install "
                                 f"{node_path}.", "install each path from one part only.")
            software[node_path] = entry
    return software


# -- images -------------------------------------------------------------------------------------

def pull_images(release: Release, layout: Path, registry_for=None, say: Say = print) -> dict[str, str]:
    """Every image of the release (linux/amd64) into one OCI layout: {name: REFERENCE@sha256:DIGEST}
    (the reference without any digest it had, and the digest pulled)."""
    pinned: dict[str, str] = {}
    done: dict[str, str] = {}
    with oci.LayoutWriter(layout) as writer:
        for name, ref in release.images.items():
            start = time.monotonic()
            if ref not in done:
                _, digest = oci.pull(ref, writer, platform=PLATFORM, registry_for=registry_for)
                done[ref] = digest
                try:
                    _, children = oci.manifest_children(writer.read_blob(digest), "", ref)
                    size = sum(c["size"] for c in children)
                except BmctlError:
                    size = 0
                say(f"  image {ref.split('@')[0]}: {digest[:19]}... {size / 1e6:.1f} MB in "
                    f"{time.monotonic() - start:.1f} s")
            pinned[name] = f"{ref.split('@')[0]}@{done[ref]}"
    return pinned


# -- the builds ---------------------------------------------------------------------------------

def build_official(kubernetes: str, output: Path, release_file: Path | None = None, mirror: str | None = None,
                   registry_for=None, say: Say = print, workdir: Path | None = None) -> Path:
    """The bundle for `kubernetes` from upstream (or `mirror`): every part downloaded and checked
    against its published sha256, every image pulled and pinned by digest. Returns `output`."""
    output = Path(output).expanduser()
    if mirror is not None and not re.match(r"^https?://[^/\s]+", mirror):
        raise BmctlError(f"--mirror {mirror!r} is not an http(s) URL.",
                         "write it as http://HOST[:PORT][/PATH], the folder that holds dl.k8s.io/ and github.com/.")
    if output.is_dir():
        raise BmctlError(f"{output} is a folder.", "pass the bundle's file name with --output.")
    data, release = release_for(kubernetes, release_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    base = Path(workdir).expanduser() if workdir else output.parent
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bmctl-bundle-build-", dir=base))
    try:
        say("upstream manifests (pinned by sha256):")
        pins, manifests = upstream.for_bundle(release, say)
        say(f"node software for Kubernetes {release.kubernetes} ({len(release.binaries)} parts, from "
            f"{mirror or 'upstream'}):")
        software = fetch_software(release, work, mirror, say)
        say(f"images ({len(release.images)}, {PLATFORM}):")
        pinned = pull_images(release, work / "images", registry_for, say)
        content = dict(data)
        content["images"] = {name: pinned[name] for name in release.images}
        content["manifests"] = pins
        return bundles.write(output, content, software, work / "images",
                             source=f"upstream ({'mirror ' + mirror if mirror else 'internet'})", say=say,
                             manifests=manifests)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_lab(output: Path, say: Say = print) -> Path:
    """The lab's bundle (built or taken from its cache by bmctl.lab.release.bundle), hard-linked to
    `output` (copied across file systems), replacing any file there in one rename."""
    from bmctl.lab import release as lab_release

    output = Path(output).expanduser()
    if output.is_dir():
        raise BmctlError(f"{output} is a folder.", "pass the bundle's file name with --output.")
    source = lab_release.bundle(say=say)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and output.resolve() == Path(source).resolve():
        return output
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output
