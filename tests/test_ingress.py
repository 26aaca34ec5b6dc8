"""The bundled ingress without a cluster: the Gateway API CRDs are upstream's files, what bmctl renders
for Traefik says what the README promises, the config switches it on and off, bad settings are
refused with their field, and `update loadbalancer` lists the change. The lab test
(tests/test_lab_ingress.py) runs it for real."""
from __future__ import annotations

import stat

import pytest
import yaml

from bmctl import release as releases
from bmctl.config import load_config, parse_config
from bmctl.config.changes import compare
from bmctl.render.engine import documents
from bmctl.render.ingress import (CRDS, DEFAULT_TLS_SECRET, GATEWAY_API_VERSION, PING_PORT, WEB_PORT, WEBSECURE_PORT,
                                  ingress_manifests)
from bmctl.render.ingress import crds_text as ingress_crds
from bmctl.secrets import INGRESS_CERT_NAME, ClusterSecrets, load_or_create
from conftest import base_docs, dump, pinned_texts, upstream_file

# config/crd/kustomization.yaml of Gateway API v1.6.1 (the module sigs.k8s.io/gateway-api): the list of
# the standard channel's files, which bmctl's release pins (manifests: gateway-api)
KUSTOMIZATION_SHA256 = "b57265c13827641629f689a70b917b1851e26963051d6748c7cc7f529e4f6d90"


def _parts(text: str) -> dict[str, str]:
    """Our CRD file cut at its '# standard/<file>' lines, each part without the '---' that follows it."""
    parts: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("# standard/"):
            current = line[len("# standard/"):].strip()
            parts[current] = []
        elif current is not None:
            parts[current].append(line)
    return {name: "".join(lines).removesuffix("---\n") for name, lines in parts.items()}


def test_gateway_api_crds_are_upstreams_standard_channel_unchanged():
    """The release pins the files upstream's kustomization lists, in its order; the CRD file bmctl
    applies is those files as upstream has them, each after a line naming it."""
    pin = releases.default().manifest(CRDS)
    assert (pin.module, pin.version) == ("sigs.k8s.io/gateway-api", GATEWAY_API_VERSION)
    kustomization = yaml.safe_load(upstream_file(pin.module, pin.version, "config/crd/kustomization.yaml",
                                                 KUSTOMIZATION_SHA256).read_text())["resources"]
    assert [f.path for f in pin.files] == [f"config/crd/{name}" for name in kustomization]
    text = ingress_crds(parse_config(dump(base_docs()), "t.yaml"))
    parts = _parts(text)
    assert list(parts) == [name.removeprefix("standard/") for name in kustomization]
    for part, upstream in zip(parts.values(), pinned_texts(CRDS), strict=True):
        assert part == (upstream if upstream.endswith("\n") else upstream + "\n")
    for doc in documents(text):
        assert doc["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] == "standard"
        assert doc["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == GATEWAY_API_VERSION


def _config(tmp_path, change=lambda docs: None):
    docs = base_docs()
    change(docs)
    path = tmp_path / "c.yaml"
    path.write_text(dump(docs))
    return load_config(path)


def _objects(config, secrets=None) -> dict[tuple[str, str], dict]:
    secrets = secrets or ClusterSecrets.generate()
    return {(d["kind"], d["metadata"]["name"]): d for m in ingress_manifests(config, secrets)
            for d in documents(m.content) if d["kind"] != "CustomResourceDefinition"}


def test_traefik_runs_on_the_lb_nodes_behind_the_ingress_vip(tmp_path):
    objs = _objects(_config(tmp_path))
    ds = objs[("DaemonSet", "traefik")]
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"baremetal.cluster.gke.io/lbnode": "true"}
    assert pod["serviceAccountName"] == "traefik"
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    args = container["args"]
    assert f"--entryPoints.web.address=:{WEB_PORT}/tcp" in args
    assert f"--entryPoints.websecure.address=:{WEBSECURE_PORT}/tcp" in args
    assert "--providers.kubernetesingress" in args and "--providers.kubernetesgateway" in args
    assert not any(a.startswith(("--api", "--providers.kubernetesgateway.experimentalchannel")) for a in args)
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": PING_PORT, "scheme": "HTTP"}
    svc = objs[("Service", "traefik")]
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["metadata"]["annotations"] == {"metallb.io/loadBalancerIPs": "192.0.2.100",
                                              "metallb.io/address-pool": "bmctl-ingress-vip"}
    assert {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {(80, "web"), (443, "websecure")}
    # three control-plane nodes are the LB nodes: the PDB lets one go at a time
    assert objs[("PodDisruptionBudget", "traefik")]["spec"]["minAvailable"] == 2
    assert objs[("IngressClass", "bmctl")]["metadata"]["annotations"] == {
        "ingressclass.kubernetes.io/is-default-class": "true"}
    assert objs[("GatewayClass", "bmctl")]["spec"]["controllerName"] == "traefik.io/gateway-controller"


def test_gateway_listens_on_80_and_443_with_the_self_signed_certificate(tmp_path):
    secrets = ClusterSecrets.generate()
    config = _config(tmp_path)
    objs = _objects(config, secrets)
    gw = objs[("Gateway", "bmctl-ingress")]
    assert [(lst["name"], lst["protocol"], lst["port"]) for lst in gw["spec"]["listeners"]] == [
        ("http", "HTTP", WEB_PORT), ("https", "HTTPS", WEBSECURE_PORT)]
    https = gw["spec"]["listeners"][1]["tls"]
    assert https["mode"] == "Terminate" and https["certificateRefs"][0]["name"] == DEFAULT_TLS_SECRET
    secret = objs[("Secret", DEFAULT_TLS_SECRET)]
    assert secret["type"] == "kubernetes.io/tls" and secret["stringData"]["tls.key"] == secrets.ingress_tls_key
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(secret["stringData"]["tls.crt"].encode())
    assert cert.subject.rfc4514_string() == f"CN={INGRESS_CERT_NAME}" and cert.issuer == cert.subject
    # the same Secret is Traefik's default certificate (clients without SNI get it too)
    pod = objs[("DaemonSet", "traefik")]["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "default-tls")["secret"] == {
        "secretName": DEFAULT_TLS_SECRET, "optional": True}
    gateway_file = next(m for m in ingress_manifests(config, secrets) if m.path == "12-ingress-gateway.yaml")
    assert gateway_file.secret and gateway_file.mode == 0o600


def test_a_named_tls_secret_replaces_the_self_signed_one(tmp_path):
    config = _config(tmp_path, lambda d: d[2]["spec"]["loadBalancer"].update(ingress={"tlsSecret": "shop-tls"}))
    objs = _objects(config)
    assert ("Secret", DEFAULT_TLS_SECRET) not in objs
    gw = objs[("Gateway", "bmctl-ingress")]
    assert gw["spec"]["listeners"][1]["tls"]["certificateRefs"] == [{"group": "", "kind": "Secret",
                                                                     "name": "shop-tls"}]
    pod = objs[("DaemonSet", "traefik")]["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "default-tls")["secret"]["secretName"] == "shop-tls"


@pytest.mark.parametrize("change", [
    lambda d: d[2]["spec"]["clusterNetwork"].update(bundledIngress=False),
    lambda d: d[2]["spec"]["loadBalancer"]["vips"].pop("ingressVIP"),
], ids=["bundledIngress-false", "no-ingressVIP"])
def test_no_ingress_without_an_ingress_vip_or_when_turned_off(tmp_path, change):
    config = _config(tmp_path, change)
    assert not config.runs_ingress and ingress_manifests(config, ClusterSecrets.generate()) == []


def test_google_bundled_ingress_field_is_read(write_config):
    docs = base_docs()
    docs[2]["spec"]["clusterNetwork"]["bundledIngress"] = False
    assert load_config(write_config(docs)).runs_ingress is False
    docs[2]["spec"]["clusterNetwork"]["bundledIngress"] = True
    assert load_config(write_config(docs)).runs_ingress is True


@pytest.mark.parametrize("change,message", [
    (lambda d: d[2]["spec"]["loadBalancer"].update(ingress={"tlsSecret": "Bad_Name"}), "is not a Secret name"),
    (lambda d: d[2]["spec"]["loadBalancer"].update(ingress={"tlsSecret": "other/x"}), "is not a Secret name"),
    (lambda d: (d[2]["spec"]["clusterNetwork"].update(bundledIngress=False),
                d[2]["spec"]["loadBalancer"].update(ingress={"tlsSecret": "x"})), "bundledIngress is false"),
    (lambda d: d[2]["spec"]["loadBalancer"].update(ingress={"tlsSecrets": "x"}), "tlsSecrets"),
], ids=["bad-name", "namespace", "ingress-off", "misspelled"])
def test_bad_ingress_settings_name_their_field(write_config, change, message):
    import subprocess
    import sys
    docs = base_docs()
    change(docs)
    path = write_config(docs)
    proc = subprocess.run([sys.executable, "-m", "bmctl", "check", "config", "-c", str(path)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    text = proc.stdout + proc.stderr
    assert message in text and "spec.loadBalancer.ingress" in text and f"{path.name}:" in text, text


def test_update_lists_turning_the_ingress_off_and_on(tmp_path):
    on = _config(tmp_path)
    off = _config(tmp_path, lambda d: d[2]["spec"]["clusterNetwork"].update(bundledIngress=False))
    assert [c.text.split(" (")[0] for c in compare(on, off).changes] == ["turn the bundled ingress off"]
    assert [c.text for c in compare(off, on).changes] == ["turn the bundled ingress on"]
    named = _config(tmp_path, lambda d: d[2]["spec"]["loadBalancer"].update(ingress={"tlsSecret": "shop-tls"}))
    assert [c.text for c in compare(on, named).changes] == ["TLS Secret on port 443: self-signed -> shop-tls"]
    assert not compare(on, on).changes and not compare(on, on).refused


def test_a_secrets_file_from_before_the_ingress_gets_its_certificate(tmp_path):
    path = tmp_path / ".secrets.yaml"
    old = {k: v for k, v in vars(ClusterSecrets.generate()).items() if not k.startswith("ingress_")}
    path.write_text(yaml.safe_dump(old))
    path.chmod(0o600)
    got = load_or_create(path)
    assert got.memberlist_key == old["memberlist_key"] and "PRIVATE KEY" in got.ingress_tls_key
    assert load_or_create(path).ingress_tls_cert == got.ingress_tls_cert  # generated once, then kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
