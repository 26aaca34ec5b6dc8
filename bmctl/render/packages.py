"""Node software from the node's package manager: pure renderers (no SSH, no I/O besides templates).

One source of the software bmctl installs on a node (containerd, runc, the CNI plugins, crictl, kubelet,
kubeadm and kubectl): Kubernetes' own package repositories (pkgs.k8s.io, one per minor version) for the
Kubernetes packages, pinned and held, and containerd from the distribution (Debian/Ubuntu) or from
Docker's repository (containerd.io, RHEL family). `plan()` gives the files to write and a POSIX sh script
to run as root after them; the script is idempotent and never upgrades or downgrades a package.

Upstream sources this follows (checked when it was written):
- Installing kubeadm, https://kubernetes.io/docs/setup/production-environment/tools/kubeadm/install-kubeadm/
  (keyring /etc/apt/keyrings/kubernetes-apt-keyring.gpg from .../deb/Release.key, dearmored; the
  `deb [signed-by=...] https://pkgs.k8s.io/core:/stable:/vX.Y/deb/ /` line; `apt-mark hold kubelet kubeadm
  kubectl`; the yum repository with `exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni` and
  `--disableexcludes=kubernetes`; SELinux set permissive, which bmctl does not do, see `plan`).
- Changing The Kubernetes Package Repository,
  https://kubernetes.io/docs/tasks/administer-cluster/kubeadm/change-package-repository/ (one repository
  per minor version, same file names and URLs).
- pkgs.k8s.io package metadata, https://github.com/kubernetes/release cmd/krel/templates/latest/metadata.yaml:
  kubeadm >= 1.32 depends on nothing (so cri-tools is installed explicitly), kubelet >= 1.28 depends on
  kubernetes-cni >= 1.2.0. Debian versions carry the revision "-1.1" (e.g. 1.34.2-1.1).
- Docker's RHEL repository (docker-ce.repo): https://docs.docker.com/engine/install/rhel/
- dnf's repository options (proxy, proxy_username, proxy_password):
  https://dnf.readthedocs.io/en/latest/conf_ref.html
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from bmctl.render.engine import RenderedFile, render

DEBIAN = "debian"
RHEL = "rhel"
FAMILIES = (DEBIAN, RHEL)

_DEBIAN_IDS = ("debian", "ubuntu")
_RHEL_IDS = ("rhel", "centos", "rocky", "almalinux", "fedora", "ol")

PKGS_HOST = "pkgs.k8s.io"
APT_KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
APT_SOURCE = "/etc/apt/sources.list.d/kubernetes.list"
APT_PROXY = "/etc/apt/apt.conf.d/90bmctl-proxy"
DNF_KUBERNETES_REPO = "/etc/yum.repos.d/kubernetes.repo"
DNF_DOCKER_REPO = "/etc/yum.repos.d/docker-ce.repo"
DOCKER_HOST = "download.docker.com"
DOCKER_DISTROS = ("rhel", "centos", "fedora")

# The packages bmctl takes from pkgs.k8s.io, all pinned and held.
KUBERNETES_PACKAGES = ("kubelet", "kubeadm", "kubectl")
PAIRED_PACKAGES = ("cri-tools", "kubernetes-cni")
# Revision of every package on pkgs.k8s.io's Debian repositories (kubelet 1.34.2-1.1, cri-tools 1.34.0-1.1).
DEBIAN_REVISION = "-1.1"
# cri-tools and kubernetes-cni versions are not derived from the Kubernetes version: each minor's
# repository carries the builds SIG Release put there. Verified pairings only (the repositories keep
# every version they ever published, so a pin stays installable):
#   v1.34: cri-tools 1.34.0, kubernetes-cni 1.7.1 (an apt install of kubelet 1.34.x from the v1.34 repository
#   pulls kubernetes-cni 1.7.1-1.1; dnf on Rocky shows cri-tools 1.34.0 and kubernetes-cni 1.7.1).
# For a minor not listed here the two are installed at whatever version its repository pairs, when missing,
# and held there: the plan lists them in `unpinned` (add the minor here once its repository was looked at).
PAIRINGS: dict[str, dict[str, str]] = {
    "v1.34": {"cri-tools": "1.34.0", "kubernetes-cni": "1.7.1"},
}

_VERSION = re.compile(r"^v(1)\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$")
# Characters RFC 3986 allows in a URL; anything else (spaces, quotes, backslashes, control characters)
# is refused rather than escaped, for apt.conf, dnf's ini files and the shell alike.
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")
# A noProxy entry: a host name, a domain (.example.com), an address, a CIDR, "*", optionally a :port.
_NO_PROXY_ENTRY = re.compile(r"^[A-Za-z0-9.\-_*:/\[\]]+$")
# What apt can bypass by name: Acquire::http::Proxy::HOST "DIRECT" matches that exact host only.
_APT_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class PackagePlan:
    """The package manager's part of a node: write `files`, then run `script` as root (`sh -c`)."""

    family: str                 # "debian" or "rhel"
    files: list[RenderedFile]   # repository definitions (and the proxy, when given)
    script: str                 # POSIX sh (set -eu), idempotent; its last stdout line is
                                # "bmctl: changed: ..." or "bmctl: unchanged"
    packages: dict[str, str]    # package name -> exact version installed (Debian "1.34.2-1.1"; RPM %{VERSION} "1.34.2")
    unpinned: tuple[str, ...] = ()  # installed when missing, at the version the repository offers (containerd...)
    notes: tuple[str, ...] = ()     # what the plan deliberately does not do, for the operator


def os_family(os_release: dict[str, str]) -> str | None:
    """"debian" for ID/ID_LIKE debian or ubuntu, "rhel" for rhel/centos/rocky/almalinux/fedora/ol
    (ID or ID_LIKE), else None. ID decides before ID_LIKE."""
    ids = _ids(os_release)
    for i in ids:
        if i in _DEBIAN_IDS:
            return DEBIAN
        if i in _RHEL_IDS:
            return RHEL
    return None


def docker_distro(os_release: dict[str, str]) -> str:
    """Which of Docker's RPM repositories serves this node: "fedora", "centos", else "rhel" (RHEL,
    Rocky, AlmaLinux, Oracle Linux: Docker builds for RHEL and its binary-compatible relatives)."""
    ids = _ids(os_release)
    if ids and ids[0] in ("fedora", "centos"):
        return ids[0]
    return "rhel"


def minor(kubernetes: str) -> str:
    """ "v1.34.2" -> "v1.34"; ValueError for anything but vMAJOR.MINOR.PATCH of Kubernetes 1."""
    m = _VERSION.fullmatch(kubernetes) if isinstance(kubernetes, str) else None
    if not m:
        raise ValueError(f"{kubernetes!r} is not a Kubernetes version: write it like 'v1.34.2'")
    return f"v{m[1]}.{m[2]}"


def plan(family: str, kubernetes: str, proxy_url: str | None = None, no_proxy: list[str] = (), *,
         docker_distro: str = "rhel") -> PackagePlan:
    """The files and script that install Kubernetes `kubernetes`'s node packages with the node's
    package manager. `proxy_url` (http:// or https://, credentials allowed) is what apt and dnf go
    through; hosts in `no_proxy` are reached directly where the tool can express it. `docker_distro`
    (RHEL family only) picks Docker's repository, see `docker_distro()`.

    Decisions: containerd (and runc) are not held: they come from the distribution (Debian/Ubuntu) or
    Docker, whose security updates should keep reaching the node, and Kubernetes ties no version rule to
    them the way it ties kubelet/kubeadm/kubectl to the control plane (upstream holds only those). The
    script installs containerd only when missing, so a re-run never moves it. On Debian cri-tools and
    kubernetes-cni are held along with kubelet/kubeadm/kubectl (upstream's apt instructions hold only
    those three, its dnf ones exclude all five): they come from the minor's repository at pinned versions
    too, and a minor upgrade unholds them the way it unholds kubeadm. SELinux is left as it is.
    """
    if family not in FAMILIES:
        raise ValueError(f"{family!r} is not a package family bmctl knows: use one of {', '.join(FAMILIES)}")
    series = minor(kubernetes)
    version = kubernetes[1:]
    proxy = _proxy(proxy_url) if proxy_url is not None else None
    bypass = _no_proxy(no_proxy) if proxy is not None else []
    paired = PAIRINGS.get(series, {})
    unpaired = tuple(p for p in PAIRED_PACKAGES if p not in paired)
    pins = {**{p: version for p in KUBERNETES_PACKAGES}, **paired}
    base = f"https://{PKGS_HOST}/core:/stable:/{series}"
    notes = ["Services are not touched: containerd's configuration (the CRI plugin, the systemd cgroup driver) "
             "and enabling containerd and the kubelet are later steps. Debian's packages start containerd and "
             "the kubelet on install; the RPMs start neither."]
    if unpaired:
        notes.append(f"No verified cri-tools/kubernetes-cni pairing for {series}: " + ", ".join(unpaired) +
                     " are installed when missing at the version the repository offers, then held.")
    if family == DEBIAN:
        packages = {p: v + DEBIAN_REVISION for p, v in pins.items()}
        files = [RenderedFile(APT_SOURCE, render("packages/kubernetes.list.j2", minor=series, keyring=APT_KEYRING,
                                                 repo=f"{base}/deb/"))]
        if proxy is not None:
            direct = [h for h in bypass if _APT_HOST.fullmatch(h)]
            skipped = [h for h in bypass if not _APT_HOST.fullmatch(h)]
            files.append(_maybe_secret(APT_PROXY, render("packages/apt-proxy.conf.j2", url=proxy.url_with_userinfo,
                                                         direct=direct), proxy))
            if skipped:
                notes.append("apt bypasses the proxy for exact host names only; these noProxy entries still go "
                             "through it for apt: " + ", ".join(skipped))
            notes.append(f"{APT_PROXY} is the proxy of every apt source on the node, the distribution's included.")
        script = render("packages/install-debian.sh.j2", kubernetes=_q(kubernetes), minor=_q(series),
                        keyring=_q(APT_KEYRING), key_url=_q(f"{base}/deb/Release.key"),
                        apt_proxy_file=_q(APT_PROXY) if proxy is not None else "",
                        curl_noproxy=(" --noproxy " + _q(",".join(bypass))) if bypass else "",
                        pinned=[(_q(p), _q(v)) for p, v in packages.items()], unpinned=[_q(p) for p in unpaired])
        unpinned = (*unpaired, "containerd", "runc")
    else:
        if docker_distro not in DOCKER_DISTROS:
            raise ValueError(f"{docker_distro!r} is not one of Docker's RPM repositories: "
                             f"use one of {', '.join(DOCKER_DISTROS)}")
        if proxy is not None and re.search(r"[$\\]", proxy.username + proxy.password):
            # libdnf expands $variables (and, in newer versions, \-escapes) in every repository option.
            raise ValueError("dnf would expand '$' and '\\' in the proxy credentials: use a proxy account "
                             "whose user name and password hold neither")
        packages = dict(pins)

        def repo_proxy(host: str) -> _Proxy | None:
            if proxy is None:
                return None
            return _DIRECT if _bypassed(host, bypass) else proxy

        k8s_proxy, docker_proxy = repo_proxy(PKGS_HOST), repo_proxy(DOCKER_HOST)
        files = [
            _maybe_secret(DNF_KUBERNETES_REPO, render("packages/kubernetes.repo.j2", minor=series, repo=f"{base}/rpm/",
                                                      gpgkey=f"{base}/rpm/repodata/repomd.xml.key", proxy=k8s_proxy),
                          k8s_proxy),
            _maybe_secret(DNF_DOCKER_REPO, render("packages/docker-ce.repo.j2", distro=docker_distro,
                                                  proxy=docker_proxy), docker_proxy),
        ]
        notes.append("SELinux is left as it is. Kubernetes' install page sets it permissive (\"effectively "
                     "disabling it\"); bmctl does not change a node's security posture on its own. With SELinux "
                     "enforcing, containerd.io needs container-selinux (the distribution's AppStream).")
        if proxy is not None:
            notes.append("The proxy is set on bmctl's two repositories only; the distribution's repositories "
                         "(container-selinux comes from AppStream) use the node's own dnf configuration.")
        script = render("packages/install-rhel.sh.j2", kubernetes=_q(kubernetes), minor=_q(series),
                        pinned=[(_q(p), _q(v)) for p, v in packages.items()], unpinned=[_q(p) for p in unpaired])
        unpinned = (*unpaired, "containerd.io")
    return PackagePlan(family=family, files=files, script=script, packages=packages, unpinned=unpinned,
                       notes=tuple(notes))


@dataclass(frozen=True)
class _Proxy:
    url: str                     # scheme://host[:port], no credentials ("" = go direct)
    username: str = ""           # decoded
    password: str = ""           # decoded
    url_with_userinfo: str = ""  # as given (percent-encoded credentials), for apt

    @property
    def secret(self) -> bool:
        return bool(self.username or self.password)


_DIRECT = _Proxy(url="")


def _proxy(url: str) -> _Proxy:
    if not isinstance(url, str) or not _URL_CHARS.fullmatch(url):
        raise ValueError("the proxy is not a URL (it has spaces, quotes or characters a URL cannot hold); "
                         "write it like http://proxy.example:3128, percent-encoding credentials")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the proxy URL has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the proxy must be an http:// or https:// URL with a host, like http://proxy.example:3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the proxy URL must be scheme://[user:password@]host[:port] (no path, query or fragment)")
    username, password = unquote(parts.username or ""), unquote(parts.password or "")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username + password):
        raise ValueError("the proxy credentials hold control characters")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    base = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return _Proxy(url=base, username=username, password=password, url_with_userinfo=url)


def _no_proxy(entries) -> list[str]:
    if isinstance(entries, str):
        entries = entries.split(",")
    out = []
    for entry in entries:
        if not isinstance(entry, str) or not _NO_PROXY_ENTRY.fullmatch(entry.strip()):
            raise ValueError(f"{entry!r} is not a noProxy entry: use host names, .domains, addresses or CIDRs")
        if entry.strip() not in out:
            out.append(entry.strip())
    return out


def _bypassed(host: str, entries: list[str]) -> bool:
    """Whether curl's (and libcurl's) no_proxy rules send `host` direct: "*", the host itself or a parent domain."""
    for entry in entries:
        name = entry.lstrip(".").lower()
        if entry == "*" or host == name or host.endswith("." + name):
            return True
    return False


def _maybe_secret(path: str, content: str, proxy: _Proxy | None) -> RenderedFile:
    """A file that holds proxy credentials is readable by root only."""
    if proxy is not None and proxy.secret:
        return RenderedFile(path, content, mode=0o600, secret=True)
    return RenderedFile(path, content, mode=0o644)


def _q(value: str) -> str:
    return shlex.quote(value)


def _ids(os_release: dict[str, str]) -> list[str]:
    def clean(v: object) -> str:
        return str(v or "").strip().strip("\"'").lower()
    return [i for i in [clean(os_release.get("ID")), *clean(os_release.get("ID_LIKE")).split()] if i]
