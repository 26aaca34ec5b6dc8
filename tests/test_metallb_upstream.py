"""bmctl's MetalLB objects are upstream's metallb-native.yaml of the deployed version, field for field,
but for the deviations listed (each with its reason) in bmctl/render/metallb.py DEVIATIONS.

Upstream's file is pinned by bmctl's release (`manifests:` metallb-native and metallb-frr: module
go.universe.tf/metallb, version, path, sha256; tests/data/upstream/metallb-native-v0.15.2.yaml.source
records source, tag, commit and licence) and read as bmctl reads it (bmctl/release/upstream.py: from
MetalLB's Go module, which the lab's build downloads with the Go client). The diff walks both sides:
mappings key by key, lists of named items (containers, env, ports, volumes, CRD versions...) by name
as Kubernetes merges them, lists of scalars (args) item by item, other lists by position. Every
difference must be explained by a deviation, and every deviation must explain at least one difference.
"""
from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import yaml
from kubernetes.client.rest import ApiException

import bmctl.kube
from bmctl.config import parse_config
from bmctl.config.model import LB_NODE_LABEL, MEMBERLIST_PORT
from bmctl.errors import BmctlError
from bmctl.host import Result
from bmctl.phases import dataplane_lb
from bmctl import release as releases
from bmctl.render import metallb_manifests
from bmctl.render.metallb import (DEVIATIONS, FILES, KEPT, NAMESPACE, UPSTREAM, UPSTREAM_VERSION, Deviation,
                                  _upstream, with_deviations)
from bmctl.secrets import ClusterSecrets
from conftest import base_docs, dump, pinned_texts, upstream_file

SOURCE_NOTE = Path(__file__).parent / "data" / "upstream" / f"metallb-native-{UPSTREAM_VERSION}.yaml.source"
PINS = {mode: releases.default().manifest(name) for mode, name in UPSTREAM.items()}
UPSTREAM_SHA256 = PINS["native"].files[0].sha256


def upstream_text(mode: str = "native") -> str:
    return pinned_texts(UPSTREAM[mode])[0]
MISSING = object()
# Digest-pinned references, as a release pins them (bmctl's own release names upstream's tags).
PINNED = {"metallb-controller": "registry.example/metallb/controller:v1@sha256:" + "1" * 64,
          "metallb-speaker": "registry.example/metallb/speaker:v1@sha256:" + "2" * 64,
          "frr": "registry.example/frrouting/frr:v1@sha256:" + "3" * 64}


def load(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def upstream() -> list[dict]:
    return load(upstream_text())


@pytest.fixture
def pinned_images(monkeypatch):
    """Every render and every deviation's value use a release that pins its own MetalLB images."""
    base = releases.default()
    pinned = releases.Release(base.kubernetes, {**base.images, **PINNED}, "a pinned")
    monkeypatch.setattr(releases, "of", lambda config: pinned)
    monkeypatch.setattr(releases, "default", lambda: pinned)


def rendered() -> list[dict]:
    config = parse_config(dump(base_docs()), "test.yaml")
    return [d for f in metallb_manifests(config, ClusterSecrets.generate()) for d in load(f.content)]


def key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _by_name(items: list) -> dict | None:
    """A list of mappings with distinct names, keyed "[name]"; None for any other list."""
    names = [i.get("name") if isinstance(i, dict) else None for i in items]
    if None in names or len(set(names)) != len(names):
        return None
    return {f"[{n}]": i for n, i in zip(names, items)}


def diff(a, b, path: tuple = ()) -> list[tuple[tuple, str]]:
    """(path, what) for every difference from upstream's `a` to our `b` (MISSING: no such key)."""
    if isinstance(a, dict) or isinstance(b, dict):
        if a is not MISSING and b is not MISSING and not (isinstance(a, dict) and isinstance(b, dict)):
            return [(path, f"changed from {a!r} to {b!r}")]
        a, b = {} if a is MISSING else a, {} if b is MISSING else b
        return [d for k in dict.fromkeys([*a, *b]) for d in diff(a.get(k, MISSING), b.get(k, MISSING), (*path, k))]
    if isinstance(a, list) or isinstance(b, list):
        if a is not MISSING and b is not MISSING and not (isinstance(a, list) and isinstance(b, list)):
            return [(path, f"changed from {a!r} to {b!r}")]
        a, b = [] if a is MISSING else a, [] if b is MISSING else b
        named_a, named_b = _by_name(a), _by_name(b)
        if named_a is not None and named_b is not None:
            out = diff(named_a, named_b, path)
            if [k for k in named_a if k in named_b] != [k for k in named_b if k in named_a]:
                out.append((path, "order changed"))
            return out
        if all(not isinstance(i, (dict, list)) for i in [*a, *b]):
            ca, cb = Counter(map(repr, a)), Counter(map(repr, b))
            out = [((*path, item), "added") for item in cb - ca] + [((*path, item), "removed") for item in ca - cb]
            if [repr(i) for i in a if repr(i) in cb] != [repr(i) for i in b if repr(i) in ca]:
                out.append((path, "order changed"))
            return out
        return [d for i in range(max(len(a), len(b)))
                for d in diff(a[i] if i < len(a) else MISSING, b[i] if i < len(b) else MISSING, (*path, i))]
    if a is MISSING:
        return [(path, f"added {b!r}")]
    if b is MISSING:
        return [(path, f"removed {a!r}")]
    return [] if type(a) is type(b) and a == b else [(path, f"changed from {a!r} to {b!r}")]


def differences(theirs: list[dict], ours: list[dict]) -> list[tuple[tuple[str, str], tuple, str]]:
    """(object, path, what) for every difference; a whole object missing or added has path ()."""
    a, b = {key(o): o for o in theirs}, {key(o): o for o in ours}
    assert len(a) == len(theirs) and len(b) == len(ours), "one object per kind and name"
    out = [(k, (), "not deployed") for k in a if k not in b] + [(k, (), "added object") for k in b if k not in a]
    for k in a.keys() & b.keys():
        out += [(k, path, what) for path, what in diff(a[k], b[k])]
    return sorted(out, key=repr)


def at(obj, path: tuple):
    """The value at `path` in `obj` ("[x]": the list item named x), or MISSING."""
    for step in path:
        if isinstance(obj, list):
            obj = next((i for i in obj if isinstance(i, dict) and f"[{i.get('name')}]" == step), MISSING)
        elif isinstance(obj, dict):
            obj = obj.get(step, MISSING)
        else:
            return MISSING
    return obj


def explains(dev: Deviation, ours: dict, obj: tuple[str, str], path: tuple, what: str) -> bool:
    """Whether `dev` accounts for this difference (and our object holds what it says)."""
    if not (dev.kind in ("*", obj[0]) and dev.name in (None, obj[1])):
        return False
    if dev.change in ("drop", "add"):
        return path == () and what == {"drop": "not deployed", "add": "added object"}[dev.change]
    if dev.change == "set":  # the whole value at dev.path: any difference inside it
        return path[:len(dev.path)] == dev.path and at(ours.get(obj), dev.path) == dev.item()
    if dev.change == "remove":
        return path[:len(dev.path)] == dev.path and what.startswith("removed") and \
            at(ours.get(obj), dev.path) is MISSING
    item = dev.item()  # append
    if isinstance(item, dict):
        where = (*dev.path, f"[{item['name']}]")
        return path[:len(where)] == where and what.startswith("added") and at(ours.get(obj), where) == item
    return path == (*dev.path, repr(item)) and what == "added"


def check(theirs: list[dict], ours: list[dict], deviations=DEVIATIONS) -> tuple[list, list]:
    """(differences no deviation explains, deviations that explain no difference)."""
    found = differences(theirs, ours)
    by_key = {key(o): o for o in ours}
    unexplained = [d for d in found if not any(explains(dev, by_key, *d) for dev in deviations)]
    unused = [dev.text() for dev in deviations if not any(explains(dev, by_key, *d) for d in found)]
    return unexplained, unused


def test_upstream_file_is_recorded_with_its_source():
    note = SOURCE_NOTE.read_text()
    for fact in ("https://github.com/metallb/metallb", "config/manifests/metallb-native.yaml",
                 f"tag {UPSTREAM_VERSION}", "commit ", "Apache License 2.0", UPSTREAM_SHA256):
        assert fact in note


def test_bmctl_renders_from_the_pinned_upstream_files():
    """No copy in bmctl: the release pins MetalLB's own files (module, version, path, sha256) and the
    render parses them as bmctl/release/upstream.py reads them."""
    for mode, pin in PINS.items():
        path = f"config/manifests/metallb-{mode}.yaml"
        assert (pin.module, pin.version, [f.path for f in pin.files]) == ("go.universe.tf/metallb", UPSTREAM_VERSION,
                                                                          [path])
        assert list(_upstream(mode)) == load(upstream_text(mode))


def test_rendered_objects_equal_upstream_but_for_the_deviations(pinned_images):
    unexplained, unused = check(upstream(), rendered())
    assert unexplained == [], "differences from upstream that DEVIATIONS does not list"
    assert unused == [], "deviations that no longer change anything"


def upstream_frr() -> list[dict]:
    return load(upstream_text("frr"))


def test_bgp_mode_renders_upstream_frr_manifest_but_for_the_deviations(pinned_images):
    """type: bgp deploys MetalLB's metallb-frr.yaml (same version), changed only as deviations("frr")
    says: no frr container (the LB nodes' FRR static pod instead), images from the release, the
    reloader wrapped to keep each node's router-id."""
    from bmctl.render.metallb import deviations
    docs = base_docs()
    docs[2]["spec"]["loadBalancer"].update(type="bgp", localASN=64513, bgpPeers=[{"ip": "203.0.113.1", "asn": 64512}])
    docs[2]["spec"]["loadBalancer"]["vips"]["controlPlaneVIP"] = "198.51.100.200"
    config = parse_config(dump(docs), "t.yaml")
    ours = [d for f in metallb_manifests(config, ClusterSecrets.generate()) for d in load(f.content)]
    unexplained, unused = check(upstream_frr(), ours, deviations("frr"))
    assert unexplained == [], "differences from upstream's metallb-frr.yaml that deviations('frr') does not list"
    assert unused == [], "deviations that no longer change anything"
    speaker = next(o for o in ours if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert "frr" not in {c["name"] for c in speaker["containers"]}
    assert {v["name"]: v.get("hostPath", {}).get("path") for v in speaker["volumes"]}["frr-sockets"] == \
        "/var/lib/bmctl/frr/run"


def test_the_facts_bmctl_relies_on_are_upstream_s():
    objs = {key(o): o for o in upstream()}
    assert objs[("Namespace", NAMESPACE)]
    assert releases.default().image("metallb-controller").endswith(f":{UPSTREAM_VERSION}")
    assert objs[("Deployment", "controller")]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        f":{UPSTREAM_VERSION}")
    speaker = objs[("DaemonSet", "speaker")]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in speaker["ports"]}
    assert ports["memberlist-tcp"] == ports["memberlist-udp"] == MEMBERLIST_PORT, "preflight checks this port"
    assert "--port=7472" in speaker["args"] and ports["monitoring"] == 7472, "the readiness check reads it"
    assert {"name": "METALLB_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} in speaker["env"], \
        "the speaker's metrics listen on the node IP (the readiness check curls it there)"
    crds = sorted(n for k, n in objs if k == "CustomResourceDefinition")
    assert "configurationstates.metallb.io" not in crds and len(crds) == 8
    assert {k for k, _ in objs} - {d.kind for d in DEVIATIONS if d.change == "drop"} <= set(FILES)


def test_every_deviation_has_a_one_line_reason():
    for dev in DEVIATIONS:
        assert dev.change in ("drop", "add", "set", "append", "remove"), dev
        assert dev.reason and "\n" not in dev.reason and len(dev.reason) < 300, dev
        assert dev.path or dev.change in ("drop", "add"), dev
    assert all(k and "\n" not in k for k in KEPT)


def test_speaker_rbac_covers_what_v0_15_2_watches_cluster_wide():
    """The defect this replaces: ServiceL2Status granted only in a namespaced Role (403 at cluster scope)."""
    objs = {key(o): o for o in rendered()}
    rules = objs[("ClusterRole", "metallb-system:speaker")]["rules"]
    assert any("servicel2statuses" in r["resources"] and r["verbs"] == ["*"] for r in rules)
    binding = objs[("ClusterRoleBinding", "metallb-system:speaker")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "speaker", "namespace": NAMESPACE}]
    speaker = objs[("DaemonSet", "speaker")]["spec"]["template"]["spec"]
    assert speaker["nodeSelector"][LB_NODE_LABEL] == "true"
    assert {"name": "metallb-excludel2", "configMap": {"defaultMode": 256, "name": "metallb-excludel2"}} \
        in speaker["volumes"]


@pytest.mark.parametrize("mutate, where", [
    (lambda o: o[("DaemonSet", "speaker")]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
     .update(periodSeconds=11), ("DaemonSet", "speaker")),
    (lambda o: o[("Deployment", "controller")]["spec"]["template"]["spec"]["containers"][0]["args"]
     .__setitem__(1, "--log-level=debug"), ("Deployment", "controller")),
    (lambda o: o[("DaemonSet", "speaker")]["spec"]["template"]["spec"]["containers"][0]["env"]
     .append({"name": "METALLB_ML_BIND_PORT", "value": "7946"}), ("DaemonSet", "speaker")),
    (lambda o: o[("ClusterRole", "metallb-system:speaker")]["rules"].pop(0), ("ClusterRole", "metallb-system:speaker")),
    (lambda o: o[("CustomResourceDefinition", "ipaddresspools.metallb.io")]["spec"]["versions"][0]["schema"]
     ["openAPIV3Schema"]["properties"].pop("status"), ("CustomResourceDefinition", "ipaddresspools.metallb.io")),
    (lambda o: o.pop(("CustomResourceDefinition", "servicel2statuses.metallb.io")),
     ("CustomResourceDefinition", "servicel2statuses.metallb.io")),
    (lambda o: o.__setitem__(("CustomResourceDefinition", "configurationstates.metallb.io"), {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "configurationstates.metallb.io"}}),
     ("CustomResourceDefinition", "configurationstates.metallb.io")),
    (lambda o: o[("ConfigMap", "metallb-excludel2")]["metadata"]["labels"].update(extra="x"),
     ("ConfigMap", "metallb-excludel2")),
    (lambda o: o[("Role", "pod-lister")]["metadata"]["labels"].update({"app.kubernetes.io/managed-by": "helm"}),
     ("Role", "pod-lister")),
    (lambda o: o[("DaemonSet", "speaker")]["spec"]["template"]["spec"]["containers"][0]["args"].__setitem__(
        -1, "--ignore-exclude-lb=false"), ("DaemonSet", "speaker")),
], ids=["probe-period", "arg-changed", "env-added", "rule-removed", "schema-trimmed", "crd-missing", "crd-added",
        "label-added", "deviation-value-changed", "appended-item-changed"])
def test_any_other_difference_is_reported(pinned_images, mutate, where):
    objs = {key(o): o for o in rendered()}
    mutate(objs)
    unexplained, unused = check(upstream(), list(objs.values()))
    assert unexplained and {obj for obj, _, _ in unexplained} == {where}


def test_a_deviation_that_no_longer_changes_anything_is_reported(pinned_images):
    """As if the next release's file already put speakers on LB nodes: that deviation changes nothing."""
    theirs = upstream()
    speaker = next(o for o in theirs if key(o) == ("DaemonSet", "speaker"))
    speaker["spec"]["template"]["spec"]["nodeSelector"][LB_NODE_LABEL] = "true"
    ours = [o for o in rendered() if o["kind"] not in FILES] + with_deviations(theirs)
    unexplained, unused = check(theirs, ours)
    assert unexplained == []
    assert unused == [f"set DaemonSet/speaker spec.template.spec.nodeSelector.{LB_NODE_LABEL} 'true'"]


@pytest.mark.parametrize("change, message", [
    (lambda objs: objs.remove(next(o for o in objs if key(o) == ("Service", "metallb-webhook-service"))),
     "drop Service/metallb-webhook-service"),
    (lambda objs: next(o for o in objs if key(o) == ("DaemonSet", "speaker"))["spec"]["template"]["spec"]
     ["containers"][0]["args"].append("--ignore-exclude-lb"), "upstream has it already"),
    (lambda objs: next(o for o in objs if key(o) == ("Deployment", "controller"))["spec"]["template"]["spec"]
     .pop("volumes"), "remove Deployment/controller spec.template.spec.volumes.[cert]"),
])
def test_a_deviation_that_does_not_fit_upstream_stops_the_render(change, message):
    theirs = upstream()
    change(theirs)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        with_deviations(theirs)


def test_deviations_do_not_touch_upstream_objects_in_place():
    theirs = upstream()
    before = copy.deepcopy(theirs)
    with_deviations(theirs)
    assert theirs == before


# The readiness check after the speakers are Ready (bmctl/phases/dataplane_lb.py), against fakes of
# the API and of the nodes: what it reads is what MetalLB v0.15.2 and client-go write.
METRICS = """# HELP metallb_k8s_client_config_loaded_bool 1 if the MetalLB configuration was successfully loaded at least once.
# TYPE metallb_k8s_client_config_loaded_bool gauge
metallb_k8s_client_config_loaded_bool {loaded}
# HELP metallb_k8s_client_config_stale_bool 1 if running on a stale configuration, because the latest config failed to load.
# TYPE metallb_k8s_client_config_stale_bool gauge
metallb_k8s_client_config_stale_bool {stale}
"""
FORBIDDEN = ('W1202 10:00:00.000000       1 reflector.go:569] k8s.io/client-go@v0.33.0/tools/cache/reflector.go:285: '
             'failed to list *v1beta1.ServiceL2Status: servicel2statuses.metallb.io is forbidden: User '
             '"system:serviceaccount:metallb-system:speaker" cannot list resource "servicel2statuses" in API group '
             '"metallb.io" at the cluster scope')


class FakeCluster:
    """Nodes, speaker pods, their logs (the API) and their metrics (curl on each node)."""

    def __init__(self, config, metrics: dict[str, str | None], logs: dict[str, str | None]):
        self.nodes = {f"node-{n.address}": n.address for n in config.lb_nodes}
        self.metrics, self.logs, self.curls = metrics, logs, []
        self.notes: list[str] = []

    def core(self):
        return self

    def list_node(self):
        return NS(items=[NS(metadata=NS(name=name), status=NS(addresses=[NS(type="InternalIP", address=ip)]))
                         for name, ip in self.nodes.items()])

    def list_namespaced_pod(self, namespace, label_selector):
        assert namespace == NAMESPACE and label_selector == "app=metallb,component=speaker"
        ports = [NS(name="monitoring", container_port=7472)]
        return NS(items=[NS(metadata=NS(name=f"speaker-{i}"), spec=NS(node_name=name, containers=[NS(name="speaker", ports=ports)]),
                            status=NS(phase="Running", host_ip=ip, conditions=[NS(type="Ready", status="True")]))
                         for i, (name, ip) in enumerate(self.nodes.items())])

    def read_namespaced_pod_log(self, name, namespace, container, since_seconds):
        assert container == "speaker" and since_seconds
        log = self.logs.get(name)
        if log is None:
            raise ApiException(status=500, reason="Internal Server Error")
        return log

    def parallel(self, addresses, fn):
        return {a: fn(self.host(a)) for a in addresses}

    def host(self, address):
        def run(argv, **_):
            self.curls.append((address, argv[-1]))
            text = self.metrics.get(address)
            return Result(0, text, "") if text is not None else Result(7, "", "curl: (7) Failed to connect")
        return NS(address=address, run=run)

    def ctx(self, config):
        return NS(config=config, inventory=self, progress=NS(note=self.notes.append))


def speaker_check(monkeypatch, metrics, logs):
    monkeypatch.setattr(dataplane_lb, "SPEAKER_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(bmctl.kube.time, "sleep", lambda s: None)
    config = parse_config(dump(base_docs()), "test.yaml")
    fake = FakeCluster(config, metrics, logs)
    names = sorted(fake.nodes)
    return fake, lambda: dataplane_lb.wait_speakers_working(fake.ctx(config), fake, names)


def test_speakers_with_their_configuration_loaded_pass(monkeypatch):
    good = METRICS.format(loaded=1, stale=0)
    fake, check = speaker_check(monkeypatch, {"192.0.2.11": good, "192.0.2.12": good, "192.0.2.13": good},
                                {"speaker-0": "ok\n", "speaker-1": "", "speaker-2": None})
    check()
    assert ("192.0.2.11", "http://192.0.2.11:7472/metrics") in fake.curls, "the node IP, where hostNetwork listens"
    assert fake.notes == ["node-192.0.2.13: speaker log unreadable (500 Internal Server Error); "
                          "checked its metrics only"]


@pytest.mark.parametrize("metrics, logs, expected", [
    ({"192.0.2.12": METRICS.format(loaded=0, stale=0)}, {},
     "node-192.0.2.12 (192.0.2.12): it has not loaded MetalLB's configuration "
     "(metallb_k8s_client_config_loaded_bool 0) (pod speaker-1)"),
    ({"192.0.2.12": METRICS.format(loaded=1, stale=1)}, {},
     "(metallb_k8s_client_config_stale_bool 1)"),
    ({"192.0.2.12": "go_goroutines 42\n"}, {},
     "(metallb_k8s_client_config_loaded_bool missing, metallb_k8s_client_config_stale_bool missing)"),
    ({"192.0.2.12": None}, {}, "node-192.0.2.12 (192.0.2.12): its metrics at http://192.0.2.12:7472/metrics do not "
                               "answer (curl: (7) Failed to connect)"),
    # issue 12's defect: configuration loaded, but ServiceL2Status refused at cluster scope
    ({}, {"speaker-1": f"{{\"level\":\"info\"}}\n{FORBIDDEN}\n"},
     "node-192.0.2.12 (192.0.2.12): the API server refuses it access: "),
], ids=["not-loaded", "stale", "no-metric", "no-answer", "forbidden"])
def test_a_speaker_that_cannot_work_fails_naming_its_node(monkeypatch, metrics, logs, expected):
    good = METRICS.format(loaded=1, stale=0)
    metrics = {"192.0.2.11": good, "192.0.2.12": good, "192.0.2.13": good, **metrics}
    _, check = speaker_check(monkeypatch, metrics, {"speaker-0": "", "speaker-1": "", "speaker-2": "", **logs})
    with pytest.raises(BmctlError) as err:
        check()
    assert "MetalLB speaker(s) not working" in err.value.message and expected in err.value.message
    assert "192.0.2.11" not in err.value.message and "192.0.2.13" not in err.value.message
    assert "kubectl -n metallb-system logs" in err.value.fix and "re-run" in err.value.fix


def test_bgp_peers_use_frr_only_fields_with_speakers_in_frr_mode():
    """MetalLB's native BGP refuses a whole configuration when a BGPPeer sets an FRR-only field
    (internal/config/validation.go, DiscardFRROnly): that list, read from MetalLB's own source and
    mapped to the fields' JSON names. bmctl's BGPPeers need some (BFD, keepalive), so the speaker
    must run in FRR mode (METALLB_BGP_TYPE=frr)."""
    import re
    from bmctl.config import parse_config
    from bmctl.render.metallb import metallb_manifests
    from bmctl.secrets import ClusterSecrets
    from conftest import base_docs, dump
    validation = upstream_file("go.universe.tf/metallb", UPSTREAM_VERSION, "internal/config/validation.go",
                               "bf42a944b13fffc7a42f3f516f8a5d1ca472332377312b0a4d55ab8287a39695").read_text()
    types = upstream_file("go.universe.tf/metallb", UPSTREAM_VERSION, "api/v1beta2/bgppeer_types.go",
                          "8e01a05a00ea00450fc6f508e3e709bfe275d3d2c6bf903390bc975dda17b7dd").read_text()
    body = validation[validation.index("func DiscardFRROnly"):]
    body = body[:body.index("\n}\n")]
    go_fields = set(re.findall(r"if p\.Spec\.(\w+)", body))
    json_of = dict(re.findall(r"^\s+(\w+)\s+\S+\s+`json:\"(\w+)", types, re.M))
    refused = {json_of[f] for f in go_fields}
    assert {"keepaliveTime", "bfdProfile", "vrf"} <= refused, refused  # the parse found the list
    docs = base_docs()
    docs[2]["spec"]["loadBalancer"].update(type="bgp", localASN=64513, bgpPeers=[{"ip": "192.0.2.1", "asn": 64512}])
    config = parse_config(dump(docs), "t.yaml")
    peers = [d for f in metallb_manifests(config, ClusterSecrets.generate())
             for d in yaml.safe_load_all(f.content) if d and d["kind"] == "BGPPeer"]
    assert peers and all(set(p["spec"]) & refused == {"bfdProfile", "keepaliveTime", "connectTime"} for p in peers)
    speaker = next(d for f in metallb_manifests(config, ClusterSecrets.generate())
                   for d in yaml.safe_load_all(f.content) if d and d["kind"] == "DaemonSet")
    env = {e["name"]: e.get("value") for c in speaker["spec"]["template"]["spec"]["containers"]
           if c["name"] == "speaker" for e in c["env"]}
    assert env["METALLB_BGP_TYPE"] == "frr"
