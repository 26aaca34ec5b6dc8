"""The bundled ingress (bmctl/render/ingress.py): Traefik on the LB nodes behind the ingress VIP,
serving Gateway API routes and classic Ingresses. Runs after MetalLB (which gives the ingress
Service its VIP); on a cluster whose config turned the ingress off (`update loadbalancer` with
clusterNetwork.bundledIngress: false), removes it."""
from __future__ import annotations


import bmctl.kube as kubeapi
from bmctl.config.model import LB_NODE_LABEL
from bmctl.errors import BmctlError
from bmctl.kube import Kube, wait
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.phases.drift import changed_objects, put_back
from bmctl.render.engine import documents
from bmctl.render.ingress import (CLASS, CLUSTER_ROLE, GATEWAY, NAME, NAMESPACE, POD_SELECTOR,
                                  ingress_manifests, tls_secret)
from bmctl.state import http_code

WAIT_SECONDS = 300


def _condition(obj: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def _get(kube: Kube, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
    try:
        return kube.dynamic.resources.get(api_version=api_version, kind=kind).get(
            name=name, namespace=namespace).to_dict()
    except kubeapi.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _ready_on(kube: Kube) -> set[str]:
    """The nodes with a Running, Ready Traefik pod."""
    pods = kube.core().list_namespaced_pod(NAMESPACE, label_selector=POD_SELECTOR).items
    return {p.spec.node_name for p in pods if p.status and p.status.phase == "Running" and not
            p.metadata.deletion_timestamp and any(c.type == "Ready" and c.status == "True"
                                                  for c in (p.status.conditions or []))}


def apply_objects(ctx: Context, kube: Kube, objs: list[dict], what: str) -> None:
    for obj in objs:
        kube.apply(obj)
    ctx.progress.note(f"applied {what} ({len(objs)} object(s))")


def remove_ingress(ctx: Context, kube: Kube) -> None:
    """Delete what the ingress phase applied, except the Gateway API CRDs (they hold users' routes)."""
    deletes = [("networking.k8s.io/v1", "IngressClass", CLASS, None),
               ("gateway.networking.k8s.io/v1", "GatewayClass", CLASS, None),
               ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", CLUSTER_ROLE, None),
               ("rbac.authorization.k8s.io/v1", "ClusterRole", CLUSTER_ROLE, None),
               ("v1", "Namespace", NAMESPACE, None)]
    for api_version, kind, name, namespace in deletes:
        try:
            kube.dynamic.resources.get(api_version=api_version, kind=kind).delete(name=name, namespace=namespace)
        except kubeapi.ApiException as exc:
            if exc.status != 404:
                raise
        except Exception as exc:  # noqa: BLE001 - a kind whose CRD is gone: nothing of it to delete
            if type(exc).__name__ != "ResourceNotFoundError":
                raise
    wait(f"namespace {NAMESPACE} (the ingress) to be gone", lambda: _get(kube, "v1", "Namespace", NAMESPACE) is None,
         WAIT_SECONDS, 2)
    ctx.progress.note(f"bundled ingress removed (namespace {NAMESPACE}, its classes and RBAC); the Gateway API "
                      "CRDs stay, with your routes")


class Ingress(Phase):
    name = "ingress"
    title = "Bundled ingress (Traefik: Gateway API and Ingress on the ingress VIP)"

    def _removing(self, ctx: Context) -> bool:
        changes = ctx.options.get("changes")
        return not ctx.config.runs_ingress and changes is not None and changes.applied.runs_ingress

    def applies(self, ctx: Context) -> bool:
        return ctx.config.runs_ingress or self._removing(ctx)

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        if self._removing(ctx):
            return [Step(CLUSTER, f"delete namespace {NAMESPACE} (Traefik, its Service: the ingress VIP is "
                                  f"released), GatewayClass and IngressClass {CLASS}, ClusterRole(Binding) "
                                  f"{CLUSTER_ROLE}; keep the Gateway API CRDs and your routes")]
        steps = [Step(CLUSTER, f"server-side apply {m.path}", [m]) for m in ingress_manifests(config, ctx.secrets)]
        steps.append(Step(CLUSTER, f"wait for Traefik ready on exactly the LB nodes "
                                   f"({', '.join(n.address for n in config.lb_nodes)}), Service {NAMESPACE}/{NAME} "
                                   f"on {config.lb.vips.ingressVIP}, Gateway {NAMESPACE}/{GATEWAY} Programmed, and "
                                   f"an HTTP answer on {config.lb.vips.ingressVIP}:80"))
        return steps

    def run(self, ctx: Context) -> None:
        kube = Kube(ctx.options["kubeconfig_path"])
        if self._removing(ctx):
            remove_ingress(ctx, kube)
            return
        config = ctx.config
        declared: list[dict] = []
        for manifest in ingress_manifests(config, ctx.secrets):
            objs = documents(manifest.content)
            apply_objects(ctx, kube, objs, manifest.path)
            crds = [o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"]
            if crds:
                wait("the Gateway API CRDs to be established", lambda: all(
                    _condition(_get(kube, "apiextensions.k8s.io/v1", "CustomResourceDefinition", n) or {},
                               "Established") for n in crds), 60)
                kube.forget_discovery()
            declared += objs
        # What server-side apply leaves: items another manager added to a list bmctl owns (a Gateway
        # listener, an argument), or fields it set elsewhere. Put the declared object back whole.
        for obj, what in changed_objects(kube, declared):
            put_back(kube, obj)
            ctx.progress.note(f"restored {obj['kind']} {obj['metadata']['name']}: {what}")
        self._wait(ctx, kube)

    def _wait(self, ctx: Context, kube: Kube) -> None:
        from bmctl.phases.dataplane_lb import node_names_by_ip
        config = ctx.config
        vip = config.lb.vips.ingressVIP
        names = node_names_by_ip(kube)
        want = {names[n.ip] for n in config.lb_nodes if n.ip in names}
        state: dict = {}

        def rolled() -> bool:
            ds = _get(kube, "apps/v1", "DaemonSet", NAME, NAMESPACE) or {}
            status = ds.get("status", {})
            state["on"] = _ready_on(kube)
            return (status.get("observedGeneration", 0) >= ds.get("metadata", {}).get("generation", 1)
                    and status.get("updatedNumberScheduled") == status.get("desiredNumberScheduled") == len(want)
                    and state["on"] == want)

        try:
            wait(f"Traefik ready on exactly the {len(want)} LB node(s) {', '.join(sorted(want))}", rolled,
                 WAIT_SECONDS, 2)
        except BmctlError as exc:
            raise BmctlError(f"{exc.message}; ready on: {', '.join(sorted(state.get('on', []))) or 'none'}",
                             f"kubectl -n {NAMESPACE} describe pods -l {POD_SELECTOR} (and their logs) shows why; "
                             f"nodes must carry {LB_NODE_LABEL}=true. Re-run the same command to continue.") from None

        def has_vip() -> bool:
            svc = kube.core().read_namespaced_service(NAME, NAMESPACE)
            ing = (svc.status.load_balancer.ingress or []) if svc.status and svc.status.load_balancer else []
            return any(i.ip == vip for i in ing)
        wait(f"Service {NAMESPACE}/{NAME} to get the ingress VIP {vip} from MetalLB", has_vip, WAIT_SECONDS, 2)

        def programmed() -> dict | None:
            gw = _get(kube, "gateway.networking.k8s.io/v1", "Gateway", GATEWAY, NAMESPACE) or {}
            return gw if _condition(gw, "Programmed") else None
        gw = wait(f"Gateway {NAMESPACE}/{GATEWAY} to be Programmed by Traefik", programmed, WAIT_SECONDS, 2)
        tls_name, user_tls = tls_secret(config)
        https = next((lst for lst in gw.get("status", {}).get("listeners", []) if lst.get("name") == "https"), {})
        if user_tls and not any(c.get("type") == "ResolvedRefs" and c.get("status") == "True"
                                for c in https.get("conditions", [])):
            ctx.progress.note(f"warning: the TLS Secret {NAMESPACE}/{tls_name} (spec.loadBalancer.ingress.tlsSecret) "
                              "is missing or not a kubernetes.io/tls Secret: port 443 serves Traefik's self-signed "
                              f"certificate until you create it (kubectl -n {NAMESPACE} create secret tls {tls_name} "
                              "--cert=FILE --key=FILE)")
        host = ctx.inventory[config.lb_nodes[0].address]

        url = f"http://{vip}/" if ":" not in vip else f"http://[{vip}]/"
        code = wait(f"an HTTP answer on the ingress VIP {vip}:80", lambda: http_code(host, url), 60, 1)
        ctx.progress.note(f"ingress ready: Traefik on {len(want)} LB node(s), {vip}:80 answers (HTTP {code} "
                          f"without a route), Gateway {NAMESPACE}/{GATEWAY} and IngressClass {CLASS} ready")
