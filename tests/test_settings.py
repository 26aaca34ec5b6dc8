"""The rendered load-balancer settings are the ones SPEC.md asks for (pure renderers, no machine)."""
from __future__ import annotations

import re

import yaml

from bmctl.config import parse_config
from bmctl.config.model import derive_vrid
from bmctl.render import assumed_facts, kubeadm_config, lb_node_files, metallb_manifests
from bmctl.render.controlplane_lb import haproxy_cfg, keepalived_conf
from bmctl.render.facts import NodeFacts
from bmctl.render.kubeadm import kubeadm_action
from bmctl.secrets import ClusterSecrets
from conftest import base_docs, dump


def config_from(docs):
    return parse_config(dump(docs), "test.yaml")


def separate_lb_docs():
    docs = base_docs()
    docs[2]["spec"]["loadBalancer"]["nodePoolSpec"] = {
        "nodes": [{"address": "192.0.2.31"}, {"address": "192.0.2.32", "k8sIP": "192.0.2.42"}]}
    return docs


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, None: 0.001, "m": 60, "h": 3600, "d": 86400}[unit]


def test_haproxy_balances_every_apiserver_with_https_readyz():
    config = config_from(base_docs())
    cfg = haproxy_cfg(config)
    servers = re.findall(r"^\s*server \S+ (\S+)$", cfg, re.M)
    assert servers == ["192.0.2.11:6444", "192.0.2.12:6444", "192.0.2.13:6444"]
    assert "bind *:443" in cfg
    assert "http-check connect ssl" in cfg and "uri /readyz" in cfg
    assert re.search(r"default-server .*check-ssl.*on-marked-down shutdown-sessions", cfg)
    for kind in ("client", "server", "tunnel"):
        value = re.search(rf"^\s*timeout {kind} (\S+)$", cfg, re.M).group(1)
        assert seconds(value) >= 3600, f"timeout {kind} {value} would cut watches"


def test_haproxy_port_follows_config():
    docs = base_docs()
    docs[2]["spec"]["loadBalancer"]["ports"]["controlPlaneLBPort"] = 8443
    assert "bind *:8443" in haproxy_cfg(config_from(docs))


def test_keepalived_all_backup_nopreempt_distinct_priorities():
    config = config_from(separate_lb_docs())
    confs = [keepalived_conf(config, n, NodeFacts("eth0")) for n in config.lb_nodes]
    priorities = [int(re.search(r"priority (\d+)", c).group(1)) for c in confs]
    assert len(set(priorities)) == len(priorities) == 2
    for c in confs:
        assert re.search(r"^\s*state BACKUP$", c, re.M)
        assert re.search(r"^\s*nopreempt$", c, re.M)
        assert "vrrp_version 3" in c
        assert re.search(r"track_script \{\s*chk_haproxy\s*\}", c)
        assert re.search(r"virtual_router_id (\d+)", c).group(1) == str(derive_vrid("t1"))
        assert "192.0.2.10/32 dev eth0" in c
        assert "vrrp_garp_master_delay" in c


def test_keepalived_uses_k8s_ip_and_unicast_peers():
    docs = separate_lb_docs()
    docs[2]["spec"]["loadBalancer"]["vrrp"] = {"unicast": True, "virtualRouterID": 77, "advertInterval": 0.5,
                                               "interface": "bond0"}
    config = config_from(docs)
    second = keepalived_conf(config, config.lb_nodes[1], assumed_facts(config)["192.0.2.32"])
    assert "unicast_src_ip 192.0.2.42" in second
    assert re.search(r"unicast_peer \{\s*192\.0\.2\.31\s*\}", second)
    assert "virtual_router_id 77" in second and "advert_int 0.5" in second and "interface bond0" in second


def test_vrid_differs_between_clusters():
    ids = {derive_vrid(name) for name in ("prod", "staging", "edge", "lab", "dev")}
    assert len(ids) == 5 and all(1 <= i <= 255 for i in ids)


def test_static_pods_mount_the_config_they_read():
    config = config_from(base_docs())
    files = {f.path: f for f in lb_node_files(config, config.lb_nodes[0], NodeFacts("eth0"))}
    assert list(files)[-2:] == ["/etc/kubernetes/manifests/haproxy.yaml", "/etc/kubernetes/manifests/keepalived.yaml"]
    for name, conf in (("haproxy", "/etc/haproxy/haproxy.cfg"), ("keepalived", "/etc/keepalived/keepalived.conf")):
        pod = yaml.safe_load(files[f"/etc/kubernetes/manifests/{name}.yaml"].content)
        assert pod["spec"]["hostNetwork"] is True
        (container,) = pod["spec"]["containers"]
        mount, status_mount = container["volumeMounts"]
        volume, status = pod["spec"]["volumes"]
        assert volume["hostPath"]["path"] == conf.rsplit("/", 1)[0] and mount.get("readOnly") is True
        # the reloader reports what it loaded in a writable folder of the host
        assert status["hostPath"] == {"path": "/var/lib/bmctl/lb", "type": "DirectoryOrCreate"}
        assert status_mount["mountPath"] == "/var/lib/bmctl/lb" and not status_mount.get("readOnly")
        # the file the command reads is inside the mount, under the same name
        args = " ".join(container["command"])
        read = re.search(rf"({re.escape(mount['mountPath'])}/\S+)", args).group(1)
        assert read.rsplit("/", 1)[1] == conf.rsplit("/", 1)[1]
    caps = yaml.safe_load(files["/etc/kubernetes/manifests/keepalived.yaml"].content)["spec"]["containers"][0]
    assert set(caps["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW", "NET_BROADCAST", "SYS_NICE"}


def test_config_change_reloads_in_place_instead_of_restarting_the_pod():
    """A changed haproxy.cfg or keepalived.conf leaves the static pod manifests as they are (a new
    manifest would restart the pod and move the VIP); the pods' reloaders pick the change up."""
    a = config_from(base_docs())
    docs = base_docs()
    docs[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"].append({"address": "192.0.2.14"})
    docs[2]["spec"]["loadBalancer"]["vrrp"] = {"advertInterval": 0.5}
    b = config_from(docs)
    files = lambda c: {f.path: f.content for f in lb_node_files(c, c.lb_nodes[0], NodeFacts("eth0"))}  # noqa: E731
    fa, fb = files(a), files(b)
    assert fa["/etc/haproxy/haproxy.cfg"] != fb["/etc/haproxy/haproxy.cfg"]
    assert fa["/etc/keepalived/keepalived.conf"] != fb["/etc/keepalived/keepalived.conf"]
    for pod in ("haproxy", "keepalived"):
        path = f"/etc/kubernetes/manifests/{pod}.yaml"
        assert fa[path] == fb[path]
        script = yaml.safe_load(fa[path])["spec"]["containers"][0]["command"][2]
        assert "sha256sum" in script and ("USR2" if pod == "haproxy" else "HUP") in script


def metallb_docs(config, secrets=None):
    docs = []
    for f in metallb_manifests(config, secrets or ClusterSecrets.redacted()):
        docs += [d for d in yaml.safe_load_all(f.content) if d]
    return docs


def test_metallb_pools_and_speakers_follow_config():
    docs = base_docs()
    docs[2]["spec"]["loadBalancer"]["addressPools"][1]["avoidBuggyIPs"] = True
    objs = metallb_docs(config_from(docs))
    pools = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "IPAddressPool"}
    # the ingress VIP is carved out of pool1 into a pool that is never auto-assigned
    assert pools["pool1"]["addresses"] == ["192.0.2.101-192.0.2.150"] and pools["pool1"]["autoAssign"] is True
    assert pools["bmctl-ingress-vip"] == {"addresses": ["192.0.2.100/32"], "autoAssign": False, "avoidBuggyIPs": False}
    assert pools["pool2"] == {"addresses": ["192.0.2.160/28"], "autoAssign": False, "avoidBuggyIPs": True}
    (l2,) = [o for o in objs if o["kind"] == "L2Advertisement"]
    assert l2["spec"]["nodeSelectors"] == [{"matchLabels": {"baremetal.cluster.gke.io/lbnode": "true"}}]
    assert set(l2["spec"]["ipAddressPools"]) == set(pools)
    (speaker,) = [o for o in objs if o["kind"] == "DaemonSet"]
    assert speaker["spec"]["template"]["spec"]["nodeSelector"]["baremetal.cluster.gke.io/lbnode"] == "true"
    env = {e["name"] for e in speaker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"METALLB_NODE_NAME", "METALLB_ML_SECRET_KEY_PATH", "METALLB_ML_BIND_ADDR"} <= env


def test_memberlist_secret_carries_the_generated_key():
    secrets = ClusterSecrets.generate()
    objs = metallb_docs(config_from(base_docs()), secrets)
    (secret,) = [o for o in objs if o["kind"] == "Secret"]
    assert secret["stringData"]["secretkey"] == secrets.memberlist_key
    assert len(secrets.memberlist_key) > 100


def with_proxy_mode(mode: str | None):
    """A config with kube-proxy in `mode` (None: the default), and the KubeProxyConfiguration it renders."""
    docs = base_docs()
    if mode is not None:
        docs[2]["spec"]["clusterNetwork"]["kubeProxyMode"] = mode
    config = config_from(docs)
    proxy = [d for d in yaml.safe_load_all(kubeadm_config(config, config.control_plane_nodes[0],
                                                          ClusterSecrets.generate()).content)
             if d and d.get("kind") == "KubeProxyConfiguration"][0]
    return config, proxy


def test_ipvs_sets_strict_arp():
    config, proxy = with_proxy_mode("ipvs")
    assert proxy["mode"] == "ipvs" and proxy["ipvs"]["strictARP"] is True
    plain, proxy = with_proxy_mode(None)
    assert proxy["mode"] == "iptables" and "ipvs" not in proxy
    assert [w.path for w in config.warnings if "kubeProxyMode" in w.path] == ["spec.clusterNetwork.kubeProxyMode"]
    assert not [w for w in plain.warnings if "kubeProxyMode" in w.path]


def test_nftables_mode_reaches_kube_proxy_without_warning():
    config, proxy = with_proxy_mode("nftables")
    assert proxy["mode"] == "nftables" and "ipvs" not in proxy
    assert not [w for w in config.warnings if "kubeProxyMode" in w.path]


def test_kubeadm_points_everything_at_the_vip():
    config = config_from(separate_lb_docs())
    secrets = ClusterSecrets.generate()
    actions = {n.address: kubeadm_action(config, n) for n in config.all_nodes}
    assert actions == {"192.0.2.11": "init", "192.0.2.12": "join-control-plane", "192.0.2.13": "join-control-plane",
                       "192.0.2.31": "join", "192.0.2.32": "join", "192.0.2.21": "join"}
    init = list(yaml.safe_load_all(kubeadm_config(config, config.control_plane_nodes[0], secrets).content))
    init_cfg, cluster_cfg = init[0], init[1]
    assert init_cfg["localAPIEndpoint"] == {"advertiseAddress": "192.0.2.11", "bindPort": 6444}
    assert init_cfg["bootstrapTokens"][0]["token"] == secrets.bootstrap_token
    assert cluster_cfg["controlPlaneEndpoint"] == "192.0.2.10:443"
    assert cluster_cfg["networking"] == {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/20"}
    assert "192.0.2.10" in cluster_cfg["apiServer"]["certSANs"]
    join = yaml.safe_load(kubeadm_config(config, config.lb_nodes[1], secrets, "sha256:abc").content)
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "192.0.2.10:443"
    assert join["discovery"]["bootstrapToken"]["caCertHashes"] == ["sha256:abc"]
    assert join["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": "192.0.2.42"}]
    cp_join = yaml.safe_load(kubeadm_config(config, config.control_plane_nodes[2], secrets).content)
    assert cp_join["controlPlane"]["localAPIEndpoint"]["bindPort"] == 6444


def test_single_node_cluster_runs_workloads_on_the_control_plane():
    docs = base_docs()
    del docs[3]
    docs[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"] = [{"address": "192.0.2.11"}]
    config = config_from(docs)
    init = next(yaml.safe_load_all(kubeadm_config(config, config.control_plane_nodes[0],
                                                  ClusterSecrets.generate()).content))
    assert init["nodeRegistration"]["taints"] == []
    with_workers = config_from(base_docs())
    init = next(yaml.safe_load_all(kubeadm_config(with_workers, with_workers.control_plane_nodes[0],
                                                  ClusterSecrets.generate()).content))
    assert "taints" not in init["nodeRegistration"]


def _registration(config, node, secrets=None):
    return next(yaml.safe_load_all(kubeadm_config(config, node, secrets or ClusterSecrets.generate()).content))[
        "nodeRegistration"]


def test_google_node_settings_reach_kubeadm():
    docs = separate_lb_docs()
    spec = docs[2]["spec"]
    spec["nodeConfig"] = {"podDensity": {"maxPodsPerNode": 64}}
    spec["controlPlane"]["apiServerCertExtraSANs"] = ["api.example.com", "203.0.113.7"]
    spec["controlPlane"]["nodePoolSpec"]["taints"] = [{"key": "example.com/cp", "value": "only", "effect": "NoExecute"}]
    spec["authentication"] = {"oidc": {"issuerURL": "https://idp.example.com", "clientID": "bmctl",
                                       "username": "email", "group": "groups", "groupPrefix": "oidc:"}}
    docs[3]["spec"].update(
        kubeletConfig={"registryPullQPS": 10, "registryBurst": 20, "serializeImagePulls": False},
        taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
        labels={"example.com/tier": "gpu", "node.kubernetes.io/pool": "workers"})
    config = config_from(docs)
    worker = config.worker_nodes[0]
    reg = _registration(config, worker)
    args = {a["name"]: a["value"] for a in reg["kubeletExtraArgs"]}
    assert args == {"node-ip": "192.0.2.21", "max-pods": "64", "registry-qps": "10", "registry-burst": "20",
                    "serialize-image-pulls": "false",
                    "node-labels": "example.com/tier=gpu,node.kubernetes.io/pool=workers"}
    assert reg["taints"] == [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    # the LB pool sets nothing of its own: pod density only, kubeadm's default taints
    lb_reg = _registration(config, config.lb_nodes[0])
    assert {a["name"] for a in lb_reg["kubeletExtraArgs"]} == {"node-ip", "max-pods"} and "taints" not in lb_reg
    # control plane with workers: its own taint beside kubeadm's control-plane taint
    init = list(yaml.safe_load_all(kubeadm_config(config, config.control_plane_nodes[0],
                                                  ClusterSecrets.generate()).content))
    assert init[0]["nodeRegistration"]["taints"] == [
        {"key": "node-role.kubernetes.io/control-plane", "value": "", "effect": "NoSchedule"},
        {"key": "example.com/cp", "value": "only", "effect": "NoExecute"}]
    api = init[1]["apiServer"]
    assert {"api.example.com", "203.0.113.7", "192.0.2.10"} <= set(api["certSANs"])
    assert {a["name"]: a["value"] for a in api["extraArgs"]} == {
        "oidc-issuer-url": "https://idp.example.com", "oidc-client-id": "bmctl", "oidc-username-claim": "email",
        "oidc-groups-claim": "groups", "oidc-groups-prefix": "oidc:"}
    plain = config_from(base_docs())
    plain_init = kubeadm_config(plain, plain.control_plane_nodes[0], ClusterSecrets.generate()).content
    assert "extraArgs" not in list(yaml.safe_load_all(plain_init))[1]["apiServer"]


def test_manual_mode_kubeadm_names_no_haproxy():
    docs = base_docs()
    lb = docs[2]["spec"]["loadBalancer"]
    lb["mode"] = "manual"
    del lb["addressPools"]
    config = config_from(docs)
    text = kubeadm_config(config, config.control_plane_nodes[0], ClusterSecrets.generate()).content
    assert "HAProxy" not in text and "your own load balancer" in text
    bundled = config_from(base_docs())
    assert "HAProxy" in kubeadm_config(bundled, bundled.control_plane_nodes[0], ClusterSecrets.generate()).content
