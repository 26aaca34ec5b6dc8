"""The upstream manifests bmctl deploys (MetalLB's, flannel's, Gateway API's CRDs), got by their pins.

None of them is kept in bmctl's repository. A release pins each (`manifests:` in
bmctl/release/v1.34.2.yaml): its Go module, version, and every file's path in the module with its
sha256. Each file is looked up, in this order, and checked against its pinned sha256 wherever it is
found (a mismatch stops bmctl with an error naming the file and where it was; it is never used):

    1. the offline bundle, when the config's header has bundlePath: its member
       manifests/MODULE@VERSION/PATH (`bmctl bundle build` puts every pinned file there)
    2. bmctl's cache: $BMCTL_UPSTREAM_CACHE, default ~/.cache/bmctl/upstream, as MODULE@VERSION/PATH
    3. the Go module cache ($GOMODCACHE, else `go env GOMODCACHE`, else $GOPATH/pkg/mod or
       ~/go/pkg/mod) when it holds MODULE@VERSION already: the extracted module, or the zip under
       cache/download/ (the lab's build and the tests fill it with the ordinary Go client)
    4. the Go module proxy over plain HTTP (no `go` binary needed): each URL of $GOPROXY in turn
       (unset: what `go env GOPROXY` says, Go's own default; `direct` is skipped, `off` stops),
       MODULE/@v/VERSION.zip,
       from which only the pinned files of that module are taken (the zip names them
       MODULE@VERSION/PATH) and kept in the cache (2)

MODULE and VERSION are written as Go writes them in paths and URLs: capitals as "!" and the lowercase
letter. When no source has a file, BmctlError names it and the command that gets it:
`bmctl bundle fetch-manifests` (fetch() here), which fills the cache on a machine that reaches a
module proxy; the cache folder can then be copied to an air-gapped workstation (or a bundle used).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from bmctl.errors import BmctlError
from bmctl.release import Manifest, Release, UpstreamFile
from bmctl.release import bundle as bundles

FETCH_COMMAND = "bmctl bundle fetch-manifests"


def cache_dir() -> Path:
    return Path(os.environ.get("BMCTL_UPSTREAM_CACHE", Path.home() / ".cache" / "bmctl" / "upstream"))


def escape(text: str) -> str:
    """A module path or version as Go writes it in file paths and proxy URLs (Azure -> !azure)."""
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in text)


def relative(manifest: Manifest, file: UpstreamFile) -> str:
    """MODULE@VERSION/PATH (escaped): the file's place in the cache and, under manifests/, in a bundle."""
    return f"{escape(manifest.module)}@{escape(manifest.version)}/{file.path}"


def member(manifest: Manifest, file: UpstreamFile) -> str:
    return bundles.MANIFESTS + relative(manifest, file)


def _label(manifest: Manifest, file: UpstreamFile) -> str:
    return f"{file.path} of {manifest.module} {manifest.version} (manifest {manifest.name})"


def _verified(data: bytes, manifest: Manifest, file: UpstreamFile, where: str, fix: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise BmctlError(f"upstream file {_label(manifest, file)} from {where} has sha256 {digest[:16]}..., the "
                         f"release pins {file.sha256[:16]}...; refused (it is not used).", fix)
    return data


# -- the sources, in lookup order -----------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _bundle(path: str, mtime_ns: int, size: int) -> bundles.Bundle:
    return bundles.Bundle.open(path)


def _from_bundle(bundle: Path, manifest: Manifest, file: UpstreamFile) -> bytes | None:
    try:
        stat = Path(bundle).stat()
    except OSError as exc:
        raise BmctlError(f"bundle {bundle}: {exc.strerror or exc}.", "check the header's bundlePath.") from None
    opened = _bundle(str(bundle), stat.st_mtime_ns, stat.st_size)
    name = member(manifest, file)
    if name not in opened.members:
        return None
    with opened.open_member(name) as f:
        data = f.read()
    return _verified(data, manifest, file, f"bundle {bundle} ({name})",
                     "copy the bundle again or rebuild it with `bmctl bundle build` (and check the release's pins).")


def _from_cache(manifest: Manifest, file: UpstreamFile) -> bytes | None:
    path = cache_dir() / relative(manifest, file)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return _verified(data, manifest, file, path, f"delete it (rm {path}) and run again: bmctl gets it anew.")


def _keep(manifest: Manifest, file: UpstreamFile, data: bytes) -> Path:
    """Write a verified file into the cache (in one rename: no half file is ever read)."""
    path = cache_dir() / relative(manifest, file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return path


def _go() -> str | None:
    return shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)


@functools.lru_cache(maxsize=8)
def _go_env_cached(go: str, name: str, home: str, gopath: str, goenv: str) -> str:
    try:
        proc = subprocess.run([go, "env", name], capture_output=True, text=True, timeout=30,
                              cwd=tempfile.gettempdir(), env={**os.environ, "GOTOOLCHAIN": "local"})
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _go_env(name: str) -> str:
    """What the Go toolchain says `name` is ("" without one; GOPROXY unset: Go's own default)."""
    go = _go()
    return _go_env_cached(go, name, str(Path.home()), os.environ.get("GOPATH", ""),
                          os.environ.get("GOENV", "")) if go else ""


def module_cache() -> Path:
    """The Go module cache: $GOMODCACHE, else what `go env` says, else $GOPATH/pkg/mod or ~/go/pkg/mod."""
    if os.environ.get("GOMODCACHE"):
        return Path(os.environ["GOMODCACHE"])
    found = _go_env("GOMODCACHE")
    if found:
        return Path(found)
    gopath = os.environ.get("GOPATH", "").split(os.pathsep)[0]
    return Path(gopath or Path.home() / "go") / "pkg" / "mod"


def _zip_entry(zip_path: Path, manifest: Manifest, file: UpstreamFile) -> bytes | None:
    """The file from a module zip (entries MODULE@VERSION/PATH, unescaped); None when it has none."""
    with zipfile.ZipFile(zip_path) as z:
        try:
            return z.read(f"{manifest.module}@{manifest.version}/{file.path}")
        except KeyError:
            return None


def _from_module_cache(manifest: Manifest, file: UpstreamFile) -> bytes | None:
    root = module_cache()
    fix = (f"check the Go module cache (`go mod verify` in a module that requires {manifest.module}), or remove "
           f"{manifest.module}@{manifest.version} from it; also check the release's pin.")
    extracted = root / f"{escape(manifest.module)}@{escape(manifest.version)}" / file.path
    if extracted.is_file():
        return _verified(extracted.read_bytes(), manifest, file, extracted, fix)
    zipped = root / "cache" / "download" / escape(manifest.module) / "@v" / f"{escape(manifest.version)}.zip"
    if zipped.is_file():
        try:
            data = _zip_entry(zipped, manifest, file)
        except (zipfile.BadZipFile, OSError):
            return None
        if data is not None:
            return _verified(data, manifest, file, zipped, fix)
    return None


def proxies() -> tuple[list[str], str]:
    """The module proxies to try ($GOPROXY's URLs, in order, up to an `off`) and what GOPROXY says."""
    setting = os.environ.get("GOPROXY", "").strip() or _go_env("GOPROXY")
    urls = []
    for entry in setting.replace("|", ",").split(","):
        entry = entry.strip()
        if entry == "off":
            break
        if entry.startswith(("https://", "http://", "file://")):
            urls.append(entry.rstrip("/"))
    return urls, setting


def _from_proxy(manifest: Manifest, file: UpstreamFile, release: Release | None, say: Callable[[str], None]) \
        -> tuple[bytes | None, str]:
    """The file from the module's zip on a module proxy, with every other pinned file of that module
    and version (the manifest's, and the release's) taken out of the same zip into the cache; (data or
    None, why not)."""
    urls, setting = proxies()
    if not urls:
        return None, f"no module proxy to ask (GOPROXY={setting})"
    wanted = {(m.name, f.path): (m, f) for m in [manifest, *(release.all_manifests() if release else [])]
              for f in m.files if (m.module, m.version) == (manifest.module, manifest.version)}
    from bmctl.release.build import download  # (build imports this module)

    failures = []
    cache_dir().mkdir(parents=True, exist_ok=True)
    for base in urls:
        url = f"{base}/{escape(manifest.module)}/@v/{escape(manifest.version)}.zip"
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:
            zip_path = Path(tmp) / "module.zip"
            try:
                download(url, zip_path, say=say, label=f"{manifest.module} {manifest.version}")
            except BmctlError as exc:
                failures.append(exc.message.rstrip("."))
                continue
            if not zipfile.is_zipfile(zip_path):
                failures.append(f"{url} is not a zip file")
                continue
            found = None
            for m, f in wanted.values():
                data = _zip_entry(zip_path, m, f)
                if data is None:
                    continue
                _keep(m, f, _verified(data, m, f, url, f"check that {base} is a Go module proxy serving the "
                                      "module's real zip (GOPROXY), and the release's pin."))
                if (m, f) == (manifest, file):
                    found = data
            if found is not None:
                return found, ""
            failures.append(f"{url} has no {manifest.module}@{manifest.version}/{file.path}")
    return None, "the Go module proxy: " + "; ".join(failures)


def read(manifest: Manifest, file: UpstreamFile, bundle: str | Path | None = None, keep: bool = False,
         say: Callable[[str], None] = lambda m: None, release: Release | None = None) -> tuple[bytes, str]:
    """One pinned file, from the first source that has it (see the module's docstring), checked
    against its sha256: (its bytes, where it came from). `keep`: put it into the cache too. A
    download from a module proxy also caches the other files `release` pins in that module."""
    try:
        return _lookup(manifest, file, bundle, keep, say, release)
    except OSError as exc:  # a folder bmctl may not read or write (the caches), a full disk
        raise BmctlError(f"upstream file {_label(manifest, file)}: {exc.strerror or exc}"
                         f"{' (' + exc.filename + ')' if exc.filename else ''}.",
                         f"check the permissions and free space of {cache_dir()} (or set BMCTL_UPSTREAM_CACHE) and "
                         "of the Go module cache.") from None


def _lookup(manifest: Manifest, file: UpstreamFile, bundle: str | Path | None, keep: bool,
            say: Callable[[str], None], release: Release | None) -> tuple[bytes, str]:
    tried = []
    if bundle is not None:
        data = _from_bundle(Path(bundle), manifest, file)
        if data is not None:
            return data, f"bundle {bundle}"
        tried.append(f"the bundle {bundle} has no {member(manifest, file)}")
    else:
        tried.append("no bundle (the config's header has no bundlePath)")
    data = _from_cache(manifest, file)
    if data is not None:
        return data, f"cache {cache_dir()}"
    tried.append(f"not in bmctl's cache {cache_dir()}")
    data = _from_module_cache(manifest, file)
    if data is not None:
        if keep:
            _keep(manifest, file, data)
        return data, f"Go module cache {module_cache()}"
    tried.append(f"not in the Go module cache {module_cache()}")
    data, why = _from_proxy(manifest, file, release, say)
    if data is not None:
        return data, "Go module proxy"
    tried.append(why)
    raise BmctlError(f"upstream file {_label(manifest, file)}, sha256 {file.sha256[:16]}..., is not on this "
                     f"machine: {'; '.join(tried)}.",
                     f"run `{FETCH_COMMAND}` on a machine that reaches a Go module proxy (GOPROXY=URL names a mirror) "
                     f"and copy its {cache_dir()} here, to the same path.")


def manifest_texts(manifest: Manifest, bundle: str | Path | None = None, release: Release | None = None) -> list[str]:
    """The files of a pinned manifest, in its order, as text."""
    return [read(manifest, f, bundle, release=release)[0].decode() for f in manifest.files]


def texts(release: Release, name: str, bundle: str | Path | None = None) -> list[str]:
    """The files of the manifest `name` as `release` pins it."""
    return manifest_texts(release.manifest(name), bundle, release)


def for_config(config, name: str) -> list[str]:
    """The files of manifest `name` for a loaded config: its release's pins, its bundle first."""
    from bmctl import release as releases
    return texts(releases.of(config), name, releases.bundle_path(config))


def text(release: Release, name: str, bundle: str | Path | None = None) -> str:
    """The one file of the pinned manifest `name`."""
    found = texts(release, name, bundle)
    assert len(found) == 1, (name, len(found))
    return found[0]


@dataclass(frozen=True)
class Fetched:
    manifest: Manifest
    file: UpstreamFile
    path: Path          # in the cache
    source: str


def fetch(release: Release, say: Callable[[str], None] = lambda m: None) -> list[Fetched]:
    """Every file the release pins, into the cache (from the Go module cache or a module proxy),
    checked: what `bmctl bundle fetch-manifests` does and what a bundle build puts in the bundle."""
    out = []
    for manifest in release.all_manifests():
        for file in manifest.files:
            _, source = read(manifest, file, keep=True, say=say, release=release)
            out.append(Fetched(manifest, file, cache_dir() / relative(manifest, file), source))
    return out


def for_bundle(release: Release, say: Callable[[str], None] = lambda m: None) -> tuple[dict, dict[str, Path]]:
    """What a bundle build needs of the pinned manifests: the release's `manifests:` section (every
    pin, bmctl's own standing in for any the release lacks) and bundle.write's `manifests`."""
    fetched = fetch(release, say)
    for manifest in release.all_manifests():
        size = sum(f.path.stat().st_size for f in fetched if f.manifest == manifest)
        say(f"  {manifest.name}: {manifest.module} {manifest.version}, {len(manifest.files)} file(s), "
            f"{size / 1e3:.0f} kB, sha256 checked")
    return ({m.name: m.data() for m in release.all_manifests()},
            {relative(f.manifest, f.file): f.path for f in fetched})


# -- upstream's YAML written back -----------------------------------------------------------------

class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Multi-line strings (a ConfigMap's file) as literal blocks, as upstream writes them."""

    def represent_str(self, value: str):
        return self.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _Dumper.represent_str)


def dump(objs: list[dict], head: str = "") -> str:
    """Objects as a YAML stream in their own key order, each after `---`, below the comment `head`."""
    return head + yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, explicit_start=True)
