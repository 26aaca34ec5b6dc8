"""MetalLB objects for the cluster: upstream's own manifest of the deployed version, changed only
where DEVIATIONS says (each with its reason), plus the memberlist secret and the address pools.

Upstream's file is MetalLB's `config/manifests/metallb-native.yaml` (BGP mode: `metallb-frr.yaml`)
of UPSTREAM_VERSION, pinned by sha256 in the release (`manifests:` metallb-native and metallb-frr) and
read through bmctl/release/upstream.py (bundle, cache, Go module cache or module proxy): no copy of it
is kept in this repository. tests/test_metallb_upstream.py diffs what bmctl renders against it object
by object, field by field, and fails on any difference DEVIATIONS does not list and on a deviation
that no longer changes anything. To move to another MetalLB release: pin its files in the release,
set UPSTREAM_VERSION (and the images), run that test.
"""
from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import netaddr

from bmctl.config.addresses import parse_ip, parse_pool_entry
from bmctl.config.rules import INGRESS_POOL
from bmctl.config.model import LB_NODE_LABEL, ClusterConfig
from bmctl import release as releases
from bmctl.release import Manifest, Release
from bmctl.release import upstream as upstream_files
from bmctl.render.engine import RenderedFile, documents, render
from bmctl.secrets import ClusterSecrets

UPSTREAM_VERSION = "v0.15.2"
# The release's pinned manifest of each mode: layer 2, and BGP mode (FRR: BFD, one speaker per node).
UPSTREAM = {"native": "metallb-native", "frr": "metallb-frr"}
NAMESPACE = "metallb-system"
L2_ADVERTISEMENT = "bmctl-lb-nodes"


@dataclass(frozen=True)
class Deviation:
    """One way bmctl's MetalLB objects differ from upstream's manifest, and why.

    `kind`/`name` pick upstream objects ("*" / None: all). `change`: "drop" (not deployed), "add" (an
    object upstream has not), "set" (the value at `path`), "append" (`value` added to the list at
    `path`), "remove" (the list item at `path`). A path is a tuple of keys; "[x]" is the list item
    whose name is x. `value` may be a function, called at render time (images)."""

    kind: str
    name: str | None
    change: str
    reason: str
    path: tuple[str, ...] = ()
    value: object = None

    def matches(self, obj: dict) -> bool:
        return self.kind in ("*", obj["kind"]) and self.name in (None, obj["metadata"]["name"])

    def item(self, release: Release | None = None) -> object:
        """The value; an image comes from `release` (bmctl's own when None)."""
        return self.value(release or releases.default()) if callable(self.value) else self.value

    def text(self) -> str:
        where = f"{self.kind}/{self.name or '*'}" + (f" {'.'.join(self.path)}" if self.path else "")
        return f"{self.change} {where}" + (f" {self.item()!r}" if self.change in ("set", "append") else "")


_CONTROLLER = ("spec", "template", "spec", "containers", "[controller]")
_SPEAKER = ("spec", "template", "spec", "containers", "[speaker]")
_NO_WEBHOOKS = ("webhooks are off (controller --webhook-mode=disabled): bmctl validates the pools itself "
                "before they reach the cluster, so nothing serves or needs this")
_IMAGE_LIST = "images come from the cluster's release (bmctl/release), so a release or the lab pins its own"

DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("ValidatingWebhookConfiguration", "metallb-webhook-configuration", "drop", _NO_WEBHOOKS),
    Deviation("Service", "metallb-webhook-service", "drop", _NO_WEBHOOKS),
    Deviation("Secret", "metallb-webhook-cert", "drop", _NO_WEBHOOKS),
    Deviation("Deployment", "controller", "append",
              "bmctl validates the pools itself before applying them, so the controller runs no admission "
              "webhook (no webhook Service, certificate or ValidatingWebhookConfiguration to keep)",
              (*_CONTROLLER, "args"), "--webhook-mode=disabled"),
    Deviation("Deployment", "controller", "remove", _NO_WEBHOOKS, (*_CONTROLLER, "ports", "[webhook-server]")),
    Deviation("Deployment", "controller", "remove", _NO_WEBHOOKS, (*_CONTROLLER, "volumeMounts", "[cert]")),
    Deviation("Deployment", "controller", "remove", _NO_WEBHOOKS, ("spec", "template", "spec", "volumes", "[cert]")),
    Deviation("Deployment", "controller", "set", _IMAGE_LIST, (*_CONTROLLER, "image"),
              lambda r: r.image("metallb-controller")),
    Deviation("DaemonSet", "speaker", "set", _IMAGE_LIST, (*_SPEAKER, "image"),
              lambda r: r.image("metallb-speaker")),
    Deviation("DaemonSet", "speaker", "set",
              "speakers run on the load-balancer nodes only (bmctl labels them, and only them)",
              ("spec", "template", "spec", "nodeSelector", LB_NODE_LABEL), "true"),
    Deviation("DaemonSet", "speaker", "append",
              "kubeadm labels control-plane nodes node.kubernetes.io/exclude-from-external-load-balancers; where "
              "they are the LB nodes, speakers would otherwise announce nothing (placement is the lbnode label)",
              (*_SPEAKER, "args"), "--ignore-exclude-lb"),
    Deviation("*", None, "set", "marks what bmctl manages", ("metadata", "labels", "app.kubernetes.io/managed-by"),
              "bmctl"),
    Deviation("Secret", "memberlist", "add",
              "bmctl generates the memberlist key (kept in the workspace) so speakers can start before the "
              "controller, which would otherwise create it"),
    Deviation("IPAddressPool", None, "add", "the config's address pools (and the ingress VIP's pool)"),
    Deviation("L2Advertisement", None, "add", "announce the pools from the load-balancer nodes only"),
)

_SPEAKER_POD = ("spec", "template", "spec")
_ONE_FRR = ("one FRR per load-balancer node, bmctl's static pod (bmctl/render/bgp.py): it announces the control-plane "
            "VIP before any API server exists, and a router keeps one session per neighbour address, so the speaker "
            "drives that FRR (its reloader and frr-metrics share the static pod's folders) instead of running its own")


def _host_folder(name: str, path: str) -> dict:
    return {"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}}


def _frr_deviations() -> tuple[Deviation, ...]:
    from bmctl.render import bgp
    return (
        Deviation("ConfigMap", "frr-startup", "drop", _ONE_FRR + ": its boot files are bmctl's"),
        Deviation("DaemonSet", "speaker", "remove", _ONE_FRR, (*_SPEAKER_POD, "containers", "[frr]")),
        Deviation("DaemonSet", "speaker", "remove", _ONE_FRR, (*_SPEAKER_POD, "initContainers", "[cp-frr-files]")),
        Deviation("DaemonSet", "speaker", "remove", _ONE_FRR, (*_SPEAKER_POD, "volumes", "[frr-startup]")),
        Deviation("DaemonSet", "speaker", "set", _ONE_FRR + ": FRR's vty sockets",
                  (*_SPEAKER_POD, "volumes", "[frr-sockets]"), _host_folder("frr-sockets", bgp.SOCKETS_DIR)),
        Deviation("DaemonSet", "speaker", "set", _ONE_FRR + ": FRR's /etc/frr (frr.conf, frr.log)",
                  (*_SPEAKER_POD, "volumes", "[frr-conf]"), _host_folder("frr-conf", bgp.CONF_DIR)),
        *(Deviation("DaemonSet", "speaker", "set", _IMAGE_LIST, (*_SPEAKER_POD, "containers", f"[{c}]", "image"),
                    lambda r: r.image("frr")) for c in ("reloader", "frr-metrics")),
        *(Deviation("DaemonSet", "speaker", "set", _IMAGE_LIST, (*_SPEAKER_POD, "initContainers", f"[{c}]", "image"),
                    lambda r: r.image("metallb-speaker")) for c in ("cp-reloader", "cp-metrics")),
        Deviation("DaemonSet", "speaker", "set", "each LB node's FRR keeps the node's address as its router-id "
                  "(bmctl/render/bgp.py reloader_script says why): MetalLB's reloader runs on MetalLB's "
                  "configuration with that line added", (*_SPEAKER_POD, "containers", "[reloader]", "command"),
                  lambda r: ["/bin/sh", "-c", _reloader_script()]),
        Deviation("DaemonSet", "speaker", "set", "the node's address for its router-id",
                  (*_SPEAKER_POD, "containers", "[reloader]", "env"),
                  [{"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]),
        Deviation("BGPPeer", None, "add", "one per router, spoken to from every LB node, with BFD"),
        Deviation("BFDProfile", None, "add", "sub-second failure detection for every BGP session"),
        Deviation("ConfigMap", "bgpextras", "add", "the control-plane VIP's lines and the peers' routes let in "
                  "(a way back to the clients), kept in FRR by MetalLB's reloads"),
        Deviation("BGPAdvertisement", None, "add", "announce the pools from the load-balancer nodes only"),
    )


def _reloader_script() -> str:
    return render("bgp/reloader.sh.j2", env="NODE_IP", node_dir="/etc/frr_reloader/node", shared="/etc/frr_reloader",
                  upstream="/etc/frr_reloader/frr-reloader.sh").rstrip("\n")


def deviations(mode: str) -> tuple[Deviation, ...]:
    """Every deviation of bmctl's MetalLB from upstream's manifest of `mode` ("native": layer 2,
    "frr": BGP)."""
    if mode == "native":
        return DEVIATIONS
    return tuple(d for d in DEVIATIONS if d.kind != "L2Advertisement") + _frr_deviations()


def mode_of(config: ClusterConfig) -> str:
    return "frr" if config.lb.type == "bgp" else "native"


# Kept as upstream ships it, on purpose (not deviations).
KEPT = (
    "bgppeers.metallb.io keeps its conversion webhook (v1beta1 <-> v1beta2), which nothing serves with webhooks "
    "off: v1beta2 is the storage version and the only one MetalLB and bmctl read or write, so no conversion is "
    "asked for; a BGPPeer read or written as v1beta1 fails loudly instead of being relabelled unconverted "
    "(strategy None)",
    "RBAC exactly as upstream's, including rules unused here (the controller's for webhook certificates and CRD "
    "caBundles, with webhooks off; both ServiceAccounts' PodSecurityPolicy 'use', an API gone since Kubernetes 1.25)",
)

# The dry-run/apply file of each kind of upstream object, in apply order: CRDs (waited for until
# Established) before anything that may use them.
FILES = {
    "Namespace": "00-metallb-namespace.yaml",
    "CustomResourceDefinition": "01-metallb-crds.yaml",
    **dict.fromkeys(("ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"),
                    "02-metallb-rbac.yaml"),
    "Deployment": "04-metallb-controller.yaml",
    **dict.fromkeys(("ConfigMap", "DaemonSet"), "05-metallb-speaker.yaml"),
}
MEMBERLIST_FILE = "03-metallb-memberlist.yaml"
POOLS_FILE = "06-metallb-pools.yaml"


def _upstream(mode: str = "native", release: Release | None = None, bundle: Path | None = None) -> tuple[dict, ...]:
    """Upstream's objects of `mode` as the release pins them (bmctl's own release when None)."""
    return _parsed((release or releases.default()).manifest(UPSTREAM[mode]), bundle)


@functools.lru_cache(maxsize=4)
def _parsed(manifest: Manifest, bundle: Path | None) -> tuple[dict, ...]:
    """Keyed by the pin (and the bundle): every release that pins the same file shares the parse."""
    return tuple(d for text in upstream_files.manifest_texts(manifest, bundle) for d in documents(text))


def _child(node: dict | list, key: str, create: bool = False):
    if isinstance(node, list):
        found = [i for i in node if isinstance(i, dict) and f"[{i.get('name')}]" == key]
        if len(found) != 1:
            raise KeyError(key)
        return found[0]
    if create:
        node.setdefault(key, {})
    return node[key]


def _change(obj: dict, dev: Deviation, release: Release | None) -> None:
    *parents, last = dev.path
    owner, node = None, obj
    for key in parents:
        owner, node = node, _child(node, key, create=dev.change == "set")
    if dev.change == "set" and isinstance(node, list):  # a named list item, replaced in place
        node[node.index(_child(node, last))] = dev.item(release)
    elif dev.change == "set":
        node[last] = dev.item(release)
    elif dev.change == "remove":
        node.remove(_child(node, last))
        if not node:  # as the API server would show it: an empty list is no list
            del owner[parents[-1]]
    elif dev.change == "append":
        items, item = _child(node, last), dev.item(release)
        names = {i.get("name") for i in items if isinstance(i, dict)}
        if item in items or (isinstance(item, dict) and item["name"] in names):
            raise ValueError("upstream has it already")
        items.append(item)


def with_deviations(upstream: list[dict], deviations: tuple[Deviation, ...] = DEVIATIONS,
                    release: Release | None = None) -> list[dict]:
    """Upstream's objects changed as `deviations` say. A deviation that does not fit upstream's
    objects (its object or path is gone, or upstream has the item already) is an error."""
    objs = copy.deepcopy(upstream)
    for dev in deviations:
        if dev.change == "add":
            continue
        hits = [o for o in objs if dev.matches(o)]
        if not hits:
            raise RuntimeError(f"MetalLB deviation '{dev.text()}' does not apply: upstream has no such object")
        if dev.change == "drop":
            objs = [o for o in objs if not dev.matches(o)]
            continue
        for obj in hits:
            try:
                _change(obj, dev, release)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise RuntimeError(f"MetalLB deviation '{dev.text()}' does not apply to upstream's "
                                   f"{obj['kind']}/{obj['metadata']['name']}: {exc}") from None
    return objs


def _dump(objs: list[dict], mode: str = "native") -> str:
    head = (f"# MetalLB {UPSTREAM_VERSION} as upstream ships it (config/manifests/metallb-{mode}.yaml), changed "
            "only as bmctl/render/metallb.py deviations() says.\n")
    return upstream_files.dump(objs, head)


def _entry_text(rng: netaddr.IPRange) -> str:
    cidrs = rng.cidrs()
    if len(cidrs) == 1:
        return str(cidrs[0])
    return f"{netaddr.IPAddress(rng.first, rng.version)}-{netaddr.IPAddress(rng.last, rng.version)}"


def address_pools(config: ClusterConfig) -> list[dict]:
    """One MetalLB pool per configured pool; the ingress VIP is carved out into a pool of its own
    that is never auto-assigned, so only the ingress Service (asking for it) gets it."""
    ingress = config.lb.vips.ingressVIP
    vip = parse_ip(ingress) if ingress else None
    pools = []
    for pool in config.lb.addressPools:
        ranges = [parse_pool_entry(a) for a in pool.addresses]
        entries = list(pool.addresses)
        if vip is not None and any(r.version == vip.version and r.first <= int(vip) <= r.last for r in ranges):
            rest = netaddr.IPSet()
            for r in ranges:
                rest.add(r)
            rest.remove(vip)
            entries = [_entry_text(r) for r in rest.iter_ipranges()]
        if entries:
            pools.append({"name": pool.name, "addresses": entries, "auto_assign": not pool.manualAssign,
                          "avoid_buggy": pool.avoidBuggyIPs})
    if vip is not None:
        pools.append({"name": INGRESS_POOL, "addresses": [f"{vip}/{vip.netmask_bits()}"],
                      "auto_assign": False, "avoid_buggy": False})
    return pools


BGP_ADVERTISEMENT = "bmctl-bgp"


def bgp_peer_name(ip: str) -> str:
    """A BGPPeer's name for a router address (DNS-safe: 192.0.2.1 -> bmctl-peer-192-0-2-1)."""
    return "bmctl-peer-" + re.sub(r"[^0-9a-f]+", "-", ip.lower()).strip("-")


def bgp_settings(config: ClusterConfig) -> dict | None:
    """MetalLB's BGP objects for loadBalancer.type: bgp (None in layer 2): one BGPPeer per router,
    spoken to by every LB node, with BFD; the BFD profile; one BGPAdvertisement of every pool; and
    bmctl's lines for the nodes' FRR (bgpextras: the VIP out, the peers' routes in)."""
    from bmctl.render import bgp
    lb = config.lb
    if lb.type != "bgp":
        return None
    peers = [{"name": bgp_peer_name(p.ip), "asn": p.asn, "address": p.ip} for p in lb.bgpPeers]
    return {"local_asn": lb.localASN, "hold": f"{bgp.HOLD}s", "keepalive": f"{bgp.KEEPALIVE}s",
            "connect": f"{bgp.CONNECT_RETRY}s",
            "advertisement": BGP_ADVERTISEMENT, "peers": peers, "bfd": bgp.BFD, "extras": bgp.extra_lines(config)}


def kube_proxy_config(config: ClusterConfig) -> str:
    return render("kubeadm/kube-proxy.yaml.j2", mode=config.spec.clusterNetwork.kubeProxyMode)


def metallb_objects(release: Release | None = None, mode: str = "native", bundle: Path | None = None) -> list[dict]:
    """Upstream's objects as bmctl deploys them (without the memberlist secret and the pools)."""
    return with_deviations(list(_upstream(mode, release, bundle)), deviations(mode), release=release)


def metallb_manifests(config: ClusterConfig, secrets: ClusterSecrets) -> list[RenderedFile]:
    """Cluster-wide manifests, named in apply order."""
    by_file: dict[str, list[dict]] = {}
    mode = mode_of(config)
    for obj in metallb_objects(releases.of(config), mode, releases.bundle_path(config)):
        if obj["kind"] not in FILES:
            raise RuntimeError(f"upstream's MetalLB manifest has a {obj['kind']} ({obj['metadata']['name']}) that "
                               "bmctl does not know where to apply: add its kind to FILES or drop it in DEVIATIONS")
        by_file.setdefault(FILES[obj["kind"]], []).append(obj)
    files = [RenderedFile(name, _dump(objs, mode)) for name, objs in by_file.items()]
    files.append(RenderedFile(MEMBERLIST_FILE, render("metallb/memberlist-secret.yaml.j2", namespace=NAMESPACE,
                                                      memberlist_key=secrets.memberlist_key), mode=0o600, secret=True))
    files.append(RenderedFile(POOLS_FILE, render("metallb/pools.yaml.j2", pools=address_pools(config),
                                                 l2_name=L2_ADVERTISEMENT, lb_label=LB_NODE_LABEL,
                                                 namespace=NAMESPACE, bgp=bgp_settings(config))))
    return sorted(files, key=lambda f: f.path)
