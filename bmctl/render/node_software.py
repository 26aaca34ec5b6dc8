"""The node software's configuration: pure renderers (config + release + facts -> files).

containerd (config.toml with the sandbox image, the cgroup driver, registry mirrors as hosts.toml
files with their CAs, and registry credentials), and with the bundle as source the
units of containerd and the kubelet (upstream's, the binaries in /usr/local) and kubeadm's drop-in;
spec.proxy as drop-ins for both units. With the package manager as source, the packages bring the
units; bmctl writes the rest.
"""
from __future__ import annotations

import hashlib

from bmctl.config.model import ClusterConfig
from bmctl.config.registries import RegistryAccess, no_proxy
from bmctl.render.engine import RenderedFile, render
from bmctl.render.facts import NodeFacts

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CERTS_DIR = "/etc/containerd/certs.d"
CONTAINERD_UNIT = "/etc/systemd/system/containerd.service"
KUBELET_UNIT = "/etc/systemd/system/kubelet.service"
KUBEADM_DROPIN = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
PROXY_DROPINS = {"containerd": "/etc/systemd/system/containerd.service.d/http-proxy.conf",
                 "kubelet": "/etc/systemd/system/kubelet.service.d/http-proxy.conf"}
UPSTREAM_DEFAULT_SERVER = {"docker.io": "https://registry-1.docker.io"}


def cgroup_driver(facts: list[NodeFacts]) -> str:
    """systemd when every node's init is systemd (what Kubernetes recommends there), else cgroupfs:
    one driver for the whole cluster (kubeadm keeps one KubeletConfiguration for all nodes)."""
    return "systemd" if facts and all(f.init == "systemd" for f in facts) else "cgroupfs"


def _host_dir(host: str) -> str:
    """containerd's certs.d folder name for a host (a port is written host:port, as containerd wants)."""
    return host.replace("/", "_")


def ca_file(host: str, url: str) -> str:
    return f"{CERTS_DIR}/{_host_dir(host)}/ca-{hashlib.sha256(url.encode()).hexdigest()[:8]}.crt"


def containerd_files(config: ClusterConfig, sandbox_image: str, facts: NodeFacts, driver: str,
                     access: RegistryAccess) -> list[RenderedFile]:
    credentials = list(access.credentials)
    out = [RenderedFile(CONTAINERD_CONFIG, render(
        "containerd/config.toml.j2", cluster=config.name, sandbox_image=sandbox_image,
        systemd_cgroup=driver == "systemd", restrict_oom_score_adj=not facts.cap_sys_resource,
        credentials=credentials), mode=0o600 if credentials else 0o644, secret=bool(credentials))]
    for h in access.hosts:
        mirrors = []
        for r in h.routes:
            ca = ca_file(h.host, r.url) if r.ca_pem else None
            if ca:
                out.append(RenderedFile(ca, r.ca_pem))
            mirrors.append({"url": r.url, "mirror": r.mirror, "ca_file": ca, "override_path": r.override_path})
        server = UPSTREAM_DEFAULT_SERVER.get(h.host, f"https://{h.host}")
        out.append(RenderedFile(f"{CERTS_DIR}/{_host_dir(h.host)}/hosts.toml", render(
            "containerd/hosts.toml.j2", cluster=config.name, host=h.host, server=server, mirrors=mirrors)))
    return out


def proxy_env(config: ClusterConfig) -> list[tuple[str, str]]:
    if config.spec.proxy is None:
        return []
    url, skip = config.spec.proxy.url, ",".join(no_proxy(config))
    return [("HTTP_PROXY", url), ("HTTPS_PROXY", url), ("NO_PROXY", skip),
            ("http_proxy", url), ("https_proxy", url), ("no_proxy", skip)]


def proxy_files(config: ClusterConfig) -> list[RenderedFile]:
    env = proxy_env(config)
    if not env:
        return []
    secret = "@" in config.spec.proxy.url  # user:password@ in the URL
    return [RenderedFile(path, render("node/http-proxy.conf.j2", cluster=config.name, unit=unit, env=env),
                         mode=0o600 if secret else 0o644, secret=secret)
            for unit, path in PROXY_DROPINS.items()]


def unit_files(containerd_version: str) -> list[RenderedFile]:
    """The units the bundle's binaries need (packages bring their own)."""
    return [RenderedFile(CONTAINERD_UNIT, render("containerd/containerd.service.j2", version=containerd_version)),
            RenderedFile(KUBELET_UNIT, render("kubelet/kubelet.service.j2")),
            RenderedFile(KUBEADM_DROPIN, render("kubelet/10-kubeadm.conf.j2"))]
