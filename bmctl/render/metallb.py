"""MetalLB objects for the cluster (namespace, CRDs, RBAC, secret, workloads, pools)."""
from __future__ import annotations

import netaddr

from bmctl.config.addresses import parse_ip, parse_pool_entry
from bmctl.config.rules import INGRESS_POOL
from bmctl.config.model import LB_NODE_LABEL, MEMBERLIST_PORT, ClusterConfig
from bmctl.render import images
from bmctl.render.engine import RenderedFile, render
from bmctl.secrets import ClusterSecrets

NAMESPACE = "metallb-system"
METRICS_PORT = 7472
L2_ADVERTISEMENT = "bmctl-lb-nodes"


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


def kube_proxy_config(config: ClusterConfig) -> str:
    return render("kubeadm/kube-proxy.yaml.j2", mode=config.spec.clusterNetwork.kubeProxyMode)


def metallb_manifests(config: ClusterConfig, secrets: ClusterSecrets) -> list[RenderedFile]:
    """Cluster-wide manifests, named in apply order."""
    common = {"namespace": NAMESPACE}
    images_ = {"controller": images.METALLB_CONTROLLER, "speaker": images.METALLB_SPEAKER}
    return [
        RenderedFile("00-metallb-namespace.yaml", render("metallb/namespace.yaml.j2", **common)),
        RenderedFile("01-metallb-crds.yaml", render("metallb/crds.yaml.j2")),
        RenderedFile("02-metallb-rbac.yaml", render("metallb/rbac.yaml.j2", **common)),
        RenderedFile("03-metallb-memberlist.yaml",
                     render("metallb/memberlist-secret.yaml.j2", memberlist_key=secrets.memberlist_key,
                            **common), mode=0o600, secret=True),
        RenderedFile("04-metallb-controller.yaml",
                     render("metallb/controller.yaml.j2", images=images_, metrics_port=METRICS_PORT, **common)),
        RenderedFile("05-metallb-speaker.yaml",
                     render("metallb/speaker.yaml.j2", images=images_, metrics_port=METRICS_PORT,
                            memberlist_port=MEMBERLIST_PORT, lb_label=LB_NODE_LABEL, **common)),
        RenderedFile("06-metallb-pools.yaml",
                     render("metallb/pools.yaml.j2", pools=address_pools(config), l2_name=L2_ADVERTISEMENT,
                            lb_label=LB_NODE_LABEL, **common)),
    ]
