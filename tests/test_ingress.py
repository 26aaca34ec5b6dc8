"""The bundled ingress without a cluster: the Gateway API CRDs are upstream's files, what bmctl renders
for Traefik says what the README promises, the config switches it on and off, bad settings are
refused with their field, and `update loadbalancer` lists the change. The lab test
(tests/test_lab_ingress.py) runs it for real."""
from __future__ import annotations

import stat

import pytest
import yaml

from bmctl.config import load_config
from bmctl.config.changes import compare
from bmctl.render.engine import documents, template_dir
from bmctl.render.ingress import (CRDS, DEFAULT_TLS_SECRET, GATEWAY_API_VERSION, PING_PORT, WEB_PORT, WEBSECURE_PORT,
                                  ingress_manifests)
from bmctl.secrets import INGRESS_CERT_NAME, ClusterSecrets, load_or_create
from conftest import base_docs, dump, upstream_file

# sha256 of each file of gateway-api v1.6.1 config/crd/standard/ (the module sigs.k8s.io/gateway-api)
UPSTREAM_CRDS = {
    "gateway.networking.k8s.io_gatewayclasses.yaml": "53710048ba26f8620eed59d5e51b157ecf040daf5c6eef31a4b991e0808c4be5",
    "gateway.networking.k8s.io_gateways.yaml": "25b885f5870b8fff1ae82efa2628b2761cef3745900c2aecf8fb76629a01255a",
    "gateway.networking.k8s.io_grpcroutes.yaml": "53a8d029da8f07e55d3fa58a5cf6de5950dab19fbb8d6a8082fb5e51ca5ef6fc",
    "gateway.networking.k8s.io_httproutes.yaml": "a424a0d6c953b162e71d1d97bb7e75012d8f1ac264e7274f2763d1b96ab39852",
    "gateway.networking.k8s.io_referencegrants.yaml": "8c645e9333cfa67790cc2a53e0c00076f88b2bd4230d2b49688c78bc34f9b2c3",
    "gateway.networking.k8s.io_backendtlspolicies.yaml": "0d48c9e4b53dd9510cf615b9b1192d9d7afb07a1cc0498c9515627cb1c075419",
    "gateway.networking.k8s.io_listenersets.yaml": "bf4d4b02564999b2558b96e31465129895db9b3a8adfb90adb9c80eac52a3a70",
    "gateway.networking.k8s.io_tcproutes.yaml": "d5104d0cf30e924f5e3c9e2e76abd46876401c34ca33b9e79321523eee78c7f6",
    "gateway.networking.k8s.io_tlsroutes.yaml": "bb8b67926e5d9652cbfd2e19063b7c1d9e78806c9dd671608f57baef2f2e3bbb",
    "gateway.networking.k8s.io_udproutes.yaml": "4b80684c2bf8ef4b0a2a3ab45164ac9f96258fc69912645ff50ced595b0aa6de",
    "gateway.networking.k8s.io_vap_safeupgrades.yaml": "afb0ea1b3cc2e9344d93b0926fbe741aeb48ab4439f9f7b4b77b9ac94faf6c2e",
}


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


def test_gateway_api_crds_are_upstreams_standard_channel_verbatim():
    parts = _parts((template_dir() / CRDS).read_text())
    assert list(parts) == list(UPSTREAM_CRDS)  # kustomization.yaml's order
    for name, sha in UPSTREAM_CRDS.items():
        upstream = upstream_file("sigs.k8s.io/gateway-api", GATEWAY_API_VERSION, f"config/crd/standard/{name}",
                                 sha).read_text()
        assert parts[name] == upstream if upstream.endswith("\n") else upstream + "\n", name
    for doc in documents((template_dir() / CRDS).read_text()):
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
