"""Fields of Google's bmctl config that this bmctl does not model.

A config written for Google's bmctl loads as it is: before the strict model sees a document, the
Google fields below are taken out of it, each with a finding:
- GCP-only settings and settings of things bmctl does not do (upgrades, its own preflight switch)
  are warned about once and ignored, like the header's GCP key paths;
- features that would change the cluster and that bmctl does not build are refused, naming them as
  Google bmctl features and saying what to do instead.
A boolean feature switched off (`advancedNetworking: false`) asks for nothing and is dropped quietly.
`anthosBareMetalVersion` becomes the Kubernetes version bmctl installs when bmctl can install it.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Callable, NamedTuple

from bmctl.config.model import DEFAULT_KUBERNETES_VERSION
from bmctl.config.rules import Finding

IGNORE, REFUSE = "warning", "error"
GCP = "is a Google Cloud setting that this bmctl does not use (it registers nothing with Google Cloud); it is ignored"
NO_UPGRADES = ("is a Google bmctl upgrade setting; this bmctl does not upgrade clusters, so it is ignored")
LOGIN_TOOL = ("is used by Google's login tools, not by kube-apiserver; it is ignored (kube-apiserver gets issuerURL, "
              "clientID, username, usernamePrefix, group and groupPrefix)")


class GoogleField(NamedTuple):
    kind: str               # "Cluster", "NodePool" or "header"
    path: tuple             # "*" matches any list index
    severity: str           # IGNORE (warning) or REFUSE (error)
    message: str
    fix: str
    asks: Callable[[Any], bool] = lambda value: value is not False and value not in (None, {}, [])


def _unsupported(what: str) -> str:
    return f"Google bmctl's {what} is not supported by bmctl"


FIELDS = [
    # Google Cloud only: warned about and ignored.
    *(GoogleField("Cluster", ("spec", key), IGNORE, GCP, "remove it; nothing in bmctl reads it")
      for key in ("gkeConnect", "clusterOperations", "clusterSecurity", "gkeOnPremAPI", "binaryAuthorization")),
    GoogleField("Cluster", ("spec", "bypassPreflightCheck"), IGNORE,
                "is Google bmctl's switch to skip preflight; it is ignored (bmctl runs preflight unless told not to)",
                "remove it; `bmctl create cluster --force` skips preflight for one run"),
    *(GoogleField(kind, ("spec", key), IGNORE, NO_UPGRADES, "remove it")
      for kind, key in (("Cluster", "nodePoolUpgradeStrategy"), ("Cluster", "upgradeStrategy"),
                        ("NodePool", "upgradeStrategy"))),
    *(GoogleField("Cluster", ("spec", "authentication", "oidc", key), IGNORE, LOGIN_TOOL, "remove it")
      for key in ("clientSecret", "kubectlRedirectURL", "scopes", "extraParams", "deployCloudConsoleProxy", "proxy")),
    # Google features bmctl does not build: refused, with what to do instead.
    GoogleField("Cluster", ("spec", "storage"), REFUSE,
                _unsupported("local volume provisioning (`storage`: lvpNodeMounts, lvpShare)"),
                "remove the storage section; after create, install a storage provisioner (e.g. the Kubernetes "
                "local static provisioner on the same mount paths)"),
    GoogleField("Cluster", ("spec", "profile"), REFUSE, _unsupported("`profile: edge` (reduced resource use)"),
                "remove profile (bmctl builds the default profile)", lambda value: value != "default"),
    GoogleField("Cluster", ("spec", "kubevirt"), REFUSE, _unsupported("VM Runtime (`kubevirt`)"),
                "remove kubevirt; install KubeVirt on the cluster after create"),
    GoogleField("Cluster", ("spec", "vmRuntime"), REFUSE, _unsupported("VM Runtime (`vmRuntime`)"),
                "remove vmRuntime; install KubeVirt on the cluster after create"),
    *(GoogleField("Cluster", ("spec", "clusterNetwork", key), REFUSE, _unsupported(what),
                  "remove it or set it to false" + instead)
      for key, what, instead in (
          ("advancedNetworking", "advanced networking (`advancedNetworking`: network gateway groups, egress NAT)", ""),
          ("multipleNetworkInterfaces", "multiple network interfaces for Pods (`multipleNetworkInterfaces`, Multus)",
           "; install Multus on the cluster after create"),
          ("sriovOperator", "SR-IOV operator (`sriovOperator`)", "; install the SR-IOV network operator after create"),
          ("flatIPv4", "flat-mode pod networking (`flatIPv4`)", " (bmctl routes pod traffic with flannel host-gw, "
           "or with your own CNI when clusterNetwork.cni is none)"),
          ("enableDataplaneV2", "Dataplane V2 (`enableDataplaneV2`)",
           "; set clusterNetwork.cni: none and install Cilium to get an eBPF dataplane"))),
    GoogleField("Cluster", ("spec", "clusterNetwork", "forwardMode"), REFUSE,
                _unsupported("direct server return (`forwardMode: dsr`)"),
                "remove forwardMode (bmctl forwards with SNAT)",
                lambda value: value != "snat"),
    GoogleField("Cluster", ("spec", "nodeConfig", "containerRuntime"), REFUSE,
                _unsupported("`containerRuntime: docker` (Kubernetes dropped dockershim in 1.24)"),
                "use containerd (remove the line or write containerRuntime: containerd)",
                lambda value: value != "containerd"),
    GoogleField("Cluster", ("spec", "osEnvironmentConfig"), REFUSE,
                _unsupported("`osEnvironmentConfig` (changing the nodes' package repositories)"),
                "remove it; set the nodes' package repositories up yourself"),
    GoogleField("Cluster", ("spec", "maintenanceBlocks"), REFUSE,
                _unsupported("maintenance mode (`maintenanceBlocks`)"),
                "remove it; drain a node with `kubectl drain` instead"),
    GoogleField("Cluster", ("spec", "authentication", "oidc", "certificateAuthorityData"), REFUSE,
                _unsupported("an OIDC issuer CA given inline (`certificateAuthorityData`)"),
                "remove it and add the issuer's CA to every control-plane node's trust store (/etc/ssl/certs), "
                "which kube-apiserver reads"),
]

# Annotations Google's bmctl reads to switch features on. bmctl reads none of them.
GOOGLE_ANNOTATION = re.compile(r"^([a-z0-9.-]+\.)?gke\.io/")


def _matches(data: Any, pattern: tuple, at: tuple = ()):
    """(path, parent, key) of each place in data that `pattern` names."""
    if not pattern:
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        items = list(enumerate(data)) if isinstance(data, list) else []
    else:
        items = [(head, data[head])] if isinstance(data, dict) and head in data else []
    for key, value in items:
        if rest:
            yield from _matches(value, rest, at + (key,))
        else:
            yield at + (key,), data, key


def take_google_fields(kind: str, data: dict) -> tuple[dict, list[Finding]]:
    """A copy of one document without the Google fields bmctl does not model, and a finding for each."""
    data = copy.deepcopy(data)
    out: list[Finding] = []
    for field in FIELDS:
        if field.kind != kind:
            continue
        for path, parent, key in list(_matches(data, field.path)):
            value = parent.pop(key)
            if field.asks(value):
                out.append(Finding(path, field.message, field.fix, field.severity))
    metadata = data.get("metadata")
    if kind != "header" and isinstance(metadata, dict) and isinstance(metadata.get("annotations"), dict):
        for key, value in metadata["annotations"].items():
            if isinstance(key, str) and GOOGLE_ANNOTATION.match(key) and value != "false":
                out.append(Finding(("metadata", "annotations", key), "is a Google bmctl feature switch that this "
                                   "bmctl does not read; it is kept as an annotation and does nothing", "remove it "
                                   "if you count on what it switches on in Google's bmctl", IGNORE))
    if kind == "Cluster":
        out.extend(_version(data))
    return data, out


# Kubernetes minor of each Google release before 1.28; from 1.28 on, Google's release number is the
# Kubernetes minor it runs.
GOOGLE_RELEASES = {6: 18, 7: 19, 8: 20, 9: 21, 10: 21, 11: 22, 12: 23, 13: 24, 14: 25, 15: 26, 16: 27}
# Kubernetes versions bmctl installs, by minor.
INSTALLS = {int(DEFAULT_KUBERNETES_VERSION.split(".")[1]): DEFAULT_KUBERNETES_VERSION}


def kubernetes_minor(release: str) -> int | None:
    """Kubernetes minor version of a Google release ('1.16.2', 'v1.6.0', '1.29.100-gke.251'), or None."""
    m = re.match(r"^v?1\.(\d+)\.\d+", release)
    if not m:
        return None
    minor = int(m.group(1))
    return GOOGLE_RELEASES.get(minor) if minor < 28 else minor


def _version(data: dict) -> list[Finding]:
    """anthosBareMetalVersion -> spec.kubernetesVersion when bmctl installs that Kubernetes, else a warning."""
    spec = data.get("spec")
    if not isinstance(spec, dict) or "anthosBareMetalVersion" not in spec:
        return []
    release = spec.pop("anthosBareMetalVersion")
    path = ("spec", "anthosBareMetalVersion")
    minor = kubernetes_minor(release) if isinstance(release, str) else None
    chosen = spec.get("kubernetesVersion")
    if minor is not None and minor in INSTALLS and chosen is None:
        spec["kubernetesVersion"] = INSTALLS[minor]
        return []
    installs = chosen if isinstance(chosen, str) else DEFAULT_KUBERNETES_VERSION
    if minor is not None and chosen is not None and installs.startswith(f"v1.{minor}."):
        return []
    if minor is None:
        what = f"{release!r} is not a Google release bmctl knows"
    else:
        what = f"Google's release {release} runs Kubernetes 1.{minor}, " + (
            "but spec.kubernetesVersion says otherwise" if chosen is not None else "which bmctl cannot install")
    return [Finding(path, f"{what}; bmctl installs Kubernetes {installs}",
                    "set spec.kubernetesVersion to the Kubernetes version you want, and remove anthosBareMetalVersion",
                    IGNORE)]
