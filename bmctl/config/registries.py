"""Registry endpoints, credentials and proxies as the config names them (pure; no network).

Google bmctl's `registryMirrors[].endpoint` is `HOST:PORT` or `https://HOST:PORT`, optionally with a
namespace: `HOST:PORT/v2/NAMESPACE` (the `/v2` is required then). bmctl also takes `http://` for a
registry that serves plain HTTP (a lab, or a registry behind a trusted network), which containerd
supports. Credentials come from a Docker `config.json` (`auths.HOST.auth` = base64 "user:password",
or `username` + `password`), the format of Google's `pullCredentialConfigPath`.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

HOST = re.compile(r"^(?=.{1,253}(:|$))[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
                  r"(:[0-9]{1,5})?$")
IPV6_HOST = re.compile(r"^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
NAMESPACE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


class EndpointError(ValueError):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message, self.fix = message, fix


@dataclass(frozen=True)
class Endpoint:
    scheme: str       # "https" or "http"
    host: str         # HOST or HOST:PORT (as containerd and Docker config.json key it)
    namespace: str    # "" or "team/images"

    @property
    def url(self) -> str:
        """The registry's base URL as containerd's hosts.toml names it (with /v2/NAMESPACE when set)."""
        return f"{self.scheme}://{self.host}" + (f"/v2/{self.namespace}" if self.namespace else "")

    @property
    def port(self) -> int:
        tail = self.host.rsplit("]", 1)[-1]
        return int(tail.rsplit(":", 1)[1]) if ":" in tail else (443 if self.scheme == "https" else 80)

    @property
    def hostname(self) -> str:
        tail = self.host.rsplit("]", 1)[-1]
        if self.host.startswith("["):
            return self.host[1:self.host.index("]")]
        return tail.rsplit(":", 1)[0] if ":" in tail else tail


def valid_host(host: str) -> bool:
    return bool(HOST.match(host) or IPV6_HOST.match(host))


def parse_endpoint(endpoint: str) -> Endpoint:
    text = endpoint.strip()
    scheme = "https"
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme not in ("https", "http"):
            raise EndpointError(f"{endpoint!r} has scheme {scheme!r}",
                                "write https://HOST:PORT (or HOST:PORT, which means https), or http:// for a "
                                "registry that serves plain HTTP")
    host, _, path = text.partition("/")
    if not valid_host(host):
        raise EndpointError(f"{endpoint!r} does not start with a registry host",
                            "write HOST:PORT, e.g. 10.200.0.5:5000 or registry.example.com")
    port = host.rsplit("]", 1)[-1]
    if ":" in port and not 0 < int(port.rsplit(":", 1)[1]) < 65536:
        raise EndpointError(f"{endpoint!r} has no valid port", "use a port from 1 to 65535")
    namespace = ""
    if path.strip("/"):
        if not path.startswith("v2/") or not NAMESPACE.match(path[3:].strip("/")):
            raise EndpointError(f"{endpoint!r}: a namespace must be written /v2/NAMESPACE",
                                "write HOST:PORT/v2/NAMESPACE (the /v2 is required), or drop the path")
        namespace = path[3:].strip("/")
    return Endpoint(scheme, host, namespace)


DOCKER_HUB_KEYS = {"docker.io", "index.docker.io", "registry-1.docker.io"}


def _auths_host(key: str) -> str:
    """The host of a Docker config `auths` key or of an endpoint (HOST, https://HOST/v1/, HOST/v2/ns)."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0].lower()


def docker_credentials(path: Path, host: str) -> tuple[str, str] | None:
    """(user, password) for `host` (HOST[:PORT]; a scheme or namespace path is ignored) in a Docker
    config.json: `auths.HOST.auth` (base64 of user:password) or `username` + `password` (Docker
    Hub's keys are aliases of each other); None when it names no credential for that host.

    Raises EndpointError when the file cannot be read or is not a Docker config."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EndpointError(f"credential file {path} does not exist",
                            "point at a Docker config.json (e.g. ~/.docker/config.json after `docker login`)") from None
    except OSError as exc:
        raise EndpointError(f"cannot read {path}: {exc.strerror}", "check its path and permissions") from None
    except ValueError as exc:
        raise EndpointError(f"{path} is not JSON ({exc})", "write it as Docker does: "
                            "{\"auths\": {\"HOST:PORT\": {\"auth\": \"base64 of user:password\"}}}") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise EndpointError(f"{path} has no `auths` mapping", "write it as Docker does: "
                            "{\"auths\": {\"HOST:PORT\": {\"auth\": \"base64 of user:password\"}}}")
    want = _auths_host(host)
    wanted = DOCKER_HUB_KEYS if want in DOCKER_HUB_KEYS else {want}
    for key, entry in auths.items():
        if _auths_host(key) not in wanted or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = user = ""
            if not sep or not user:
                raise EndpointError(f"{path}: auths.{key}.auth is not the base64 of USER:PASSWORD",
                                    "write it as the output of `printf %s USER:PASSWORD | base64 -w0`")
            return user, password
        if entry.get("username") and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
    return None


@dataclass(frozen=True)
class ProxyURL:
    scheme: str
    host: str
    port: int
    has_credentials: bool


def parse_proxy(url: str) -> ProxyURL:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(f"{url!r} is not an http:// or https:// proxy URL",
                            "write it as http://HOST:PORT (Google's format), e.g. http://proxy.example.com:3128")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EndpointError(f"{url!r} has no valid port", "use a port from 1 to 65535") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or any(c in url for c in " \"'\n,"):
        raise EndpointError(f"{url!r} is not a plain proxy URL", "write only scheme, host and port "
                            "(and user:password@ if the proxy needs it)")
    return ProxyURL(parts.scheme, parts.hostname, port, parts.username is not None)


# -- what the nodes get: read from the workstation's files once, rendered by render/node_software ----
@dataclass(frozen=True)
class Route:
    """One place containerd may pull a registry host's images from."""
    url: str                  # https://10.0.0.5:5000, or with /v2/NAMESPACE
    mirror: bool              # a mirror (pull, resolve) or the registry itself
    override_path: bool       # the URL carries the /v2/NAMESPACE path itself
    ca_pem: str | None        # the CA that signs its certificate (from caCertPath)


@dataclass(frozen=True)
class HostAccess:
    host: str                 # as images name it: registry.k8s.io, docker.io, 10.0.0.5:5000
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class RegistryAccess:
    hosts: tuple[HostAccess, ...] = ()
    credentials: tuple[tuple[str, tuple[str, str]], ...] = ()   # endpoint host -> (user, password)

    def endpoints(self) -> list[Endpoint]:
        """Every registry endpoint the nodes pull from (mirrors and private registries), once each."""
        seen: dict[str, Endpoint] = {}
        for h in self.hosts:
            for r in h.routes:
                e = parse_endpoint(r.url)
                seen.setdefault(e.host, e)
        return list(seen.values())


def access(config) -> RegistryAccess:
    """The registry mirrors (header) and private registries (nodeConfig) of a loaded config, with the
    CA certificates and credentials they name read from the workstation (checked by the loader)."""
    def read(path: str | None) -> str | None:
        return None if path is None else Path(config.workstation_file(path)).read_text()

    hosts: dict[str, list[Route]] = {}
    creds: dict[str, tuple[str, str]] = {}

    def credential(path: str | None, host: str) -> None:
        found = docker_credentials(Path(config.workstation_file(path)), host) if path else None
        if found:
            creds[host] = found

    for m in config.header.registryMirrors:
        e = parse_endpoint(m.endpoint)
        route = Route(e.url, True, bool(e.namespace), read(m.caCertPath))
        for host in m.hosts or ["docker.io"]:
            hosts.setdefault(host, []).append(route)
        credential(m.pullCredentialConfigPath, e.host)
    for reg in config.spec.nodeConfig.privateRegistries:
        ca = read(reg.caCertPath)
        if ca is not None or reg.host not in hosts:
            hosts.setdefault(reg.host, []).append(Route(f"https://{reg.host}", False, False, ca))
        credential(reg.pullCredentialConfigPath, reg.host)
    return RegistryAccess(tuple(HostAccess(h, tuple(r)) for h, r in hosts.items()), tuple(creds.items()))


def no_proxy(config) -> list[str]:
    """spec.proxy.noProxy plus what must never go through the proxy: loopback, the cluster's pod and
    Service CIDRs and DNS suffixes, the VIPs, every node address, and the registry mirrors (a site's
    own registry, reached directly like the nodes)."""
    net = config.spec.clusterNetwork
    vips = [config.lb.vips.controlPlaneVIP, config.lb.vips.ingressVIP]
    nodes = [a for n in config.all_nodes for a in (n.address, n.k8sIP) if a]
    mirrors = [parse_endpoint(m.endpoint).hostname for m in config.header.registryMirrors]  # validated
    auto = ["localhost", "127.0.0.1", "::1", *net.pods.cidrBlocks, *net.services.cidrBlocks,
            ".svc", ".svc.cluster.local", *[v for v in vips if v], *nodes, *mirrors]
    user = config.spec.proxy.noProxy if config.spec.proxy else []
    return list(dict.fromkeys([*user, *auto]))
