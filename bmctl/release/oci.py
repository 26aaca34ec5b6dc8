"""bmctl's own OCI registry client: image layouts on disk, pulls and pushes over the registry API.

- Layouts: DirLayout (an OCI image layout folder: oci-layout, index.json, blobs/sha256/HEX),
  TarLayout (the same inside an uncompressed tar, under `images/`, read member by member) and
  LayoutWriter (creates or extends a layout folder; index.json written atomically on close()).
  Each image of a layout's index.json is named by its `io.containerd.image.name` annotation (the
  reference without any digest, e.g. registry.k8s.io/pause:3.10.1, containerd's convention; the
  digest is the descriptor's own) and `org.opencontainers.image.ref.name` (the tag); it is a
  single-platform image manifest (OCI or Docker v2 schema 2) or an image index. Layouts written
  before (names ending in @sha256:...) are still read and pushed: that digest must be the descriptor's.
- Registry: one registry endpoint (HOST:PORT, https://..., http://... for plain HTTP, and an
  optional namespace HOST:PORT/v2/NAMESPACE as Google bmctl's registryMirrors write it), TLS
  verified against the system CAs and --cacert, anonymous / HTTP Basic / Bearer token auth.
- push_layout: every image of a layout to a registry (blobs the registry has are not sent again);
  pull: one image by reference into a LayoutWriter, every blob checked against its digest and size.
- credentials_from_docker_config: (user, password) for a host from a Docker config.json.

Every failure is a BmctlError: one sentence and a fix; no password or Authorization header ever
appears in a message.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import socket
import ssl
import tarfile
import threading
import urllib.parse
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping

from bmctl.config.registries import EndpointError, docker_credentials
from bmctl.errors import BmctlError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
MAX_MANIFEST = 4 * 2**20  # distribution's own limit on a manifest's size
CHUNK = 1 << 20
WORKERS = 4

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_digest(digest: object, where: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        algo = digest.split(":", 1)[0] if isinstance(digest, str) and ":" in digest else None
        if algo and algo != "sha256":
            raise BmctlError(f"{where}: digest {digest[:80]!r} uses {algo}; bmctl handles sha256 digests only.",
                             "re-create the image with sha256 digests (the default of every tool).")
        raise BmctlError(f"{where}: {str(digest)[:80]!r} is not a sha256 digest (sha256:<64 hex digits>).",
                         "the layout or the registry's answer is damaged: re-create or re-pull it.")
    return digest


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- image references -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """HOST/REPOSITORY[:TAG][@sha256:DIGEST], Docker Hub names normalized (docker.io/library/NAME)."""
    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str) -> Reference:
    """An image reference as Docker and containerd read it (no host: docker.io; one-part Docker Hub
    names live under library/)."""
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        _check_digest(digest, f"image reference {text}")
    tag = None
    slash = rest.rfind("/")
    if ":" in rest[slash + 1:]:
        rest, tag = rest.rsplit(":", 1)
    first, _, path = rest.partition("/")
    if path and ("." in first or ":" in first or first == "localhost"):
        host, repo = first, path
    else:
        host, repo = DOCKER_HUB, rest
    if host in ("index.docker.io", DOCKER_HUB_API):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    if not _REPO.match(repo) or (tag is not None and not _TAG.match(tag)) or (tag is None and digest is None):
        raise BmctlError(f"{text!r} is not an image reference HOST/REPOSITORY:TAG[@sha256:DIGEST].",
                         "write it as registries name images, e.g. registry.k8s.io/pause:3.10.1.")
    return Reference(host, repo, tag, digest)


def image_name(reference: str, digest: str | None = None) -> str:
    """How a layout's index.json names an image (io.containerd.image.name): the reference without its
    digest (registry.k8s.io/pause:3.10.1); a reference without a tag keeps HOST/REPO@DIGEST (`digest`
    when given, else its own)."""
    ref = parse_reference(reference)
    if ref.tag:
        return str(Reference(ref.host, ref.repo, ref.tag))
    return str(Reference(ref.host, ref.repo, None, digest or ref.digest))


def target_of(reference: str) -> tuple[str, str | None, str | None]:
    """Where push_layout puts an image: (repository, tag, digest) = the reference without its host
    (registry.k8s.io/kube-apiserver:v1.34.2 -> kube-apiserver, docker.io/library/haproxy -> library/haproxy)."""
    ref = parse_reference(reference)
    return ref.repo, ref.tag, ref.digest


# -- layouts --------------------------------------------------------------------------------------

class _Slice(io.RawIOBase):
    """Bytes [offset, offset+size) of a file, as a read-only file object of its own (own handle)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        super().__init__()
        self._f = open(path, "rb")
        self._offset, self._size, self._pos = offset, size, 0
        self._f.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(b)[:n])
        self._pos += got
        return got

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        self._f.seek(self._offset + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class Layout:
    """What DirLayout, TarLayout and LayoutWriter share: index.json and blobs by digest."""

    where = "layout"

    def index(self) -> dict:
        raise NotImplementedError

    def open_blob(self, digest: str) -> BinaryIO:
        raise NotImplementedError

    def blob_size(self, digest: str) -> int:
        raise NotImplementedError

    def has_blob(self, digest: str) -> bool:
        raise NotImplementedError

    def read_blob(self, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small blob (manifest, config) whole, checked against its digest."""
        if self.blob_size(digest) > limit:
            raise BmctlError(f"{self.where}: blob {digest} is larger than {_mib(limit)}, too large for a manifest.",
                             "the layout is damaged: re-create it.")
        with self.open_blob(digest) as f:
            data = f.read()
        if _sha256(data) != digest:
            raise BmctlError(f"{self.where}: blob {digest} does not match its digest (it is {_sha256(data)}).",
                             "the layout is damaged: re-create it.")
        return data

    def images(self) -> list[dict]:
        """The descriptors of index.json (each an image manifest or an image index)."""
        manifests = self.index().get("manifests")
        if not isinstance(manifests, list):
            raise BmctlError(f"{self.where}: index.json has no `manifests` list.", "re-create the layout.")
        return manifests

    def _load_index(self, text: bytes) -> dict:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BmctlError(f"{self.where}: index.json is not JSON ({exc}).", "re-create the layout.") from None
        if not isinstance(data, dict):
            raise BmctlError(f"{self.where}: index.json is not an OCI image index.", "re-create the layout.")
        return data


class DirLayout(Layout):
    """An OCI image layout folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = f"OCI layout {self.path}"
        if not (self.path / "index.json").is_file() or not (self.path / "oci-layout").is_file():
            raise BmctlError(f"{self.path} is not an OCI image layout (no oci-layout and index.json in it).",
                             "pass the folder that holds oci-layout, index.json and blobs/, or a bundle tar file.")

    def _blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / _check_digest(digest, self.where).split(":", 1)[1]

    def index(self) -> dict:
        return self._load_index((self.path / "index.json").read_bytes())

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise BmctlError(f"{self.where}: blob {digest} is missing.", "the layout is incomplete: re-create it.") \
                from None

    def blob_size(self, digest: str) -> int:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise BmctlError(f"{self.where}: blob {digest} is missing.", "the layout is incomplete: re-create it.") \
                from None

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()


class TarLayout(Layout):
    """An OCI image layout stored in an uncompressed tar file under `prefix` (a bundle's images/).

    Only the tar's headers are read up front; each blob is read from its place in the file."""

    def __init__(self, tar_path: str | Path, prefix: str = "images/") -> None:
        self.tar_path = Path(tar_path)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.where = f"{self.tar_path} ({self.prefix or '/'})"
        self._members = _tar_members(self.tar_path)
        if self._name("index.json") not in self._members or self._name("oci-layout") not in self._members:
            raise BmctlError(f"{self.tar_path} holds no OCI image layout under {self.prefix or '/'} (no "
                             f"{self.prefix}oci-layout and {self.prefix}index.json).",
                             "pass a bundle whose images/ folder is an OCI image layout, or the layout folder.")

    def _name(self, rel: str) -> str:
        return self.prefix + rel

    def _member(self, digest: str) -> tuple[int, int]:
        name = self._name("blobs/sha256/" + _check_digest(digest, self.where).split(":", 1)[1])
        try:
            return self._members[name]
        except KeyError:
            raise BmctlError(f"{self.where}: blob {digest} is missing.", "the bundle is incomplete: re-create it.") \
                from None

    def index(self) -> dict:
        with _Slice(self.tar_path, *self._members[self._name("index.json")]) as f:
            return self._load_index(f.read())

    def open_blob(self, digest: str) -> BinaryIO:
        return io.BufferedReader(_Slice(self.tar_path, *self._member(digest)), CHUNK)

    def blob_size(self, digest: str) -> int:
        return self._member(digest)[1]

    def has_blob(self, digest: str) -> bool:
        name = self._name("blobs/sha256/" + _check_digest(digest, self.where).split(":", 1)[1])
        return name in self._members


def _tar_members(path: Path) -> dict[str, tuple[int, int]]:
    """Regular files of an uncompressed tar: name (no leading ./) -> (data offset, size); hard links
    resolved to their target's data."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise BmctlError(f"{path}: {exc.strerror}.", "pass an image bundle (tar) or an OCI layout folder.") from None
    for sig, kind, tool in ((b"\x1f\x8b", "gzip", "gunzip"), (b"\xfd7zXZ\x00", "xz", "unxz"),
                            (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"), (b"BZh", "bzip2", "bunzip2")):
        if magic.startswith(sig):
            raise BmctlError(f"{path} is {kind}-compressed; bmctl reads blobs in place from an uncompressed tar.",
                             f"decompress it first (`{tool} -k {path}`) and pass the .tar.")
    members: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if m.isreg() and not m.issparse():
                    members[name] = (m.offset_data, m.size)
                elif m.islnk():
                    links[name] = m.linkname[2:] if m.linkname.startswith("./") else m.linkname
    except tarfile.TarError as exc:
        raise BmctlError(f"{path} is not a readable tar file ({exc}).",
                         "pass an image bundle (an uncompressed tar) or an OCI layout folder.") from None
    for name, target in links.items():
        if target in members:
            members[name] = members[target]
    return members


class LayoutWriter(DirLayout):
    """Creates or extends an OCI image layout folder. Blobs are written (digest-checked) as they
    come; index.json is rewritten atomically by close(). Usable as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = f"OCI layout {self.path}"
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        index_file = self.path / "index.json"
        if index_file.exists():
            self._index = self._load_index(index_file.read_bytes())
            self._index.setdefault("manifests", [])
        else:
            self._index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        if not (self.path / "oci-layout").exists():
            _atomic_write(self.path / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')

    def index(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._index))

    def add_blob(self, data: bytes | BinaryIO, digest: str | None = None, size: int | None = None) -> str:
        """Store `data` (bytes or a binary file object, read to its end); its digest. With `digest`
        (and `size`) given, content that does not match is refused (BmctlError) and not stored."""
        if digest is not None:
            _check_digest(digest, self.where)
            if self.has_blob(digest) and (size is None or self.blob_size(digest) == size):
                return digest
        blobs = self.path / "blobs" / "sha256"
        tmp = blobs / f".tmp-{uuid.uuid4().hex}"
        sha, count = hashlib.sha256(), 0
        limit = None if size is None else size
        try:
            with open(tmp, "wb") as out:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    chunks: Iterable[bytes] = (bytes(data),)
                else:
                    chunks = iter(lambda: data.read(CHUNK), b"")
                for chunk in chunks:
                    sha.update(chunk)
                    count += len(chunk)
                    if limit is not None and count > limit:
                        raise BmctlError(f"blob {digest}: more than the {limit} bytes its descriptor names; refused.",
                                         "the source serves damaged or tampered content: check the registry.")
                    out.write(chunk)
            actual = "sha256:" + sha.hexdigest()
            if digest is not None and actual != digest:
                raise BmctlError(f"blob {digest}: the content received has digest {actual} ({count} bytes); refused.",
                                 "the source serves damaged or tampered content: check the registry and pull again.")
            if size is not None and count != size:
                raise BmctlError(f"blob {actual}: {count} bytes received, its descriptor names {size}; refused.",
                                 "the source serves damaged or tampered content: check the registry and pull again.")
            os.replace(tmp, blobs / actual.split(":", 1)[1])
            return actual
        finally:
            tmp.unlink(missing_ok=True)

    def add_image(self, manifest_digest: str, media_type: str, size: int, reference: str,
                  platform: dict | None = None) -> dict:
        """Name the manifest (or index) `manifest_digest` in index.json as `reference`, containerd's
        way: io.containerd.image.name is the reference without its digest (HOST/REPO:TAG; a reference
        with no tag keeps HOST/REPO@DIGEST), org.opencontainers.image.ref.name its tag, and the digest
        is the descriptor's own. A digest in `reference` must be `manifest_digest`. Its entry replaces
        an earlier one of the same name (with or without a digest); the descriptor added."""
        if not self.has_blob(manifest_digest):
            raise BmctlError(f"{self.where}: no blob {manifest_digest} to name {reference}.",
                             "add the manifest's blob before the image.")
        ref = parse_reference(reference)
        if ref.digest and ref.digest != manifest_digest:
            raise BmctlError(f"{self.where}: {reference} names digest {ref.digest}, not the manifest's "
                             f"{manifest_digest}.", "name the image by the digest of the manifest stored.")
        name = image_name(str(ref), manifest_digest)
        annotations = {NAME_ANNOTATION: name}
        if ref.tag:
            annotations[REF_ANNOTATION] = ref.tag
        desc = {"mediaType": media_type, "digest": manifest_digest, "size": size, "annotations": annotations}
        if platform:
            desc["platform"] = platform

        def same(d: dict) -> bool:
            old = (d.get("annotations") or {}).get(NAME_ANNOTATION) or ""
            return old == name or (ref.tag is not None and old.split("@", 1)[0] == name)

        with self._lock:
            self._index["manifests"] = [d for d in self._index["manifests"] if not same(d)] + [desc]
        return desc

    def close(self) -> None:
        with self._lock:
            _atomic_write(self.path / "index.json", json.dumps(self._index, indent=2).encode() + b"\n")

    def __enter__(self) -> LayoutWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def open_layout(source: str | Path) -> Layout:
    """An OCI layout folder, or a bundle tar holding one under images/ (or at its top)."""
    source = Path(source).expanduser()
    if source.is_dir():
        return DirLayout(source)
    if not source.exists():
        raise BmctlError(f"{source} does not exist.", "pass an image bundle (tar) or an OCI layout folder.")
    try:
        return TarLayout(source)
    except BmctlError:
        members = _tar_members(source)
        if "index.json" in members and "oci-layout" in members:
            return TarLayout(source, prefix="")
        raise


def manifest_children(data: bytes, media_type: str, where: str) -> tuple[str, list[dict]]:
    """(media type, child descriptors) of a manifest: an index's manifests, or a manifest's config + layers."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise BmctlError(f"{where}: the manifest is not JSON.", "re-create or re-pull the image.") from None
    if not isinstance(doc, dict):
        raise BmctlError(f"{where}: the manifest is not a JSON object.", "re-create or re-pull the image.")
    media_type = doc.get("mediaType") or media_type
    if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else media_type
    if media_type in INDEX_TYPES:
        children = doc.get("manifests")
    elif media_type in MANIFEST_TYPES:
        children = [doc.get("config"), *(doc.get("layers") or [])]
    else:
        raise BmctlError(f"{where}: media type {media_type!r} is neither an image manifest nor an image index.",
                         "bmctl handles OCI and Docker v2 schema 2 images.")
    if not isinstance(children, list) or \
            not all(isinstance(c, dict) and "digest" in c and isinstance(c.get("size"), int) for c in children):
        raise BmctlError(f"{where}: the manifest names its parts without digest and size.",
                         "re-create or re-pull the image.")
    for c in children:
        _check_digest(c["digest"], where)
    return media_type, children


# -- the registry ---------------------------------------------------------------------------------

class _Response:
    """A finished HTTP exchange: status, headers, body (read whole)."""

    def __init__(self, status: int, reason: str, headers: http.client.HTTPMessage, body: bytes, url: str) -> None:
        self.status, self.reason, self.headers, self.body, self.url = status, reason, headers, body, url

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class Registry:
    """One registry endpoint: HOST[:PORT], https://HOST[:PORT], http://HOST[:PORT] (plain HTTP), each
    optionally with a namespace (HOST:PORT/v2/NAMESPACE or HOST:PORT/NAMESPACE): repository R is
    then NAMESPACE/R. TLS is checked against the system CAs and `cacert` (a PEM file)."""

    def __init__(self, endpoint: str, cacert: str | Path | None = None, username: str | None = None,
                 password: str | None = None, insecure_http: bool = False, timeout: float = 60) -> None:
        text = endpoint.strip()
        scheme = "https"
        if "://" in text:
            scheme, text = text.split("://", 1)
            if scheme not in ("http", "https"):
                raise BmctlError(f"registry endpoint {endpoint!r}: scheme {scheme} is neither https nor http.",
                                 "write HOST:PORT, https://HOST:PORT or http://HOST:PORT (plain HTTP).")
        elif insecure_http:
            scheme = "http"
        netloc, _, path = text.partition("/")
        path = path.strip("/")
        if path == "v2" or path.startswith("v2/"):
            path = path[2:].strip("/")
        if not netloc or not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?", netloc) \
                or (path and not _REPO.match(path)):
            raise BmctlError(f"{endpoint!r} is not a registry endpoint.",
                             "write HOST:PORT, optionally with a namespace (HOST:PORT/v2/NAMESPACE) and a scheme "
                             "(https:// is the default; http:// for a plain-HTTP registry).")
        self.scheme, self.netloc, self.namespace = scheme, netloc, path
        self.base = f"{scheme}://{netloc}"
        self.name = netloc + (f"/{path}" if path else "")  # what messages call it
        self.username, self._password = username, password
        self.cacert = Path(cacert).expanduser() if cacert else None
        self.timeout = timeout
        self._ssl = self._context()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._mode: str | None = None  # "basic" or "bearer" once the registry asked for one
        self._bearer: tuple[str, str | None] | None = None  # (realm, service)
        self._tokens: dict[str, str] = {}  # scope -> Bearer token
        self._scope_locks: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:  # never the password
        return f"Registry({self.base}{'/' + self.namespace if self.namespace else ''}, user={self.username!r})"

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.cacert:
            try:
                ctx.load_verify_locations(cafile=str(self.cacert))
            except FileNotFoundError:
                raise BmctlError(f"CA certificate {self.cacert} does not exist.",
                                 "pass --cacert with the PEM file of the CA that signed the registry's certificate.") \
                    from None
            except (ssl.SSLError, OSError) as exc:
                raise BmctlError(f"CA certificate {self.cacert} is not a PEM certificate ({exc}).",
                                 "pass --cacert with the PEM file of the CA that signed the registry's certificate.") \
                    from None
        return ctx

    def path(self, repo: str) -> str:
        """The repository's name on this registry (with the namespace)."""
        return f"{self.namespace}/{repo}" if self.namespace else repo

    def reference(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        return f"{self.netloc}/{self.path(repo)}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    # -- HTTP, one keep-alive connection per thread and host --

    def _new_connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self._ssl, blocksize=CHUNK)
        return http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=CHUNK)

    def _pooled(self, scheme: str, netloc: str, fresh: bool) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        if fresh:
            self._drop(scheme, netloc)
        if (scheme, netloc) not in conns:
            conns[(scheme, netloc)] = self._new_connection(scheme, netloc)
        return conns[(scheme, netloc)]

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((scheme, netloc), None)
        if conn:
            conn.close()

    def _send(self, method: str, url: str, headers: dict, body=None, stream: bool = False):
        """One HTTP request on this thread's kept-alive connection to the URL's host (one that went
        stale is retried once): a _Response; with `stream`, a 2xx answer is the open http.client
        response on a connection of its own (the caller reads it to its end, then closes it)."""
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        start = body.tell() if hasattr(body, "read") and body.seekable() else None
        for attempt in (0, 1):
            conn = self._new_connection(parts.scheme, parts.netloc) if stream \
                else self._pooled(parts.scheme, parts.netloc, fresh=attempt > 0)
            reused = conn.sock is not None
            try:
                try:
                    conn.request(method, target, body=body, headers=headers)
                    resp = conn.getresponse()
                    if stream and 200 <= resp.status < 300:
                        return resp
                    data = resp.read()
                    if stream:
                        conn.close()
                    elif resp.will_close:
                        self._drop(parts.scheme, parts.netloc)
                    return _Response(resp.status, resp.reason, resp.headers, data, url)
                except BaseException:
                    conn.close()
                    if not stream:
                        self._drop(parts.scheme, parts.netloc)
                    raise
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                replayable = body is None or isinstance(body, bytes) or start is not None
                if attempt or not reused or not replayable:
                    raise BmctlError(f"registry {self.name}: the connection to {parts.netloc} broke during "
                                     f"{method} {parts.path} ({type(exc).__name__}).",
                                     "check the registry's logs and the body size limits of any proxy in front "
                                     "of it, then run again.") from None
                if start is not None:
                    body.seek(start)
            except ssl.SSLCertVerificationError as exc:
                why = exc.verify_message or str(exc)
                if self.cacert:
                    raise BmctlError(f"registry {self.name}: TLS certificate of {parts.netloc} not trusted ({why}), "
                                     f"not even with --cacert {self.cacert}.",
                                     "pass --cacert with the CA that signed this registry's certificate, and check "
                                     "that the certificate names this host or IP.") from None
                raise BmctlError(f"registry {self.name}: TLS certificate of {parts.netloc} not trusted ({why}).",
                                 "pass --cacert with the PEM file of the CA that signed the registry's "
                                 "certificate.") from None
            except ssl.SSLError as exc:
                if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc):
                    raise BmctlError(f"registry {self.name}: {parts.netloc} does not speak TLS (it answers plain "
                                     "HTTP).", f"write the endpoint as http://{self.name} for a plain-HTTP registry, "
                                     "or enable TLS on the registry.") from None
                raise BmctlError(f"registry {self.name}: TLS with {parts.netloc} failed ({exc.reason or exc}).",
                                 "check that the port serves TLS, and the registry's certificate and key.") from None
            except ConnectionRefusedError:
                raise BmctlError(f"registry {self.name}: {parts.netloc} refused the connection.",
                                 "check that the registry runs, and the endpoint's host and port.") from None
            except socket.gaierror as exc:
                raise BmctlError(f"registry {self.name}: cannot resolve {parts.hostname} ({exc.strerror}).",
                                 "check the endpoint's host name and this machine's DNS.") from None
            except (TimeoutError, socket.timeout):
                raise BmctlError(f"registry {self.name}: {parts.netloc} did not answer {method} {parts.path} within "
                                 f"{self.timeout:.0f}s.", "check the network path to the registry.") from None
            except (OSError, http.client.HTTPException) as exc:
                raise BmctlError(f"registry {self.name}: {method} {parts.path} on {parts.netloc} failed "
                                 f"({type(exc).__name__}: {exc}).", "check the registry and the network path to it.") \
                    from None
        raise AssertionError("unreachable")

    # -- authentication --

    def _basic(self) -> str:
        raw = f"{self.username}:{self._password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _auth(self, scope: str) -> str | None:
        """The Authorization header for a request in `scope` (None until the registry asked for one)."""
        with self._lock:
            mode, token = self._mode, self._tokens.get(scope)
        if mode == "basic":
            return self._basic()
        if mode == "bearer":
            return f"Bearer {token or self._cached_token(scope)}"
        return None

    def _cached_token(self, scope: str) -> str:
        """The token kept for `scope`, or a new one (one fetch per scope, however many threads ask)."""
        with self._lock:
            scope_lock = self._scope_locks.setdefault(scope, threading.Lock())
        with scope_lock:
            with self._lock:
                token = self._tokens.get(scope)
            return token or self._token(scope)

    def _token(self, scope: str) -> str:
        """A Bearer token for `scope` from the realm the registry named (Basic credentials if any);
        kept per scope."""
        assert self._bearer
        realm, service = self._bearer
        realm_host = urllib.parse.urlsplit(realm).netloc
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.username:
            headers["Authorization"] = self._basic()
        resp = self._send("GET", url, headers)
        if resp.status in (401, 403):
            if self.username:
                raise BmctlError(f"registry {self.name} refused the credentials of {self.username!r} "
                                 f"({resp.status} from its token service {realm_host}).",
                                 "check the username and password (--credential-file or --need-credential).")
            raise BmctlError(f"registry {self.name} requires credentials ({resp.status} from its token service "
                             f"{realm_host}).", "pass --need-credential (asks for them) or --credential-file with a "
                             "Docker config.json.")
        if resp.status != 200:
            raise BmctlError(f"registry {self.name}: its token service {realm_host} answered {resp.status} "
                             f"{resp.reason}.", "check the registry's auth configuration.")
        try:
            doc = json.loads(resp.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise BmctlError(f"registry {self.name}: its token service {realm_host} gave no token.",
                             "check the registry's auth configuration.")
        with self._lock:
            self._tokens[scope] = token
        return token

    def _challenge(self, resp: _Response, scope: str, sent: str | None, retried: bool) -> None:
        """Act on a 401: take up Basic or Bearer as WWW-Authenticate asks; raise when a retry is hopeless."""
        header = resp.header("WWW-Authenticate") or ""
        scheme, _, rest = header.strip().partition(" ")
        params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
        scheme = scheme.lower()
        if scheme == "basic":
            if not self.username:
                self._need_credentials(resp)
            if sent and sent.startswith("Basic"):
                self._refused(resp)
            with self._lock:
                self._mode = "basic"
        elif scheme == "bearer" and params.get("realm"):
            if sent and sent.startswith("Bearer") and retried:  # a token fetched just now was refused
                if self.username:
                    self._refused(resp)
                self._need_credentials(resp)
            with self._lock:
                self._mode, self._bearer = "bearer", (params["realm"], params.get("service"))
                if sent and sent.startswith("Bearer") and self._tokens.get(scope) == sent[len("Bearer "):]:
                    del self._tokens[scope]  # expired: fetch a new one
            self._cached_token(scope)
        else:
            raise BmctlError(f"registry {self.name} answered 401 without a Basic or Bearer challenge.",
                             "check the registry's auth configuration.")

    def _refused(self, resp: _Response) -> None:
        if not self.username:
            self._need_credentials(resp)
        raise BmctlError(f"registry {self.name} refused the credentials of {self.username!r} (401"
                         f"{self._error_text(resp)}).",
                         "check the username and password (--credential-file or --need-credential) and that the "
                         "user may pull and push this repository.")

    def _need_credentials(self, resp: _Response) -> None:
        raise BmctlError(f"registry {self.name} requires credentials (401{self._error_text(resp)}).",
                         "pass --need-credential (asks for them) or --credential-file with a Docker config.json.")

    @staticmethod
    def _error_text(resp: _Response) -> str:
        """The registry's own error code and message (its JSON `errors`), as `: CODE message`."""
        try:
            first = json.loads(resp.body)["errors"][0]
            text = f"{first.get('code', '')} {first.get('message', '')}".strip()
        except (ValueError, AttributeError, IndexError, TypeError, KeyError):
            return ""
        return f": {text[:200]}" if text else ""

    def request(self, method: str, url_or_path: str, scope: str = "", headers: Mapping[str, str] | None = None,
                body=None, stream: bool = False):
        """A request with authentication (none, Basic, or a Bearer token for `scope`, as the registry
        asks), following redirects of GET/HEAD; credentials go to the registry's own host only."""
        url = url_or_path if "://" in url_or_path else self.base + url_or_path
        start = body.tell() if hasattr(body, "read") and body.seekable() else None
        challenges = hops = 0
        while True:
            hdrs = dict(headers or {})
            own = urllib.parse.urlsplit(url).netloc == self.netloc
            sent = self._auth(scope) if own else None
            if sent:
                hdrs["Authorization"] = sent
            resp = self._send(method, url, hdrs, body, stream)
            if resp.status == 401 and own:
                if challenges >= 2 or (body is not None and not isinstance(body, bytes) and start is None):
                    self._refused(resp)
                self._challenge(resp, scope, sent, challenges > 0)
                challenges += 1
                if start is not None:
                    body.seek(start)
                continue
            if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD") and resp.header("Location"):
                hops += 1
                if hops > 5:
                    raise BmctlError(f"registry {self.name}: more than 5 redirects for {url.split('?')[0]}.",
                                     "check the registry's storage redirect settings.")
                url = urllib.parse.urljoin(url, resp.header("Location"))
                continue
            if resp.status == 400 and urllib.parse.urlsplit(url).scheme == "http" and \
                    b"HTTPS server" in getattr(resp, "body", b""):
                raise BmctlError(f"registry {self.name} serves HTTPS, not plain HTTP.",
                                 f"write the endpoint as {self.name} or https://{self.name} (and pass --cacert if its "
                                 "CA is not one of the system's).")
            return resp

    def _fail(self, resp: _Response, what: str) -> None:
        text = self._error_text(resp)
        if resp.status == 401:
            self._refused(resp)
        if resp.status == 403:
            raise BmctlError(f"registry {self.name} denied {what} (403{text}).",
                             "give the user pull and push rights on that repository.")
        raise BmctlError(f"registry {self.name}: {what} failed ({resp.status} {resp.reason}{text}).",
                         "check the registry's logs.")

    # -- the registry API --

    def ping(self) -> None:
        """GET /v2/: reachable, speaks the registry API, and takes our credentials (if any)."""
        resp = self.request("GET", "/v2/")
        if resp.status == 404:
            raise BmctlError(f"{self.base} does not serve the registry API (404 on /v2/).",
                             "check the endpoint's host and port.")
        if resp.status != 200:
            self._fail(resp, "GET /v2/")

    def _scope(self, repo: str, push: bool) -> str:
        return f"repository:{self.path(repo)}:{'pull,push' if push else 'pull'}"

    def _repo_url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"/v2/{self.path(repo)}/{kind}/{urllib.parse.quote(ref, safe=':@')}"

    def has_blob(self, repo: str, digest: str, push: bool = False) -> bool:
        resp = self.request("HEAD", self._repo_url(repo, "blobs", digest), self._scope(repo, push))
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        self._fail(resp, f"HEAD blob {digest} of {self.path(repo)}")
        return False

    def push_blob(self, repo: str, digest: str, size: int, data: BinaryIO | bytes) -> None:
        """POST an upload, then one PUT of the whole blob (streamed from `data`)."""
        scope = self._scope(repo, True)
        resp = self.request("POST", f"/v2/{self.path(repo)}/blobs/uploads/", scope, {"Content-Length": "0"}, b"")
        if resp.status != 202 or not resp.header("Location"):
            self._fail(resp, f"starting the upload of blob {digest} to {self.path(repo)}")
        location = urllib.parse.urljoin(self.base + "/", resp.header("Location"))
        url = location + ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        resp = self.request("PUT", url, scope, {"Content-Type": "application/octet-stream",
                                                "Content-Length": str(size)}, data)
        if resp.status not in (201, 204):
            self._fail(resp, f"upload of blob {digest} ({_mib(size)}) to {self.path(repo)}")

    def open_blob(self, repo: str, digest: str):
        """The blob's content as a stream (read it to its end or close it)."""
        resp = self.request("GET", self._repo_url(repo, "blobs", digest), self._scope(repo, False), stream=True)
        if resp.status != 200:
            if resp.status == 404:
                raise BmctlError(f"registry {self.name}: blob {digest} of {self.path(repo)} is not there (404).",
                                 "the registry lost a blob of this image: push the image again.")
            self._fail(resp, f"GET blob {digest} of {self.path(repo)}")
        return resp

    def manifest_digest(self, repo: str, ref: str, push: bool = False) -> str | None:
        """The digest the registry has under `ref` (tag or digest), or None."""
        resp = self.request("HEAD", self._repo_url(repo, "manifests", ref), self._scope(repo, push),
                            {"Accept": ACCEPT})
        if resp.status == 404:
            return None
        if resp.status != 200:
            self._fail(resp, f"HEAD manifest {self.path(repo)}:{ref}")
        digest = resp.header("Docker-Content-Digest")
        if digest is None and _DIGEST.match(ref):
            return ref
        if digest is None:  # a registry that does not say: ask for the manifest itself
            return self.get_manifest(repo, ref)[2]
        return digest

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest by tag or digest; a digest is checked."""
        resp = self.request("GET", self._repo_url(repo, "manifests", ref), self._scope(repo, False),
                            {"Accept": ACCEPT})
        where = f"{self.reference(repo)}{'@' if _DIGEST.match(ref) else ':'}{ref}"
        if resp.status == 404:
            raise BmctlError(f"{where} is not on registry {self.name} (404{self._error_text(resp)}).",
                             "check the image's name and tag.")
        if resp.status != 200:
            self._fail(resp, f"GET manifest {where}")
        if len(resp.body) > MAX_MANIFEST:
            raise BmctlError(f"{where}: the manifest is larger than {_mib(MAX_MANIFEST)}.", "check the registry.")
        digest = _sha256(resp.body)
        if _DIGEST.match(ref) and digest != ref:
            raise BmctlError(f"{where}: the registry served a manifest with digest {digest}; refused.",
                             "the registry serves damaged or tampered content: check it.")
        media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
        media_type, _ = manifest_children(resp.body, media_type, where)
        return resp.body, media_type, digest

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        resp = self.request("PUT", self._repo_url(repo, "manifests", ref), self._scope(repo, True),
                            {"Content-Type": media_type, "Content-Length": str(len(data))}, data)
        if resp.status not in (200, 201, 202):
            self._fail(resp, f"PUT manifest {self.path(repo)}:{ref}")
        return resp.header("Docker-Content-Digest") or _sha256(data)


def copy_image(src: Layout, desc: dict, writer: LayoutWriter, reference: str) -> dict:
    """Copy the image `desc` (a descriptor of `src`'s index, with every manifest and blob under it)
    into `writer`, named `reference` there; the descriptor added."""
    manifests, blobs = _walk(src, desc, reference)
    for digest, size in blobs.items():
        with src.open_blob(digest) as f:
            writer.add_blob(f, digest, size)
    for digest, _, data in manifests:
        writer.add_blob(data, digest)
    digest, media_type, data = manifests[-1]
    return writer.add_image(digest, media_type, len(data), reference, desc.get("platform"))


# -- push -----------------------------------------------------------------------------------------

@dataclass
class ImagePush:
    """One image pushed: unpacks as (reference pushed, digest)."""
    source: str  # the reference in the layout
    reference: str  # where it went: REGISTRY[/NAMESPACE]/REPO:TAG
    digest: str
    blobs_sent: int = 0
    bytes_sent: int = 0
    manifests_sent: int = 0

    @property
    def already(self) -> bool:
        """Every blob and the manifest were there already."""
        return self.blobs_sent == 0 and self.manifests_sent == 0

    def __iter__(self):
        yield self.reference
        yield self.digest


def _walk(layout: Layout, desc: dict, where: str) -> tuple[list[tuple[str, str, bytes]], dict[str, int]]:
    """Manifests under `desc` children first [(digest, media type, bytes)] and blobs {digest: size}."""
    manifests: list[tuple[str, str, bytes]] = []
    blobs: dict[str, int] = {}

    def visit(d: dict) -> None:
        digest = _check_digest(d.get("digest"), where)
        if not layout.has_blob(digest):
            raise BmctlError(f"{layout.where}: {where} names manifest {digest}, which the layout lacks.",
                             "re-create the layout with every manifest of the image (a platform index with "
                             "missing platforms cannot be pushed).")
        data = layout.read_blob(digest)
        if isinstance(d.get("size"), int) and d["size"] != len(data):
            raise BmctlError(f"{layout.where}: {where}: manifest {digest} is {len(data)} bytes, its descriptor "
                             f"says {d['size']}.", "re-create the layout.")
        media_type, children = manifest_children(data, d.get("mediaType", ""), f"{layout.where}: {where}")
        if media_type in INDEX_TYPES:
            for child in children:
                visit(child)
        else:
            for child in children:
                if child.get("urls"):  # foreign layers (Windows base layers) are not pushed
                    continue
                if not layout.has_blob(child["digest"]):
                    raise BmctlError(f"{layout.where}: {where}: blob {child['digest']} is missing.",
                                     "the layout is incomplete: re-create it.")
                if layout.blob_size(child["digest"]) != child["size"]:
                    raise BmctlError(f"{layout.where}: {where}: blob {child['digest']} is "
                                     f"{layout.blob_size(child['digest'])} bytes, its descriptor says {child['size']}.",
                                     "re-create the layout.")
                blobs[child["digest"]] = child["size"]
        if digest not in (m[0] for m in manifests):
            manifests.append((digest, media_type, data))

    visit(desc)
    return manifests, blobs


def push_layout(layout: Layout, registry: Registry,
                mapping: Mapping[str, str] | Callable[[str], str] | None = None,
                on_image: Callable[[ImagePush], None] | None = None, workers: int = WORKERS) -> list[ImagePush]:
    """Push every image of `layout`'s index to `registry`, under its reference without the source
    host (registry.k8s.io/kube-apiserver:v1.34.2 -> kube-apiserver:v1.34.2), or what `mapping`
    (source reference -> REPO:TAG) says. Blobs the registry has are skipped (HEAD); a blob is sent
    with POST + one PUT streamed from the layout; child manifests go before their index; a reference
    with @sha256: is pushed by tag and the registry must answer that digest. Returns one ImagePush
    ((reference pushed, digest)) per image, in the index's order."""
    plans = []
    for desc in layout.images():
        source = (desc.get("annotations") or {}).get(NAME_ANNOTATION)
        if not source:
            raise BmctlError(f"{layout.where}: image {desc.get('digest')} has no {NAME_ANNOTATION} annotation, so "
                             "bmctl cannot tell which repository it goes to.",
                             f"write the layout with bmctl, or annotate each image with {NAME_ANNOTATION}.")
        ref = parse_reference(source)
        target = mapping.get(source) if isinstance(mapping, Mapping) else mapping(source) if mapping else None
        if target:
            repo, tag, digest = _split_target(target)
            digest = digest or ref.digest
        else:
            repo, tag, digest = ref.repo, ref.tag, ref.digest
        if digest and digest != desc["digest"]:
            raise BmctlError(f"{layout.where}: {source} names digest {digest}, but the layout's manifest is "
                             f"{desc['digest']}.", "re-create the layout (its image is not the one named).")
        manifests, blobs = _walk(layout, desc, source)
        plans.append((source, repo, tag, desc, manifests, blobs))

    results = [ImagePush(source, registry.reference(repo, tag, None if tag else desc["digest"]), desc["digest"])
               for source, repo, tag, desc, _, _ in plans]
    lock = threading.Lock()

    def send(repo: str, digest: str, size: int, i: int) -> None:
        if registry.has_blob(repo, digest, push=True):
            return
        with layout.open_blob(digest) as f:
            registry.push_blob(repo, digest, size, f)
        with lock:
            results[i].blobs_sent += 1
            results[i].bytes_sent += size

    def manifests_of(i: int) -> ImagePush:
        source, repo, tag, desc, manifests, _ = plans[i]
        result = results[i]
        for digest, media_type, data in manifests[:-1]:  # children of an index, by digest
            if registry.manifest_digest(repo, digest, push=True) != digest:
                registry.put_manifest(repo, digest, data, media_type)
                result.manifests_sent += 1
        digest, media_type, data = manifests[-1]
        ref = tag or digest
        if registry.manifest_digest(repo, ref, push=True) != digest:
            got = registry.put_manifest(repo, ref, data, media_type)
            result.manifests_sent += 1
            if got != digest:
                raise BmctlError(f"registry {registry.name} stored {source} as {got}, not as the layout's {digest}.",
                                 "the registry rewrites manifests: push to a registry that stores them as sent.")
        if on_image:
            on_image(result)
        return result

    # Every blob upload is queued at once (a few at a time); each image's manifests follow, in the
    # index's order, as soon as its own blobs are in.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs: dict[tuple[str, str], Future] = {}  # (repo, digest) -> its upload
        for i, (_, repo, _, _, _, blobs) in enumerate(plans):
            for digest, size in blobs.items():
                if (repo, digest) not in jobs:
                    jobs[(repo, digest)] = pool.submit(send, repo, digest, size, i)
        try:
            for i, (_, repo, _, _, _, blobs) in enumerate(plans):
                for digest in blobs:
                    jobs[(repo, digest)].result()
                manifests_of(i)
        except BaseException:
            for job in jobs.values():
                job.cancel()
            raise
    return results


def _split_target(target: str) -> tuple[str, str | None, str | None]:
    """REPO[:TAG][@DIGEST] (a mapping's value) as (repo, tag, digest)."""
    rest, _, digest = target.partition("@")
    repo, tag = rest, None
    if ":" in rest[rest.rfind("/") + 1:]:
        repo, tag = rest.rsplit(":", 1)
    if not _REPO.match(repo) or (tag is not None and not _TAG.match(tag)) or (digest and not _DIGEST.match(digest)) \
            or not (tag or digest):
        raise BmctlError(f"{target!r} is not a target REPOSITORY:TAG.", "name where each image goes as REPO:TAG.")
    return repo, tag, digest or None


def _run_all(fn: Callable, items: Iterable, workers: int) -> list:
    """fn over items on a few threads, results in order; the first failure cancels what has not started."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


# -- pull -----------------------------------------------------------------------------------------

_registries: dict[str, Registry] = {}
_registries_lock = threading.Lock()


def default_registry(host: str) -> Registry:
    """How a public host is reached: https://HOST (docker.io: registry-1.docker.io), one client per host."""
    with _registries_lock:
        if host not in _registries:
            _registries[host] = Registry(f"https://{DOCKER_HUB_API if host == DOCKER_HUB else host}")
        return _registries[host]


def _platform(text: str) -> dict:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BmctlError(f"platform {text!r} is not OS/ARCH[/VARIANT].", "write it as linux/amd64.")
    return {"os": parts[0], "architecture": parts[1], **({"variant": parts[2]} if len(parts) == 3 else {})}


def _platform_text(p: dict) -> str:
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def pull(reference: str, writer: LayoutWriter, platform: str | None = "linux/amd64",
         registry_for: Callable[[str], Registry] | None = None, workers: int = WORKERS) -> tuple[str, str]:
    """Pull an image (by tag and/or digest) into `writer`. From an image index, the manifest of
    `platform` is kept (platform=None: the whole index, every platform); each blob is checked against
    its digest and size. A reference with a digest must match what the registry serves (for an index:
    the index's digest, checked before a platform is chosen). The image is named in the layout's
    index.json containerd's way (see LayoutWriter.add_image): io.containerd.image.name = HOST/REPO:TAG
    without any digest, org.opencontainers.image.ref.name = TAG, the digest kept in the descriptor;
    returns (that name, the digest kept: the platform's manifest when one was chosen)."""
    ref = parse_reference(reference)
    registry = registry_for(ref.host) if registry_for else default_registry(ref.host)
    want = _platform(platform) if platform else None
    data, media_type, digest = registry.get_manifest(ref.repo, ref.digest or ref.tag)
    if media_type in INDEX_TYPES and want is not None:
        _, children = manifest_children(data, media_type, str(ref))
        chosen = _choose(children, want, str(ref))
        data, media_type, digest = registry.get_manifest(ref.repo, chosen["digest"])
        if len(data) != chosen["size"]:
            raise BmctlError(f"{ref}: manifest {digest} is {len(data)} bytes, the index says {chosen['size']}; "
                             "refused.",
                             "the registry serves damaged or tampered content: check it.")
        if media_type not in MANIFEST_TYPES:
            raise BmctlError(f"{ref}: the {platform} entry of its index is not an image manifest.",
                             "pull a single-platform image.")
    _fetch_tree(registry, ref, data, media_type, writer, want, workers)
    writer.add_blob(data, digest)
    name = image_name(str(Reference(ref.host, ref.repo, ref.tag)) if ref.tag else str(ref), digest)
    writer.add_image(digest, media_type, len(data), name)
    return name, digest


def _choose(children: list[dict], want: dict, where: str) -> dict:
    def fits(p: dict) -> bool:
        if p.get("os") != want["os"] or p.get("architecture") != want["architecture"]:
            return False
        variant = want.get("variant")
        return variant is None or p.get("variant") in (variant, None if variant == "v8" else variant)

    matches = [c for c in children if fits(c.get("platform") or {})]
    if not matches:
        offered = sorted({_platform_text(c.get("platform") or {}) or "unknown" for c in children})
        raise BmctlError(f"{where} has no image for {_platform_text(want)} (it has {', '.join(offered)}).",
                         "pick an image built for this platform.")
    return matches[0]


def _fetch_tree(registry: Registry, ref: Reference, data: bytes, media_type: str, writer: LayoutWriter,
                want: dict | None, workers: int) -> None:
    """Every blob under a manifest (or, with want=None, under an index: every platform) into `writer`."""
    media_type, children = manifest_children(data, media_type, str(ref))
    if media_type in INDEX_TYPES:
        for child in children:
            child_data, child_type, child_digest = registry.get_manifest(ref.repo, child["digest"])
            if len(child_data) != child["size"]:
                raise BmctlError(f"{ref}: manifest {child_digest} is {len(child_data)} bytes, the index says "
                                 f"{child['size']}; refused.", "the registry serves damaged content: check it.")
            _fetch_tree(registry, ref, child_data, child_type, writer, want, workers)
            writer.add_blob(child_data, child_digest)
        return
    config = children[0]
    layers = [c for c in children[1:] if not c.get("urls")]

    def fetch(desc: dict) -> None:
        if writer.has_blob(desc["digest"]) and writer.blob_size(desc["digest"]) == desc["size"]:
            return
        stream = registry.open_blob(ref.repo, desc["digest"])
        try:
            writer.add_blob(stream, desc["digest"], desc["size"])
        finally:
            stream.close()

    fetch(config)
    if want is not None:
        try:
            cfg = json.loads(writer.read_blob(config["digest"]))
        except ValueError:
            cfg = {}
        got = {"os": cfg.get("os"), "architecture": cfg.get("architecture")}
        if cfg.get("os") and (got["os"], got["architecture"]) != (want["os"], want["architecture"]):
            raise BmctlError(f"{ref} is an image for {_platform_text(got)}, not {_platform_text(want)}.",
                             "pick an image built for this platform.")
    _run_all(fetch, layers, workers)


# -- credentials ----------------------------------------------------------------------------------

def credentials_from_docker_config(path: str | Path, host: str) -> tuple[str, str] | None:
    """(username, password) for `host` (HOST[:PORT], a namespace path or scheme allowed) from a Docker
    config.json (bmctl.config.registries.docker_credentials, the parser the config's
    pullCredentialConfigPath goes through too); None when it names none for that host."""
    try:
        return docker_credentials(Path(path), host)
    except EndpointError as exc:
        raise BmctlError(f"{exc.message}.", f"{exc.fix}.") from None
