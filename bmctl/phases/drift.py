"""Drift of the MetalLB and ingress objects bmctl owns: hand edits found by comparing the declared
objects with the live ones, and the declared state restored. Users must never edit these objects by hand;
`bmctl update loadbalancer` shows what was changed and puts it back."""
from __future__ import annotations

import base64
from dataclasses import dataclass


import bmctl.kube as kubeapi
from bmctl.config.addresses import parse_ip, parse_pool_entry
from bmctl.config.model import ClusterConfig
from bmctl.kube import Kube
from bmctl.render import metallb_manifests
from bmctl.render.engine import documents
from bmctl.render.ingress import ingress_manifests
from bmctl.render.metallb import NAMESPACE, address_pools
from bmctl.secrets import ClusterSecrets

# MetalLB configuration kinds: in metallb-system, only the ones bmctl declares may exist.
CONFIG_KINDS = ("IPAddressPool", "L2Advertisement", "BGPAdvertisement", "BGPPeer", "BFDProfile", "Community")
CONFIG_API = {"BGPPeer": "metallb.io/v1beta2"}


@dataclass(frozen=True)
class Drift:
    kind: str
    name: str
    what: str                   # one line for the user (never a secret value)
    action: str                 # "apply" (re-apply declared), "delete" (undeclared object), "strip" (extra fields)
    fields: tuple = ()          # for "strip": the spec keys to remove



def declared_objects(config: ClusterConfig, secrets: ClusterSecrets) -> list[dict]:
    manifests = metallb_manifests(config, secrets) + ingress_manifests(config, secrets)
    return [d for m in manifests for d in documents(m.content)]


def _differs(want: object, live: object, path: str = "") -> str | None:
    """The first path where `live` does not hold `want` (extra live keys are defaults, not drift)."""
    if isinstance(want, dict):
        if not isinstance(live, dict):
            return path or "."
        for key, value in want.items():
            where = _differs(value, live.get(key), f"{path}.{key}" if path else key)
            if where:
                return where
        return None
    if isinstance(want, list):
        if not isinstance(live, list) or len(want) != len(live):
            return path
        for i, (w, v) in enumerate(zip(want, live)):
            where = _differs(w, v, f"{path}[{i}]")
            if where:
                return where
        return None
    return None if want == live else path


def _live(kube: Kube, obj: dict) -> dict | None:
    from kubernetes.dynamic.exceptions import ResourceNotFoundError
    try:
        resource = kube.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    except ResourceNotFoundError:  # its CRD is not installed (yet): no such object
        return None
    try:
        return resource.get(name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace")).to_dict()
    except kubeapi.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def find_drift(kube: Kube, config: ClusterConfig, secrets: ClusterSecrets) -> list[Drift]:
    """Every difference between the declared MetalLB objects and the cluster, nothing changed."""
    declared = declared_objects(config, secrets)
    return _changed(kube, declared) + _undeclared(kube, declared)


def undeclared_drift(kube: Kube, config: ClusterConfig, secrets: ClusterSecrets) -> list[Drift]:
    """What re-applying the declared objects does not undo: undeclared objects and added spec fields
    (one list call per MetalLB configuration kind)."""
    return _undeclared(kube, declared_objects(config, secrets))


def _body(obj: dict) -> dict:
    """What of a declared object is compared and restored: all but its identity, and its labels and
    annotations."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "stringData")}
    body["metadata"] = {k: obj["metadata"][k] for k in ("labels", "annotations") if k in obj["metadata"]}
    return body


def changed_objects(kube: Kube, declared: list[dict]) -> list[tuple[dict, str]]:
    """Declared objects (CRDs and Secrets aside) that exist with a declared field changed, e.g. an item
    another field manager added to a list bmctl owns, which server-side apply keeps: (object, what)."""
    out = []
    for obj in declared:
        if obj["kind"] in ("CustomResourceDefinition", "Secret"):
            continue
        live = _live(kube, obj)
        where = _differs(_body(obj), live) if live is not None else None
        if where:
            out.append((obj, f"{where} changed"))
    return out


def put_back(kube: Kube, obj: dict) -> None:
    """The declared object's fields, lists whole (a JSON merge patch replaces a list)."""
    resource = kube.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    resource.patch(name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"), body=_body(obj),
                   content_type="application/merge-patch+json")


def _changed(kube: Kube, declared: list[dict]) -> list[Drift]:
    """Declared objects missing or with declared fields changed (re-applying them restores them)."""
    out: list[Drift] = []
    for obj in declared:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "CustomResourceDefinition":
            continue  # schemas: re-applied on every run, never edited in place by users
        live = _live(kube, obj)
        if live is None:
            out.append(Drift(kind, name, "missing (deleted by hand?)", "apply"))
            continue
        if kind == "Secret":
            want = obj.get("stringData", {})
            have = {k: base64.b64decode(v).decode(errors="replace") for k, v in (live.get("data") or {}).items()}
            changed = sorted(k for k in want if have.get(k) != want[k])
            if changed:
                out.append(Drift(kind, name, f"data {', '.join(changed)} changed (value not shown)", "apply"))
            continue
        where = _differs(_body(obj), live)
        if where:
            out.append(Drift(kind, name, f"{where} changed", "apply"))
    return out


def schema_defaults(declared: list[dict]) -> dict[str, dict]:
    """kind -> {spec field: default} of the declared CRDs' served versions: the API server fills
    these in, so a live field holding its default was not added by hand."""
    out: dict[str, dict] = {}
    for crd in declared:
        if crd["kind"] != "CustomResourceDefinition":
            continue
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if f"{crd['spec']['group']}/{version['name']}" != CONFIG_API.get(kind, "metallb.io/v1beta1"):
                continue
            spec = version["schema"]["openAPIV3Schema"].get("properties", {}).get("spec", {})
            out[kind] = {k: p["default"] for k, p in spec.get("properties", {}).items() if "default" in p}
    return out


def _undeclared(kube: Kube, declared: list[dict]) -> list[Drift]:
    specs = {(o["kind"], o["metadata"]["name"]): o.get("spec") or {} for o in declared if o["kind"] in CONFIG_KINDS}
    defaults = schema_defaults(declared)
    out: list[Drift] = []
    for kind in CONFIG_KINDS:
        resource = kube.dynamic.resources.get(api_version=CONFIG_API.get(kind, "metallb.io/v1beta1"), kind=kind)
        for item in resource.get(namespace=NAMESPACE).to_dict().get("items", []):
            name = item["metadata"]["name"]
            if (kind, name) not in specs:
                out.append(Drift(kind, name, "not declared in the config (created by hand?)", "delete"))
                continue
            live_spec = item.get("spec") or {}
            extra = sorted(k for k in set(live_spec) - set(specs[(kind, name)])
                           if k not in defaults.get(kind, {}) or live_spec[k] != defaults[kind][k])
            if extra:
                out.append(Drift(kind, name, f"spec fields added by hand: {', '.join(extra)}", "strip",
                                 tuple(extra)))
    return out


def restore(kube: Kube, drift: list[Drift]) -> None:
    """Undo what applying the declared objects does not: undeclared objects and added spec fields."""
    for d in drift:
        if d.action == "apply":
            continue  # the data-plane phase re-applies every declared object
        resource = kube.dynamic.resources.get(api_version=CONFIG_API.get(d.kind, "metallb.io/v1beta1"), kind=d.kind)
        if d.action == "delete":
            try:
                resource.delete(name=d.name, namespace=NAMESPACE)
            except kubeapi.ApiException as exc:
                if exc.status != 404:
                    raise
        elif d.action == "strip":
            resource.patch(name=d.name, namespace=NAMESPACE, body={"spec": {k: None for k in d.fields}},
                           content_type="application/merge-patch+json")


def _allowed(config: ClusterConfig, ip: str) -> bool:
    """Whether the declared pools still hold `ip` for the Service that has it."""
    addr = parse_ip(ip)
    for pool in address_pools(config):
        for text in pool["addresses"]:
            r = parse_pool_entry(text)
            if r.version == addr.version and r.first <= int(addr) <= r.last:
                if pool["avoid_buggy"] and addr.version == 4 and int(addr) & 0xFF in (0, 255):
                    return False
                return True
    return False


def stranded_services(kube: Kube, config: ClusterConfig) -> list[str]:
    """Services holding an external IP the declared pools would no longer allow: 'ns/name (ip, why)'."""
    out = []
    for svc in kube.core().list_service_for_all_namespaces().items:
        if svc.spec.type != "LoadBalancer":
            continue
        for ing in (svc.status.load_balancer.ingress or []) if svc.status and svc.status.load_balancer else []:
            if ing.ip and not _allowed(config, ing.ip):
                out.append(f"{svc.metadata.namespace}/{svc.metadata.name} ({ing.ip})")
    return out
