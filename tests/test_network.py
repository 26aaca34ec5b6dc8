"""The pod network: bmctl's flannel objects are upstream's kube-flannel.yml, object by object and field
by field, except for the deviations written down in bmctl/render/network.py; the phase applies them,
waits for flannel and the nodes, and deploys nothing with `cni: none`; reset removes flannel's leftovers."""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import pytest
import yaml

from conftest import REPO, base_docs, dump, pinned_texts, require_root, require_tool
from test_render import K8S_VERSION

import bmctl.phases.network as phase_mod
from bmctl.config import ConfigError, parse_config
from bmctl.commands.cluster import select
from bmctl.errors import BmctlError
from bmctl.phases import Context, create_cluster_phases
from bmctl.phases.network import NODE_CLEANUP, PodNetwork
from bmctl.progress import Progress
from bmctl import release as releases
from bmctl.render import NodeFacts
from bmctl.render.network import (ABSENT, DEVIATIONS, PINNED, PUBLIC_IP_ANNOTATION, UPSTREAM_VERSION, Deviation,
                                  FlannelImages, flannel_objects, network_manifests, path_text, with_deviations)
from bmctl.secrets import ClusterSecrets

# upstream's Documentation/kube-flannel.yml of this release, as bmctl's release pins it (module,
# version, path, sha256) and bmctl/release/upstream.py reads it (from flannel's Go module)
SOURCE_NOTE = REPO / "tests/data/upstream" / f"kube-flannel-{UPSTREAM_VERSION}.yml.source"
PIN = releases.default().manifest(PINNED)


def upstream_text() -> str:
    return pinned_texts(PINNED)[0]
POD_CIDR = "10.200.0.0/16"   # not upstream's 10.244.0.0/16, so that the Network deviation shows
TEST_IMAGES = FlannelImages(flannel="registry.test/flannel:t", cni_plugin="registry.test/flannel-cni-plugin:t")


def make_config(pods: str = POD_CIDR, **changes):
    docs = base_docs()
    docs[2]["spec"]["clusterNetwork"]["pods"]["cidrBlocks"] = [pods]
    for key, value in changes.items():
        docs[2]["spec"]["clusterNetwork"][key] = value
    return parse_config(dump(docs), "t1.yaml")


def with_network(config, **fields):
    """The config with clusterNetwork fields set, also ones the model does not have yet (cni)."""
    net = config.spec.clusterNetwork.model_copy(update=fields)
    spec = config.spec.model_copy(update={"clusterNetwork": net})
    return dataclasses.replace(config, cluster=config.cluster.model_copy(update={"spec": spec}))


def upstream_objects() -> list[dict]:
    return [d for d in yaml.safe_load_all(upstream_text()) if d]


def ident(obj: dict) -> tuple:
    return obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]


def leaves(value, path: tuple = ()) -> dict[tuple, object]:
    """Every scalar of an object by path. List items that have a name are keyed by it ("[name]"), so
    that a reordering is a difference but an insertion does not shift every later item; a `*.json` value
    in a ConfigMap's data is a JSON document and is walked into."""
    if isinstance(value, dict):
        if not value:
            return {path: {}}
        out = {}
        for key, item in value.items():
            if len(path) == 1 and path[0] == "data" and key.endswith(".json") and isinstance(item, str):
                item = json.loads(item)
            out.update(leaves(item, (*path, key)))
        return out
    if isinstance(value, list):
        if not value:
            return {path: []}
        named = all(isinstance(i, dict) and "name" in i for i in value)
        out = {(*path, "#order"): [i["name"] for i in value]} if named else {}
        for n, item in enumerate(value):
            out.update(leaves(item, (*path, f"[{item['name']}]" if named else f"[{n}]")))
        return out
    return {path: value}


def problems(ours: list[dict], upstream: list[dict], deviations=DEVIATIONS, config=None,
             image_refs: FlannelImages = TEST_IMAGES) -> list[str]:
    """Every difference that no deviation explains, and every deviation that no longer applies."""
    config = config or make_config()
    found = []
    if [ident(o) for o in ours] != [ident(o) for o in upstream]:
        return [f"objects: ours {[ident(o) for o in ours]} != upstream {[ident(o) for o in upstream]}"]
    used = set()
    for mine, theirs in zip(ours, upstream):
        kind, _, name = ident(mine)
        a, b = leaves(mine), leaves(theirs)
        devs = {d.path: d for d in deviations if (d.kind, d.name) == (kind, name)}
        for path in sorted(set(a) | set(b), key=str):
            got, want = a.get(path, ABSENT), b.get(path, ABSENT)
            if got == want:
                continue
            where = f"{kind} {name} {path_text(path)}"
            dev = devs.get(path)
            if dev is None:
                found.append(f"{where}: ours {got!r}, upstream {want!r}, and no deviation says why")
                continue
            used.add((kind, name, path))
            if want != dev.upstream:
                found.append(f"{where}: the deviation no longer applies: upstream now says {want!r}, "
                             f"the deviation was written for {dev.upstream!r}")
            if got != dev.ours(config, image_refs):
                found.append(f"{where}: ours {got!r}, the deviation says {dev.ours(config, image_refs)!r}")
    for d in deviations:
        if (d.kind, d.name, d.path) not in used:
            found.append(f"{d.kind} {d.name} {path_text(d.path)}: the deviation no longer applies "
                         "(no difference there)")
    return found


# --- the objects against upstream's file -------------------------------------------------------------

def test_upstream_file_is_the_pinned_release():
    text = upstream_text()
    assert f"ghcr.io/flannel-io/flannel:{UPSTREAM_VERSION}" in text
    assert (PIN.module, PIN.version, [f.path for f in PIN.files]) == \
        ("github.com/flannel-io/flannel", UPSTREAM_VERSION, ["Documentation/kube-flannel.yml"])
    note = SOURCE_NOTE.read_text()
    assert UPSTREAM_VERSION in note and "Apache" in note and PIN.files[0].sha256 in note


def test_objects_equal_upstream_but_for_the_deviations():
    assert problems(flannel_objects(make_config(), TEST_IMAGES), upstream_objects()) == []


def test_every_deviation_is_written_down_once_with_a_reason():
    keys = [(d.kind, d.name, d.path) for d in DEVIATIONS]
    assert len(keys) == len(set(keys))
    assert all(len(d.reason) > 30 for d in DEVIATIONS)


def test_default_images_are_upstreams():
    """bmctl's image list names the images upstream's file names (a digest may be added)."""
    by_path = {d.path: d.upstream for d in DEVIATIONS if d.path[-1] == "image"}
    ds = next(o for o in flannel_objects(make_config()) if o["kind"] == "DaemonSet")
    got = leaves(ds)
    assert by_path and all(got[path].split("@")[0] == ref for path, ref in by_path.items())
    assert releases.default().image("flannel").split("@")[0].endswith(f":{UPSTREAM_VERSION}")


def test_an_unlisted_difference_fails():
    ours = flannel_objects(make_config(), TEST_IMAGES)
    ds = next(o for o in ours if o["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["tolerations"].append({"operator": "Exists", "effect": "NoExecute"})
    ds["spec"]["template"]["spec"]["containers"][0]["args"].append("--iface=eth1")
    role = next(o for o in ours if o["kind"] == "ClusterRole")
    role["rules"][0]["verbs"] = ["get", "list"]
    cm = next(o for o in ours if o["kind"] == "ConfigMap")
    cm["data"]["cni-conf.json"] = cm["data"]["cni-conf.json"].replace('"hairpinMode": true', '"hairpinMode": false')
    found = problems(ours, upstream_objects())
    assert len(found) == 5, found   # the toleration brings two fields
    for what in ("tolerations[1]", "containers[kube-flannel].args[2]", "rules[0].verbs[1]",
                 "cni-conf.json.plugins[0].delegate.hairpinMode"):
        assert any(what in p and "no deviation says why" in p for p in found), (what, found)


def test_a_missing_or_extra_object_fails():
    ours = flannel_objects(make_config(), TEST_IMAGES)
    assert problems(ours[:-1], upstream_objects())
    assert problems([*ours, {"kind": "Secret", "metadata": {"name": "x", "namespace": "kube-flannel"}}],
                    upstream_objects())


def test_a_deviation_that_no_longer_applies_fails():
    ours = flannel_objects(make_config(), TEST_IMAGES)
    # upstream moved on: its file now says host-gw itself
    upstream = upstream_objects()
    cm = next(o for o in upstream if o["kind"] == "ConfigMap")
    cm["data"]["net-conf.json"] = cm["data"]["net-conf.json"].replace('"vxlan"', '"host-gw"')
    assert any("Backend.Type: the deviation no longer applies (no difference" in p
               for p in problems(ours, upstream))
    # upstream changed the value we deviate from
    upstream = upstream_objects()
    cm = next(o for o in upstream if o["kind"] == "ConfigMap")
    cm["data"]["net-conf.json"] = cm["data"]["net-conf.json"].replace('"vxlan"', '"wireguard"')
    assert any("upstream now says 'wireguard'" in p for p in problems(ours, upstream))
    # a deviation for a field that is not different (or not there)
    stale = Deviation("DaemonSet", "kube-flannel-ds", ("spec", "template", "spec", "hostNetwork"), True,
                      lambda c, i: False, "a stale entry kept after the template went back to upstream's value")
    assert any("hostNetwork: the deviation no longer applies" in p
               for p in problems(ours, upstream_objects(), (*DEVIATIONS, stale)))


def test_the_render_applies_each_deviation_only_where_upstream_has_its_value():
    """bmctl changes upstream's objects in code: a deviation whose value upstream no longer has, or
    whose object or path is gone, stops the render instead of deploying an unexamined change; upstream's
    parsed objects are not changed in place."""
    upstream = upstream_objects()
    before = copy.deepcopy(upstream)
    ours = with_deviations(upstream, make_config(), TEST_IMAGES)
    assert upstream == before and problems(ours, upstream) == []
    cm = next(o for o in upstream if o["kind"] == "ConfigMap")
    cm["data"]["net-conf.json"] = cm["data"]["net-conf.json"].replace('"vxlan"', '"wireguard"')
    with pytest.raises(RuntimeError, match=r"kube-flannel-cfg data\.net-conf\.json\.Backend\.Type does not apply.*"
                                           r"upstream has 'wireguard' there, the deviation was written for 'vxlan'"):
        with_deviations(upstream, make_config(), TEST_IMAGES)
    gone = [o for o in upstream_objects() if o["kind"] != "DaemonSet"]
    with pytest.raises(RuntimeError, match="kube-flannel-ds .*upstream has 0 such objects"):
        with_deviations(gone, make_config(), TEST_IMAGES)
    ds = next(o for o in upstream_objects() if o["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["initContainers"].pop(0)
    with pytest.raises(RuntimeError, match=r"initContainers\[install-cni-plugin\]\.image does not apply"):
        with_deviations([ds], make_config(), TEST_IMAGES, DEVIATIONS[3:4])


def test_a_deviation_rendered_wrong_fails():
    ours = flannel_objects(make_config(), TEST_IMAGES)
    cm = next(o for o in ours if o["kind"] == "ConfigMap")
    cm["data"]["net-conf.json"] = cm["data"]["net-conf.json"].replace(POD_CIDR, "10.201.0.0/16")
    assert any("Network: ours '10.201.0.0/16', the deviation says '10.200.0.0/16'" in p
               for p in problems(ours, upstream_objects()))


def test_objects_match_kubernetes_schemas():
    objs = flannel_objects(make_config())
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    bad = copy.deepcopy(next(o for o in objs if o["kind"] == "DaemonSet"))
    bad["spec"]["template"]["spec"]["tolerationz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_net_conf_is_json_with_the_pod_cidr():
    cm = next(o for o in flannel_objects(make_config("10.50.0.0/20")) if o["kind"] == "ConfigMap")
    assert json.loads(cm["data"]["net-conf.json"]) == {"Network": "10.50.0.0/20", "EnableNFTables": False,
                                                       "Backend": {"Type": "host-gw"}}


@pytest.mark.parametrize("pods, why", [("fd00:10::/56", "single IPv4"), ("10.244.0.0/25", "holds 0 node CIDR"),
                                       ("10.244.0.0/24", "holds 1 node CIDR(s) of /24 (maxPodsPerNode 110), for 4 node(s)")])
def test_pod_cidrs_flannel_cannot_use_are_refused(pods, why):
    config = with_network(make_config(), pods=make_config().spec.clusterNetwork.pods.model_copy(
        update={"cidrBlocks": [pods]}))
    with pytest.raises(BmctlError, match=re.escape(why)):
        flannel_objects(config)


# --- the phase ------------------------------------------------------------------------------------

def bmctl_dry_run(tmp_path: Path, docs: list, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "c.yaml").write_text(dump(docs))
    return subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(tmp_path / "c.yaml"),
                           "--dry-run", "--workspace", str(tmp_path / "ws"), *args],
                          capture_output=True, text=True, timeout=120)


def test_dry_run_writes_the_flannel_objects(tmp_path):
    docs = base_docs()
    docs[2]["spec"]["clusterNetwork"]["pods"]["cidrBlocks"] = [POD_CIDR]
    proc = bmctl_dry_run(tmp_path, docs)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ws/t1/dry-run"
    written = [d for d in yaml.safe_load_all((out / "cluster/kube-flannel.yaml").read_text()) if d]
    assert written == flannel_objects(make_config())
    plan = json.loads((out / "plan.json").read_text())
    names = [p["phase"] for p in plan]
    assert names.index("kubeadm") + 1 == names.index("pod-network") == names.index("data-plane-lb") - 1
    steps = next(p for p in plan if p["phase"] == "pod-network")["steps"]
    assert [f["dry_run_copy"] for s in steps for f in s["files"]] == ["cluster/kube-flannel.yaml"]
    assert "Pod network" in proc.stdout and PUBLIC_IP_ANNOTATION in proc.stdout


def test_until_accepts_the_phase(tmp_path):
    assert [p.name for p in select(create_cluster_phases(), "pod-network")][-2:] == ["kubeadm", "pod-network"]
    proc = bmctl_dry_run(tmp_path, base_docs(), "--until", "pod-network")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "ws/t1/dry-run/cluster").iterdir()) == ["kube-flannel.yaml"]


def test_cni_none_deploys_nothing():
    config = with_network(make_config(), cni="none")
    assert network_manifests(config) == []
    ctx = Context(config=config, secrets=ClusterSecrets.redacted(), facts={})
    steps = PodNetwork().plan(ctx)
    assert [f for s in steps for f in s.files] == [] and "cni: none" in steps[0].title
    assert len(network_manifests(make_config())) == 1


def test_cni_none_dry_run(tmp_path):
    docs = base_docs()
    docs[2]["spec"]["clusterNetwork"]["cni"] = "none"
    try:
        parse_config(dump(docs), "t1.yaml")
    except ConfigError:
        pytest.skip("the config model has no spec.clusterNetwork.cni yet (being added)")
    proc = bmctl_dry_run(tmp_path, docs)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "ws/t1/dry-run/cluster/kube-flannel.yaml").exists()


class FakeKube:
    """Just enough of bmctl.kube.Kube for the phase: nodes, flannel pods, the DaemonSet, apply."""

    def __init__(self, config, ready: bool = True) -> None:
        self.nodes = {f"n{i}": SimpleNamespace(
            metadata=SimpleNamespace(name=f"n{i}", annotations={}),
            spec=SimpleNamespace(pod_cidr=f"10.200.{i}.0/24"),
            status=SimpleNamespace(addresses=[SimpleNamespace(type="InternalIP", address=n.ip)],
                                   conditions=[SimpleNamespace(type="Ready", status=str(ready),
                                                               message="cni not ready")]))
            for i, n in enumerate(config.all_nodes)}
        self.applied, self.patches, self.deleted = [], [], []
        self.ds_ready = ready
        self.dynamic = SimpleNamespace(resources=SimpleNamespace(get=lambda **_: SimpleNamespace(
            get=lambda **_: SimpleNamespace(to_dict=self._daemonset))))

    def _daemonset(self) -> dict:
        n = len(self.nodes) if self.ds_ready else 0
        return {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "desiredNumberScheduled":
                len(self.nodes), "updatedNumberScheduled": len(self.nodes), "numberReady": n}}

    def apply(self, obj: dict) -> dict:
        self.applied.append(obj)
        return obj

    def core(self):
        def patch_node(name, body):
            self.patches.append((name, body))
            self.nodes[name].metadata.annotations.update(body["metadata"]["annotations"])

        pods = [SimpleNamespace(metadata=SimpleNamespace(name=f"flannel-{name}"), spec=SimpleNamespace(node_name=name),
                                status=SimpleNamespace(phase="Running", conditions=[
                                    SimpleNamespace(type="Ready", status=str(self.ds_ready))]))
                for name in self.nodes]
        return SimpleNamespace(
            list_node=lambda: SimpleNamespace(items=list(self.nodes.values())), patch_node=patch_node,
            list_namespaced_pod=lambda ns, label_selector: SimpleNamespace(items=pods),
            delete_namespaced_pod=lambda name, ns: self.deleted.append(name))


def run_phase(monkeypatch, config, kube: FakeKube) -> None:
    monkeypatch.setattr(phase_mod, "Kube", lambda _path: kube)
    facts = {n.address: NodeFacts("eth0", prefixlen=24) for n in config.all_nodes}
    ctx = Context(config=config, secrets=ClusterSecrets.redacted(), facts=facts, dry_run=False,
                  options={"kubeconfig_path": Path("/nonexistent/kubeconfig")}, progress=Progress(quiet=True))
    PodNetwork().run(ctx)


def test_run_annotates_applies_and_waits_idempotently(monkeypatch):
    config = make_config()
    kube = FakeKube(config)
    run_phase(monkeypatch, config, kube)
    assert kube.applied == flannel_objects(config)
    assert {n.metadata.name: n.metadata.annotations[PUBLIC_IP_ANNOTATION] for n in kube.nodes.values()} == \
        {f"n{i}": n.ip for i, n in enumerate(config.all_nodes)}
    patches = len(kube.patches)
    run_phase(monkeypatch, config, kube)
    assert len(kube.patches) == patches and kube.deleted == [], "a second run changes nothing"
    # a flannel that started before its node was annotated published another IP: it is restarted
    kube.nodes["n1"].metadata.annotations["flannel.alpha.coreos.com/public-ip"] = "192.0.2.99"
    run_phase(monkeypatch, config, kube)
    assert kube.deleted == ["flannel-n1"]


def test_a_crash_looping_flannel_on_a_node_annotated_late_is_restarted(monkeypatch):
    """A node that joined after create (update loadbalancer adds an LB node): its flannel started
    before the node had its IP annotation, found no default route and crash-loops with a growing
    back-off. Annotating the node restarts it; a ready flannel elsewhere is left alone."""
    config = make_config()
    kube = FakeKube(config, ready=False)
    for name in ("n0", "n1", "n2"):
        kube.nodes[name].metadata.annotations[PUBLIC_IP_ANNOTATION] = kube.nodes[name].status.addresses[0].address
    with pytest.raises(BmctlError):  # the fake's flannel never turns ready: the phase's wait fails
        monkeypatch.setattr(phase_mod, "WAIT_SECONDS", 0.1)
        run_phase(monkeypatch, config, kube)
    assert kube.deleted == ["flannel-n3"]


def test_run_refuses_nodes_on_two_segments(monkeypatch):
    docs = base_docs()
    docs[3]["spec"]["nodes"] = [{"address": "198.51.100.21"}]
    config = parse_config(dump(docs), "t1.yaml")
    kube = FakeKube(config)
    with pytest.raises(BmctlError, match="not on one L2 segment: 198.51.100.21 from 192.0.2.11"):
        run_phase(monkeypatch, config, kube)
    assert kube.applied == []


def test_timeouts_name_what_was_awaited(monkeypatch):
    monkeypatch.setattr(phase_mod, "WAIT_SECONDS", 0.05)
    config = make_config()
    with pytest.raises(BmctlError) as exc:
        run_phase(monkeypatch, config, FakeKube(config, ready=False))
    assert "DaemonSet kube-flannel/kube-flannel-ds (flannel) to be ready on every node (4)" in exc.value.message
    assert "no ready flannel pod on: n0, n1, n2, n3" in exc.value.message
    kube = FakeKube(config, ready=False)
    with pytest.raises(BmctlError) as exc:
        run_phase(monkeypatch, with_network(config, cni="none"), kube)
    assert kube.applied == [] and kube.patches == []
    assert "every node (4) to become Ready" in exc.value.message and "n0 (cni not ready)" in exc.value.message
    assert "install your CNI" in exc.value.fix


# --- reset ---------------------------------------------------------------------------------------

def test_node_cleanup_removes_what_flannel_leaves(tmp_path):
    """On a throwaway network and mount namespace: flannel's files, links and host-gw routes go,
    everything else stays, and a second run is a no-op."""
    require_root()
    require_tool("ip")
    ns = f"bmctl-t-{uuid.uuid4().hex[:8]}"
    setup = """set -e
ip link set lo up
ip link add eth0 type veth peer name eth0p && ip link set eth0 up && ip link set eth0p up
ip addr add 10.1.0.11/24 dev eth0
ip link add cni0 type bridge && ip link set cni0 up && ip addr add 10.200.0.1/24 dev cni0
ip link add flannel.1 type veth peer name keep0
ip route add 10.200.1.0/24 via 10.1.0.12
ip route add 10.200.2.0/24 via 10.1.0.13 dev eth0
ip route add 10.9.0.0/24 via 10.1.0.13
ip route add 10.200.3.0/24 via 10.1.0.14 proto static
mount -t tmpfs tmpfs /run && mkdir -p /run/flannel && touch /run/flannel/subnet.env
mount -t tmpfs tmpfs /etc && mkdir -p /etc/cni/net.d
touch /etc/cni/net.d/10-flannel.conflist /etc/cni/net.d/99-other.conf
sh -c "$1" sh 10.200.0.0/16
sh -c "$1" sh 10.200.0.0/16
ls /etc/cni/net.d /run
ip -o link show | cut -d: -f2
ip route show
"""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c",
                               setup, "sh", NODE_CLEANUP], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "99-other.conf" in out and "10-flannel.conflist" not in out and "flannel" not in out.split("/run:")[1]
    assert " cni0" not in out and " flannel.1" not in out and " eth0" in out
    assert "10.200.1.0/24" not in out and "10.200.2.0/24" not in out
    assert "10.9.0.0/24 via 10.1.0.13" in out and "10.200.3.0/24 via 10.1.0.14 dev eth0 proto static" in out
