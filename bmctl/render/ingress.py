"""The bundled ingress on the ingress VIP: Gateway API (Gateway, HTTPRoute, GRPCRoute) and classic
Ingress, served by Traefik.

Why Traefik: it is maintained (monthly releases), passes the Gateway API conformance suite for the
standard channel's HTTP features (its reports are in gateway-api's conformance/reports/), also serves
classic Ingress objects (users moving off the retired ingress-nginx keep their Ingresses), and it is one
Go binary built from its module here, so the lab runs the real thing. Envoy Gateway and Istio need an
Envoy binary (C++, Bazel); Cilium's Gateway needs Cilium as the CNI; NGINX Gateway Fabric serves no
Ingress objects.

What is deployed (files in apply order, as `--dry-run` writes them under dry-run/cluster/):
- 10-gateway-api-crds.yaml: Gateway API's standard-channel CRDs of GATEWAY_API_VERSION, unchanged,
  and its safe-upgrades ValidatingAdmissionPolicy: the files config/crd/kustomization.yaml of that
  release lists, in its order, each after a '# standard/<file>' line. The release pins each by path and
  sha256 (`manifests:` gateway-api); bmctl/release/upstream.py gets them (bundle, cache, Go module
  cache or module proxy), and no copy is kept in this repository;
- 11-ingress-controller.yaml: namespace bmctl-ingress, Traefik's ServiceAccount and RBAC (the Helm
  chart's rules), the default IngressClass, a DaemonSet on the LB nodes (label
  baremetal.cluster.gke.io/lbnode=true), the LoadBalancer Service pinned to the ingress VIP with
  externalTrafficPolicy: Local (MetalLB announces the VIP only from nodes with a ready Traefik pod,
  and backends see the client's address), and a PodDisruptionBudget;
- 12-ingress-gateway.yaml: the default GatewayClass and Gateway (80 and 443) and the TLS Secret (the
  user's, named by loadBalancer.ingress.tlsSecret in namespace bmctl-ingress, else bmctl's self-signed
  one). Traefik serves a listener's certificate only to clients whose SNI its names cover; bmctl makes
  that Secret Traefik's default certificate too (a file-provider TLS store over the mounted Secret), so
  HTTPS to the VIP by address or by any name gets it, as a listener without hostname means.
"""
from __future__ import annotations

import posixpath

from bmctl import release as releases
from bmctl.config.model import LB_NODE_LABEL, ClusterConfig
from bmctl.config.rules import INGRESS_POOL
from bmctl.release import upstream
from bmctl.render.engine import RenderedFile, render
from bmctl.secrets import ClusterSecrets

GATEWAY_API_VERSION = "v1.6.1"
CRDS = "gateway-api"            # the release's pinned manifest: the standard channel's files
KUSTOMIZATION_DIR = "config/crd"  # where the kustomization that lists them lives in the module
TRAEFIK_VERSION = "v3.7.12"  # the release's `traefik` image: the template follows this version's flags
NAMESPACE = "bmctl-ingress"
NAME = "traefik"
CLUSTER_ROLE = "bmctl-ingress-traefik"
CLASS = "bmctl"                 # the IngressClass (default class) and the GatewayClass
GATEWAY = "bmctl-ingress"
DEFAULT_TLS_SECRET = "bmctl-ingress-self-signed"
DYNAMIC_DIR = "/etc/traefik/dynamic"       # Traefik's file provider: the default TLS store
TLS_DIR = "/etc/traefik/default-tls"       # the Gateway's TLS Secret, mounted
WEB_PORT = 8000                 # Traefik's entry points (its chart's), the Gateway's listener ports
WEBSECURE_PORT = 8443
PING_PORT = 8080
# After SIGTERM, a Traefik pod keeps accepting connections this long, then finishes what is in flight
# within GRACE. Its endpoint turns "terminating" at once, so MetalLB moves the VIP to an LB node with a
# ready pod, while clients that still send to this node are served: /ping keeps answering 200 while
# it terminates (--ping.terminatingStatusCode), so kube-proxy keeps the endpoint as serving.
ACCEPT_GRACE_SECONDS = 5
MEMORY_LIMIT_MIB = 512
GO_MEMORY_LIMIT_MIB = MEMORY_LIMIT_MIB * 9 // 10   # GOMEMLIMIT: 90% of the limit, as Traefik's chart sets it
GRACE_SECONDS = 10
LABELS = {"app.kubernetes.io/name": "traefik", "app.kubernetes.io/instance": "bmctl-ingress",
          "app.kubernetes.io/managed-by": "bmctl"}
SELECTOR = {"app.kubernetes.io/name": "traefik", "app.kubernetes.io/instance": "bmctl-ingress"}
POD_SELECTOR = ",".join(f"{k}={v}" for k, v in SELECTOR.items())
CRDS_FILE = "10-gateway-api-crds.yaml"
CONTROLLER_FILE = "11-ingress-controller.yaml"
GATEWAY_FILE = "12-ingress-gateway.yaml"


def tls_secret(config: ClusterConfig) -> tuple[str, bool]:
    """(name, the user's?) of the Secret (in NAMESPACE) the Gateway serves on 443."""
    named = config.lb.ingress.tlsSecret
    return (named, True) if named else (DEFAULT_TLS_SECRET, False)


def traefik_args() -> list[str]:
    """Traefik's command line (its Helm chart's defaults, and what bmctl adds)."""
    entry = [f"--entryPoints.web.address=:{WEB_PORT}/tcp", f"--entryPoints.websecure.address=:{WEBSECURE_PORT}/tcp",
             "--entryPoints.websecure.http.tls=true", f"--entryPoints.traefik.address=:{PING_PORT}/tcp"]
    for ep in ("web", "websecure", "traefik"):  # traefik: /ping, which must keep answering too
        entry += [f"--entryPoints.{ep}.transport.lifeCycle.requestAcceptGraceTimeout={ACCEPT_GRACE_SECONDS}s",
                  f"--entryPoints.{ep}.transport.lifeCycle.graceTimeOut={GRACE_SECONDS - ACCEPT_GRACE_SECONDS - 1}s"]
    return [*entry, "--ping=true", "--ping.terminatingStatusCode=200", "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false",
            "--log.level=INFO", "--log.noColor=true", "--accesslog=false",
            f"--providers.file.filename={DYNAMIC_DIR}/tls.yaml",
            "--providers.kubernetesingress",
            f"--providers.kubernetesingress.ingressendpoint.publishedservice={NAMESPACE}/{NAME}",
            "--providers.kubernetesgateway",
            f"--providers.kubernetesgateway.statusaddress.service.name={NAME}",
            f"--providers.kubernetesgateway.statusaddress.service.namespace={NAMESPACE}"]


def crds_text(config: ClusterConfig) -> str:
    """The CRD files the release pins, in its (the kustomization's) order, each after a line naming
    it (its path from the kustomization) and followed by `---`."""
    release = releases.of(config)
    manifest = release.manifest(CRDS)
    out = [f"# Gateway API {manifest.version}, standard channel: the files {KUSTOMIZATION_DIR}/kustomization.yaml "
           f"of {manifest.module} lists, in its order,\n# unchanged, each after a '# <file>' line naming it. "
           "Copyright The Kubernetes Authors, licensed under the Apache License 2.0\n# (SPDX: Apache-2.0). Pinned "
           "by sha256 in bmctl's release (manifests: gateway-api).\n"]
    for file, text in zip(manifest.files, upstream.manifest_texts(manifest, releases.bundle_path(config), release)):
        end = "" if text.endswith("\n") else "\n"
        out.append(f"# {posixpath.relpath(file.path, KUSTOMIZATION_DIR)}\n{text}{end}---\n")
    return "".join(out)


def ingress_manifests(config: ClusterConfig, secrets: ClusterSecrets) -> list[RenderedFile]:
    """Cluster-wide manifests of the bundled ingress, named in apply order ([] when it is off)."""
    if not config.runs_ingress:
        return []
    lb_count = len(config.lb_nodes)
    tls_name, user_tls = tls_secret(config)
    controller = render("ingress/traefik.yaml.j2", version=TRAEFIK_VERSION, namespace=NAMESPACE, name=NAME,
                        cluster_role=CLUSTER_ROLE, class_name=CLASS, labels=LABELS, selector=SELECTOR,
                        pod_labels=LABELS, lb_label=LB_NODE_LABEL, image=releases.of(config).image("traefik"),
                        args=traefik_args(), web_port=WEB_PORT, websecure_port=WEBSECURE_PORT, ping_port=PING_PORT,
                        grace_seconds=GRACE_SECONDS, vip=config.lb.vips.ingressVIP, pool=INGRESS_POOL,
                        # one pod may go (a drain, an update) while another LB node keeps serving
                        min_available=max(1, lb_count - 1), tls_secret=tls_name, tls_dir=TLS_DIR,
                        dynamic_dir=DYNAMIC_DIR, memory_mib=MEMORY_LIMIT_MIB, go_memory_mib=GO_MEMORY_LIMIT_MIB)
    gateway = render("ingress/gateway.yaml.j2", class_name=CLASS, gateway=GATEWAY, namespace=NAMESPACE,
                     labels=LABELS, web_port=WEB_PORT, websecure_port=WEBSECURE_PORT,
                     tls_name=tls_name, user_tls=user_tls, cert=secrets.ingress_tls_cert,
                     key=secrets.ingress_tls_key)
    return [RenderedFile(CRDS_FILE, crds_text(config)),
            RenderedFile(CONTROLLER_FILE, controller),
            RenderedFile(GATEWAY_FILE, gateway, mode=0o600 if not user_tls else 0o644, secret=not user_tls)]
