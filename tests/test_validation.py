"""Every validation rule: a bad config, and an error naming the field, file, line and fix."""
from __future__ import annotations

import json
import re
import time

import pytest

from bmctl.config import ConfigError, load_config, parse_config
from conftest import base_docs, dump


def lb(docs):
    return docs[2]["spec"]["loadBalancer"]


def spec(docs):
    return docs[2]["spec"]


def problems_for(docs_or_text, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(docs_or_text if isinstance(docs_or_text, str) else dump(docs_or_text))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, info.value.problems


def test_base_config_is_valid(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump(base_docs()))
    config = load_config(path)
    assert config.name == "t1"
    assert [n.address for n in config.lb_nodes] == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    assert [n.address for n in config.worker_nodes] == ["192.0.2.21"]


def _set(path, value):
    def mutate(docs):
        target = docs
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _del(path):
    def mutate(docs):
        target = docs
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


def _both(*mutations):
    def mutate(docs):
        for m in mutations:
            m(docs)
    return mutate


LBP = (2, "spec", "loadBalancer")
POOL0 = LBP + ("addressPools", 0)

CASES = {
    # address syntax
    "range with spaces": (_set(POOL0 + ("addresses",), ["192.0.2.100 - 192.0.2.150"]),
                          "spec.loadBalancer.addressPools[0].addresses[0]", "spaces around the dash"),
    "reversed range": (_set(POOL0 + ("addresses",), ["192.0.2.150-192.0.2.100"]),
                       "spec.loadBalancer.addressPools[0].addresses[0]", "reversed"),
    "bare address": (_set(POOL0 + ("addresses",), ["192.0.2.100"]),
                     "spec.loadBalancer.addressPools[0].addresses[0]", "single address"),
    "cidr host bits": (_set(POOL0 + ("addresses",), ["192.0.2.100/28"]),
                       "spec.loadBalancer.addressPools[0].addresses[0]", "host bits"),
    "garbage address": (_set(POOL0 + ("addresses",), ["lots"]),
                        "spec.loadBalancer.addressPools[0].addresses[0]", "not an IP address"),
    # overlaps and names
    "overlap within a pool": (_set(POOL0 + ("addresses",), ["192.0.2.100-192.0.2.150", "192.0.2.128/27"]),
                              "spec.loadBalancer.addressPools[0].addresses[1]", "overlaps"),
    "overlap across pools": (_set(LBP + ("addressPools", 1, "addresses"), ["192.0.2.144/28"]),
                             "spec.loadBalancer.addressPools[1].addresses[0]",
                             "overlaps spec.loadBalancer.addressPools[0].addresses[0]"),
    "duplicate pool name": (_set(LBP + ("addressPools", 1, "name"), "pool1"),
                            "spec.loadBalancer.addressPools[1].name", "already used"),
    "invalid pool name": (_set(POOL0 + ("name",), "Pool_1"), "spec.loadBalancer.addressPools[0].name",
                          "not a valid pool name"),
    "reserved pool name": (_set(POOL0 + ("name",), "bmctl-ingress-vip"),
                           "spec.loadBalancer.addressPools[0].name", "reserved"),
    # VIPs
    "cp vip in pool": (_set(LBP + ("vips", "controlPlaneVIP"), "192.0.2.120"),
                       "spec.loadBalancer.vips.controlPlaneVIP", "inside spec.loadBalancer.addressPools[0]"),
    "ingress vip in no pool": (_set(LBP + ("vips", "ingressVIP"), "192.0.2.99"),
                               "spec.loadBalancer.vips.ingressVIP", "in no address pool"),
    "ingress vip for admin": (_set((2, "spec", "type"), "admin"), "spec.loadBalancer.vips.ingressVIP",
                              "admin clusters take no ingress VIP"),
    "vip not an address": (_set(LBP + ("vips", "controlPlaneVIP"), "vip.example"),
                           "spec.loadBalancer.vips.controlPlaneVIP", "not an IP address"),
    "vip is a node": (_set(LBP + ("vips", "controlPlaneVIP"), "192.0.2.12"),
                      "spec.loadBalancer.vips.controlPlaneVIP", "is the IP of the node"),
    "vips equal": (_set(LBP + ("vips", "controlPlaneVIP"), "192.0.2.100"),
                   "spec.loadBalancer.vips.ingressVIP", "same address as controlPlaneVIP"),
    "vip family": (_set(LBP + ("vips", "controlPlaneVIP"), "2001:db8::10"),
                   "spec.loadBalancer.vips.controlPlaneVIP", "IPv6 but the load-balancer nodes are IPv4"),
    # pools vs nodes and cluster CIDRs
    "pool holds a node": (_set(POOL0 + ("addresses",), ["192.0.2.0/26"]),
                          "spec.loadBalancer.addressPools[0].addresses[0]", "the IP of the node"),
    "pool overlaps services": (_set((2, "spec", "clusterNetwork", "services", "cidrBlocks"), ["192.0.2.128/25"]),
                               "spec.loadBalancer.addressPools[0].addresses[0]", "services CIDR"),
    "vip in pods": (_set((2, "spec", "clusterNetwork", "pods", "cidrBlocks"), ["192.0.2.0/28"]),
                    "spec.loadBalancer.vips.controlPlaneVIP", "pods CIDR"),
    "pods overlap services": (_set((2, "spec", "clusterNetwork", "pods", "cidrBlocks"), ["10.96.0.0/12"]),
                              "spec.clusterNetwork", "overlaps"),
    "bad pod cidr": (_set((2, "spec", "clusterNetwork", "pods", "cidrBlocks"), ["10.244.0.1/16"]),
                     "spec.clusterNetwork.pods.cidrBlocks[0]", "host bits"),
    # avoidBuggyIPs
    "avoidBuggyIPs leaves nothing": (_set(LBP + ("addressPools", 1), {"name": "p2", "addresses": ["192.0.2.255/32"],
                                                                      "avoidBuggyIPs": True}),
                                     "spec.loadBalancer.addressPools[1].avoidBuggyIPs", "every address"),
    "ingress vip buggy": (_both(_set(LBP + ("vips", "ingressVIP"), "192.0.2.0"),
                                _set(LBP + ("controlPlaneVIP",), None),
                                _set(POOL0, {"name": "pool1", "addresses": ["192.0.2.0/29"], "avoidBuggyIPs": True}),
                                _del(LBP + ("controlPlaneVIP",))),
                          "spec.loadBalancer.vips.ingressVIP", "ends in .0 or .255"),
    # node membership
    "node in two pools": (_set((3, "spec", "nodes"), [{"address": "192.0.2.12"}]),
                          "NodePool 'workers': spec.nodes[0].address", "already listed in the control-plane pool"),
    "duplicate node": (_set((2, "spec", "controlPlane", "nodePoolSpec", "nodes", 2), {"address": "192.0.2.11"}),
                       "spec.controlPlane.nodePoolSpec.nodes[2].address", "remove the duplicate"),
    "lb node is cp node": (_set(LBP + ("nodePoolSpec",), {"nodes": [{"address": "192.0.2.13"}]}),
                           "spec.loadBalancer.nodePoolSpec.nodes[0].address", "one node pool only"),
    "node address bad": (_set((3, "spec", "nodes", 0, "address"), "node-1"),
                         "NodePool 'workers': spec.nodes[0].address", "not an IP address"),
    "duplicate k8sIP": (_set((3, "spec", "nodes", 0, "k8sIP"), "192.0.2.11"),
                        "NodePool 'workers': spec.nodes[0].k8sIP", "already the IP of a node"),
    # modes, types, ports, VRRP
    "bgp without localASN": (_set(LBP + ("type",), "bgp"), "spec.loadBalancer.localASN", "needs the cluster's own AS"),
    "bgp without peers": (_both(_set(LBP + ("type",), "bgp"), _set(LBP + ("localASN",), 65001)),
                          "spec.loadBalancer.bgpPeers", "at least one peer"),
    "bgp asn reserved": (_both(_set(LBP + ("type",), "bgp"), _set(LBP + ("localASN",), 23456),
                               _set(LBP + ("bgpPeers",), [{"ip": "192.0.2.1", "asn": 65000}])),
                         "spec.loadBalancer.localASN", "not a usable AS number"),
    "bgp peer asn too big": (_both(_set(LBP + ("type",), "bgp"), _set(LBP + ("localASN",), 65001),
                                   _set(LBP + ("bgpPeers",), [{"ip": "192.0.2.1", "asn": 4294967295}])),
                             "spec.loadBalancer.bgpPeers[0].asn", "not a usable AS number"),
    "bgp peer is a node": (_both(_set(LBP + ("type",), "bgp"), _set(LBP + ("localASN",), 65001),
                                 _set(LBP + ("bgpPeers",), [{"ip": "192.0.2.11", "asn": 65000}])),
                           "spec.loadBalancer.bgpPeers[0].ip", "is a node of this cluster"),
    "bgp peer twice": (_both(_set(LBP + ("type",), "bgp"), _set(LBP + ("localASN",), 65001),
                             _set(LBP + ("bgpPeers",), [{"ip": "192.0.2.1", "asn": 65000},
                                                        {"ip": "192.0.2.1", "asn": 65002}])),
                       "spec.loadBalancer.bgpPeers[1].ip", "already bgpPeers[0]"),
    "bgp peer cp node not cp": (_both(_set(LBP + ("type",), "bgp"), _set(LBP + ("localASN",), 65001),
                                      _set(LBP + ("bgpPeers",), [{"ip": "192.0.2.1", "asn": 65000,
                                                                  "controlPlaneNodes": ["192.0.2.21"]}])),
                                "spec.loadBalancer.bgpPeers[0].controlPlaneNodes[0]", "not a control-plane node"),
    "unknown type": (_set(LBP + ("type",), "layer3"), "spec.loadBalancer.type", "not allowed"),
    "manual with pools": (_set(LBP + ("mode",), "manual"), "spec.loadBalancer.addressPools", "takes no address pools"),
    "port range": (_set(LBP + ("ports", "controlPlaneLBPort"), 70000), "spec.loadBalancer.ports.controlPlaneLBPort",
                   "not a TCP port"),
    "port clash": (_set(LBP + ("ports", "controlPlaneLBPort"), 6444), "spec.loadBalancer.ports.controlPlaneLBPort",
                   "kube-apiserver"),
    "vrid range": (_set(LBP + ("vrrp",), {"virtualRouterID": 300}), "spec.loadBalancer.vrrp.virtualRouterID",
                   "out of range"),
    "advert range": (_set(LBP + ("vrrp",), {"advertInterval": 0.001}), "spec.loadBalancer.vrrp.advertInterval",
                     "out of range"),
    "bad interface": (_set(LBP + ("vrrp",), {"interface": "eth0; reboot"}), "spec.loadBalancer.vrrp.interface",
                      "not an interface name"),
    # types and unknown fields
    "typo avoidBuggyIPs": (_set(POOL0 + ("avoidBuggyIP",), True), "spec.loadBalancer.addressPools[0].avoidBuggyIP",
                           "unknown field"),
    "quoted bool": (_set(POOL0 + ("avoidBuggyIPs",), "yes"), "spec.loadBalancer.addressPools[0].avoidBuggyIPs",
                    "valid boolean"),
    "port as string": (_set(LBP + ("ports", "controlPlaneLBPort"), "443"),
                       "spec.loadBalancer.ports.controlPlaneLBPort", "valid integer"),
    "missing vips": (_del(LBP + ("vips",)), "spec.loadBalancer.vips", "required field is missing"),
    "missing cp": (_del((2, "spec", "controlPlane")), "spec.controlPlane", "required field is missing"),
    "empty node list": (_set((2, "spec", "controlPlane", "nodePoolSpec", "nodes"), []),
                        "spec.controlPlane.nodePoolSpec.nodes", "at least 1"),
    "bad login user": (_set((2, "spec", "nodeAccess", "loginUser"), "root; rm -rf /"), "spec.nodeAccess.loginUser",
                       "not a valid login name"),
    "bad k8s version": (_set((2, "spec", "kubernetesVersion"), "latest"), "spec.kubernetesVersion",
                        "not a Kubernetes version"),
    # documents
    "cluster name": (_set((2, "metadata", "name"), "My_Cluster"), "metadata.name", "not a valid cluster name"),
    "namespace mismatch": (_set((1, "metadata", "name"), "cluster-other"), "Namespace: metadata.name",
                           "is not the Cluster's namespace 'cluster-t1'"),
    "nodepool in another namespace": (_set((3, "metadata", "namespace"), "elsewhere"),
                                      "NodePool 'workers': metadata.namespace", "is not the cluster's namespace"),
    "control-plane clusterName": (_set((2, "spec", "controlPlane", "nodePoolSpec", "clusterName"), "other"),
                                  "spec.controlPlane.nodePoolSpec.clusterName", "names cluster 'other'"),
    "admin with pools": (_both(_set((2, "spec", "type"), "admin"), _del(LBP + ("vips", "ingressVIP"))),
                         "spec.loadBalancer.addressPools", "admin clusters take no address pools"),
    "admin with workers": (_both(_set((2, "spec", "type"), "admin"), _del(LBP + ("vips", "ingressVIP")),
                                 _del(LBP + ("addressPools",))),
                           "NodePool 'workers': kind", "admin clusters have no worker node pools"),
    "bgp fields on layer2": (_set(LBP + ("localASN",), 65001), "spec.loadBalancer.localASN", "is for BGP"),
    "bad cni": (_set((2, "spec", "clusterNetwork", "cni"), "calico"), "spec.clusterNetwork.cni", "not allowed"),
    # Google's node settings
    "max pods": (_set((2, "spec", "nodeConfig"), {"podDensity": {"maxPodsPerNode": 500}}),
                 "spec.nodeConfig.podDensity.maxPodsPerNode", "out of range"),
    "max pods too few": (_set((2, "spec", "nodeConfig"), {"podDensity": {"maxPodsPerNode": 8}}),
                         "spec.nodeConfig.podDensity.maxPodsPerNode", "use 16 to 250 pods per node"),
    "docker runtime": (_set((2, "spec", "nodeConfig"), {"containerRuntime": "docker"}),
                       "spec.nodeConfig.containerRuntime", "Google bmctl's `containerRuntime: docker`"),
    "registry burst below qps": (_set((3, "spec", "kubeletConfig"), {"registryPullQPS": 10, "registryBurst": 5}),
                                 "NodePool 'workers': spec.kubeletConfig.registryBurst", "below registryPullQPS"),
    "kubelet may not set label": (_set((3, "spec", "labels"), {"node-role.kubernetes.io/worker": ""}),
                                  "NodePool 'workers': spec.labels", "the kubelet may not set"),
    "bad label value": (_set((3, "spec", "labels"), {"example.com/tier": "front end"}),
                        "NodePool 'workers': spec.labels", "not a valid label value"),
    "bad taint effect": (_set((3, "spec", "taints"), [{"key": "dedicated", "value": "gpu", "effect": "Never"}]),
                         "NodePool 'workers': spec.taints[0].effect", "not allowed"),
    "bad cert SAN": (_set((2, "spec", "controlPlane", "apiServerCertExtraSANs"), ["api example.com"]),
                     "spec.controlPlane.apiServerCertExtraSANs[0]", "neither an IP address nor a DNS name"),
    "oidc over http": (_set((2, "spec", "authentication"), {"oidc": {"issuerURL": "http://idp.example.com",
                                                                     "clientID": "bmctl"}}),
                       "spec.authentication.oidc.issuerURL", "not an https URL"),
    "oidc inline CA": (_set((2, "spec", "authentication"), {"oidc": {"issuerURL": "https://idp.example.com",
                                                                     "clientID": "bmctl",
                                                                     "certificateAuthorityData": "LS0t"}}),
                       "spec.authentication.oidc.certificateAuthorityData", "not supported by bmctl"),
    # Google features bmctl does not build: named, with what to do instead
    "google storage": (_set((2, "spec", "storage"), {"lvpShare": {"path": "/mnt/localpv-share"}}), "spec.storage",
                       "Google bmctl's local volume provisioning"),
    "google edge profile": (_set((2, "spec", "profile"), "edge"), "spec.profile", "Google bmctl's `profile: edge`"),
    "google multus": (_set((2, "spec", "clusterNetwork", "multipleNetworkInterfaces"), True),
                      "spec.clusterNetwork.multipleNetworkInterfaces", "Google bmctl's multiple network interfaces"),
    # node software: bundle, registries, proxy
    "proxy not a URL": (_set((2, "spec", "proxy"), {"url": "proxy.example.com:3128"}), "spec.proxy.url",
                        "not an http:// or https:// proxy URL"),
    "proxy bad noProxy": (_set((2, "spec", "proxy"), {"url": "http://proxy.example.com:3128",
                                                      "noProxy": ["a.example.com, b.example.com"]}),
                          "spec.proxy.noProxy[0]", "not a host, domain or CIDR"),
    "bundle missing": (_set((0, "bundlePath"), "no-such-bundle.tar"), "bundlePath", "no bundle at"),
    "mirror bad scheme": (_set((0, "registryMirrors"), [{"endpoint": "ftp://10.0.0.5:5000"}]),
                          "registryMirrors[0].endpoint", "has scheme 'ftp'"),
    "mirror namespace without v2": (_set((0, "registryMirrors"), [{"endpoint": "10.0.0.5:5000/team"}]),
                                    "registryMirrors[0].endpoint", "/v2/NAMESPACE"),
    "mirror CA missing": (_set((0, "registryMirrors"), [{"endpoint": "10.0.0.5:5000", "caCertPath": "nope.crt"}]),
                          "registryMirrors[0].caCertPath", "no file at 'nope.crt'"),
    "mirror CA over http": (_set((0, "registryMirrors"), [{"endpoint": "http://10.0.0.5:5000",
                                                           "caCertPath": "/dev/null"}]),
                            "registryMirrors[0].caCertPath", "plain-HTTP"),
    "mirror host twice": (_set((0, "registryMirrors"), [{"endpoint": "10.0.0.5:5000", "hosts": ["quay.io"]},
                                                        {"endpoint": "10.0.0.6:5000", "hosts": ["quay.io"]}]),
                          "registryMirrors[1].hosts[0]", "mirrored by registryMirrors[0] already"),
    "mirror bad host": (_set((0, "registryMirrors"), [{"endpoint": "10.0.0.5:5000", "hosts": ["quay io"]}]),
                        "registryMirrors[0].hosts[0]", "not a registry host"),
    "private registry bad host": (_set((2, "spec", "nodeConfig"), {"privateRegistries": [{"host": "a b"}]}),
                                  "spec.nodeConfig.privateRegistries[0].host", "not a registry host"),
    "nodepool cluster name": (_set((3, "spec", "clusterName"), "other"), "NodePool 'workers': spec.clusterName",
                              "names cluster 'other'"),
    "unknown kind": (_set((3, "kind"), "MachinePool"), "kind", "unknown kind"),
    "unknown header key": (_both(_del((0, "sshPrivateKeyPath")), _set((0, "sshPrivateKeyPth"), "/x")),
                           "sshPrivateKeyPth", "did you mean 'sshPrivateKeyPath'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule(name, tmp_path):
    mutate, path, fragment = CASES[name]
    docs = base_docs()
    mutate(docs)
    file, problems = problems_for(docs, tmp_path)
    errors = [p for p in problems if p.severity == "error"]
    matching = [p for p in errors if p.path.startswith(path) and fragment in p.render()]
    assert matching, f"no error at {path} containing {fragment!r}; got:\n" + "\n".join(p.render() for p in errors)
    p = matching[0]
    text = p.render()
    # one paragraph with the field, file:line and the fix
    assert "\n" not in text
    assert re.search(rf"\({re.escape(str(file))}:\d+(:\d+)?\)", text), text
    assert "Fix: " in text and len(p.fix) > 5


def test_error_line_points_at_the_field(tmp_path):
    docs = base_docs()
    lb(docs)["addressPools"][1]["addresses"] = ["192.0.2.100 - 192.0.2.150"]
    text = dump(docs)
    file, problems = problems_for(text, tmp_path)
    (p,) = [p for p in problems if p.path == "spec.loadBalancer.addressPools[1].addresses[0]"]
    assert "192.0.2.100 - 192.0.2.150" in text.splitlines()[p.line - 1]


def test_every_problem_reported_at_once(tmp_path):
    docs = base_docs()
    lb(docs)["addressPools"][0]["addresses"] = ["192.0.2.150-192.0.2.100"]
    lb(docs)["addressPools"][1]["avoidBuggyIP"] = True
    lb(docs)["type"] = "bgp"
    spec(docs)["nodeAccess"]["loginUser"] = "Bad User"
    _, problems = problems_for(docs, tmp_path)
    paths = {p.path for p in problems if p.severity == "error"}
    assert {"spec.loadBalancer.addressPools[0].addresses[0]", "spec.loadBalancer.addressPools[1].avoidBuggyIP",
            "spec.loadBalancer.localASN", "spec.nodeAccess.loginUser"} <= paths


def test_malformed_yaml_names_line(tmp_path):
    text = dump(base_docs()).replace("mode: bundled", "mode: [bundled")
    _, problems = problems_for(text, tmp_path)
    assert problems[0].line is not None and "not valid YAML" in problems[0].message


def test_duplicate_keys_are_errors(tmp_path):
    text = dump(base_docs()).replace("    mode: bundled\n", "    mode: bundled\n    mode: manual\n")
    _, problems = problems_for(text, tmp_path)
    assert any("appears twice" in p.message and p.path == "spec.loadBalancer.mode" for p in problems)


def test_no_rename_hint_towards_a_key_already_there(tmp_path):
    """Renaming a typo into a key the mapping already has would make a duplicate key."""
    docs = base_docs()
    docs[0]["sshPrivateKeyPth"] = "/x"
    spec(docs)["clusterNetwrk"] = {}
    _, problems = problems_for(docs, tmp_path)
    typos = [p for p in problems if p.path in ("sshPrivateKeyPth", "spec.clusterNetwrk")]
    assert len(typos) == 2 and not any("did you mean" in p.fix for p in typos)
    assert all("remove it" in p.fix for p in typos)


def test_google_fields_warn_once_and_load(tmp_path):
    docs = base_docs()
    docs[1]["metadata"]["name"] = docs[2]["metadata"]["namespace"] = docs[3]["metadata"]["namespace"] = "t1-ns"
    docs[2]["metadata"]["annotations"] = {"baremetal.cluster.gke.io/external-cloud-provider": "true",
                                          "team.example.com/owner": "ops"}
    docs[2]["metadata"]["labels"] = {"env": "prod"}
    docs[3]["metadata"]["labels"] = {"env": "prod"}
    spec(docs)["gkeConnect"] = {"projectID": "example-project"}
    spec(docs)["clusterOperations"] = {"projectID": "example-project", "location": "us-central1"}
    spec(docs)["clusterSecurity"] = {"authorization": {"clusterAdmin": {"gcpAccounts": ["a@example.com"]}}}
    spec(docs)["gkeOnPremAPI"] = {"enabled": False}
    spec(docs)["bypassPreflightCheck"] = True
    spec(docs)["controlPlane"]["nodePoolSpec"]["clusterName"] = "t1"
    spec(docs)["clusterNetwork"]["advancedNetworking"] = False
    spec(docs)["clusterNetwork"]["multipleNetworkInterfaces"] = False
    spec(docs)["nodeConfig"] = {"containerRuntime": "containerd", "podDensity": {"maxPodsPerNode": 250}}
    spec(docs)["authentication"] = {"oidc": {"issuerURL": "https://idp.example.com", "clientID": "bmctl",
                                             "kubectlRedirectURL": "http://localhost:9879/callback"}}
    docs[3]["spec"]["upgradeStrategy"] = {"concurrentNodes": 2}
    path = tmp_path / "c.yaml"
    path.write_text(dump(docs))
    config = load_config(path)
    warned = [w.path for w in config.warnings if w.severity == "warning"]
    for key in ("spec.gkeConnect", "spec.clusterOperations", "spec.clusterSecurity", "spec.gkeOnPremAPI",
                "spec.bypassPreflightCheck", "spec.authentication.oidc.kubectlRedirectURL",
                "metadata.annotations.baremetal.cluster.gke.io/external-cloud-provider",
                "NodePool 'workers': spec.upgradeStrategy"):
        assert warned.count(key) == 1, (key, warned)
    assert not any("advancedNetworking" in w or "multipleNetworkInterfaces" in w or "team.example.com" in w
                   for w in warned), "a feature switched off, or a user's own annotation, is no news"
    assert config.spec.nodeConfig.podDensity.maxPodsPerNode == 250
    assert config.spec.authentication.oidc.clientID == "bmctl"


@pytest.mark.parametrize("release,installs,warns", [
    ("1.34.0-gke.10", "v1.34.2", None),
    ("1.16.2", "v1.34.2", "Google's release 1.16.2 runs Kubernetes 1.27, which bmctl cannot install"),
    ("v1.6.0", "v1.34.2", "runs Kubernetes 1.18"),
    ("0.7.0-gke.0", "v1.34.2", "not a Google release bmctl knows"),
])
def test_anthos_version_maps_to_the_kubernetes_bmctl_installs(release, installs, warns, tmp_path):
    docs = base_docs()
    spec(docs)["anthosBareMetalVersion"] = release
    path = tmp_path / "c.yaml"
    path.write_text(dump(docs))
    config = load_config(path)
    assert config.spec.kubernetesVersion == installs
    found = [w for w in config.warnings if w.path == "spec.anthosBareMetalVersion"]
    if warns is None:
        assert not found
    else:
        assert len(found) == 1 and warns in found[0].message and installs in found[0].message


def test_any_namespace_name_shared_by_cluster_and_pools(tmp_path):
    docs = base_docs()
    docs[1]["metadata"]["name"] = docs[2]["metadata"]["namespace"] = docs[3]["metadata"]["namespace"] = "prod-ns"
    path = tmp_path / "c.yaml"
    path.write_text(dump(docs))
    assert load_config(path).name == "t1"


def test_manual_mode_may_use_the_apiserver_port_on_its_own_balancer(tmp_path):
    docs = base_docs()
    lb(docs).update(mode="manual", ports={"controlPlaneLBPort": 6444})
    del lb(docs)["addressPools"]
    path = tmp_path / "c.yaml"
    path.write_text(dump(docs))
    assert load_config(path).lb.ports.controlPlaneLBPort == 6444


def test_bgp_sub_fields_are_not_unknown(tmp_path):
    docs = base_docs()
    lb(docs).update(type="bgp", localASN=65001, bgpPeers=[{"ip": "192.0.2.1", "asn": 65000,
                                                            "controlPlaneNodes": ["192.0.2.11"]}])
    path = tmp_path / "cluster.yaml"
    path.write_text(dump(docs))
    config = load_config(path)  # Google's BGP fields load as they are
    assert config.lb.bgpPeers[0].controlPlaneNodes == ["192.0.2.11"]


def test_update_refuses_node_settings_and_cni(tmp_path):
    from bmctl.config.changes import compare
    before = base_docs()
    after = base_docs()
    spec(after)["clusterNetwork"]["cni"] = "none"
    after[3]["spec"]["taints"] = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    spec(after)["nodeConfig"] = {"podDensity": {"maxPodsPerNode": 64}}
    refused = compare(parse_config(dump(before), "a.yaml"), parse_config(dump(after), "b.yaml")).refused
    paths = {f.path for f in refused}
    assert ("spec", "clusterNetwork", "cni") in paths and ("spec", "taints") in paths
    assert ("spec", "nodeConfig", "podDensity", "maxPodsPerNode") in paths


def test_missing_namespace_document(tmp_path):
    docs = base_docs()
    del docs[1]
    _, problems = problems_for(docs, tmp_path)
    assert any("no Namespace document" in p.message for p in problems)


def test_gcp_key_paths_warn_and_are_ignored(tmp_path):
    docs = base_docs()
    docs[0]["gcrKeyPath"] = "/keys/gcr.json"
    path = tmp_path / "c.yaml"
    path.write_text(dump(docs))
    config = load_config(path)
    assert any(w.path == "gcrKeyPath" and w.severity == "warning" for w in config.warnings)


def test_manual_mode_needs_no_pools(tmp_path):
    docs = base_docs()
    lb(docs)["mode"] = "manual"
    del lb(docs)["addressPools"]
    del lb(docs)["vips"]["ingressVIP"]
    path = tmp_path / "c.yaml"
    path.write_text(dump(docs))
    assert load_config(path).bundled is False


def test_huge_pools_validate_quickly(tmp_path):
    docs = base_docs()
    spec(docs)["clusterNetwork"] = {"pods": {"cidrBlocks": ["172.16.0.0/16"]},
                                    "services": {"cidrBlocks": ["172.17.0.0/20"]}}
    lb(docs)["addressPools"] = [
        {"name": "huge4", "addresses": ["10.0.0.0/8"], "avoidBuggyIPs": True},
        {"name": "huge6", "addresses": ["2001:db8::/64"]},
        {"name": "doc", "addresses": ["192.0.2.100-192.0.2.150"]},
    ]
    start = time.perf_counter()
    config = parse_config(dump(docs), "huge.yaml")
    # Generous bound: enumerating 10.0.0.0/8 alone takes far longer; see benchmarks/ for the figure.
    assert time.perf_counter() - start < 5
    assert len(config.lb.addressPools) == 3


def test_overlap_in_huge_pools_found(tmp_path):
    docs = base_docs()
    lb(docs)["addressPools"].append({"name": "big", "addresses": ["2001:db8::/64"]})
    lb(docs)["addressPools"].append({"name": "big2", "addresses": ["2001:db8::ffff:0-2001:db8::ffff:ffff"]})
    _, problems = problems_for(docs, tmp_path)
    assert any(p.path == "spec.loadBalancer.addressPools[3].addresses[0]" and "overlaps" in p.message
               for p in problems)


def _docker_config(tmp_path, auths):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def test_mirror_credentials_must_name_the_endpoint(tmp_path):
    import base64
    docs = base_docs()
    creds = _docker_config(tmp_path, {"other:5000": {"auth": base64.b64encode(b"u:p").decode()}})
    docs[0]["registryMirrors"] = [{"endpoint": "10.0.0.5:5000", "pullCredentialConfigPath": str(creds)}]
    _, problems = problems_for(docs, tmp_path)
    text = "\n".join(p.render() for p in problems)
    assert "registryMirrors[0].pullCredentialConfigPath" in text and "no credential for 10.0.0.5:5000" in text
    assert "u:p" not in text


def test_mirrors_proxy_and_private_registries_load(tmp_path):
    import base64
    docs = base_docs()
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    creds = _docker_config(tmp_path, {"https://10.0.0.5:5000": {"auth": base64.b64encode(b"puller:s3cret").decode()}})
    docs[0]["registryMirrors"] = [{"endpoint": "https://10.0.0.5:5000/v2/team", "caCertPath": "ca.crt",
                                   "pullCredentialConfigPath": creds.name,
                                   "hosts": ["registry.k8s.io", "quay.io"]}]
    docs[2]["spec"]["proxy"] = {"url": "http://proxy.example.com:3128", "noProxy": [".corp.example.com"]}
    docs[2]["spec"]["nodeConfig"] = {"privateRegistries": [{"host": "10.0.0.5:5000", "caCertPath": str(ca)}]}
    path = tmp_path / "cluster.yaml"
    path.write_text(dump(docs))
    config = load_config(path)
    assert config.header.registryMirrors[0].hosts == ["registry.k8s.io", "quay.io"]
    assert config.spec.proxy.url == "http://proxy.example.com:3128"
