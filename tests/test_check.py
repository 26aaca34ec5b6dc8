"""`bmctl check cluster`'s judgement, on what the readers (bmctl/state.py) return: etcd's members
against the control-plane nodes, its leader, quota and alarms; certificates close to expiry;
etcdctl's output with its log lines. The lab test (tests/test_lab_kubernetes.py) runs it for real."""
from __future__ import annotations

import datetime

from bmctl import state
from bmctl.commands.check import Checks, check_certificates, check_etcd
from bmctl.config import parse_config
from conftest import dump, base_docs


def config():
    return parse_config(dump(base_docs()), "cluster.yaml")


def member(name: str, ip: str, mid: int) -> dict:
    return {"name": name, "id": f"{mid:x}", "peerURLs": [f"https://{ip}:2380"], "clientURLs": [], "isLearner": False}


def etcd_state(members, leader="a", db=10 * 2**20, alarms=()) -> state.EtcdState:
    return state.EtcdState(node="192.0.2.11", members=members,
                           endpoints=[{"endpoint": f"https://{m['peerURLs'][0][8:-5]}:2379", "id": m["id"],
                                       "leader": leader, "dbSize": db, "errors": []} for m in members],
                           health=[{"endpoint": m["name"], "health": True, "error": ""} for m in members],
                           alarms=list(alarms))


def by_status(checks, status):
    return [c for c in checks if c.status == status]


def test_a_healthy_etcd_passes():
    members = [member("cp1", "192.0.2.11", 10), member("cp2", "192.0.2.12", 11), member("cp3", "192.0.2.13", 12)]
    checks = Checks()
    check_etcd(checks, config(), {"192.0.2.11": etcd_state(members)})
    assert not by_status(checks, "fail") and not by_status(checks, "warn"), checks
    assert any(c.object == "etcd leader" and "cp1" in c.detail for c in checks)


def test_a_missing_member_a_stranger_and_no_leader_fail_naming_each():
    members = [member("cp1", "192.0.2.11", 10), member("cp2", "192.0.2.12", 11), member("old", "192.0.2.99", 13)]
    checks = Checks()
    check_etcd(checks, config(), {"192.0.2.11": etcd_state(members, leader="0")})
    failed = by_status(checks, "fail")
    assert any(c.node == "192.0.2.13" and "no etcd member" in c.detail for c in failed), failed
    assert any("192.0.2.99" in c.detail and "member remove d" in c.fix for c in failed), failed
    assert any(c.object == "etcd leader" for c in failed), failed
    assert all(c.fix for c in failed)


def test_a_full_database_and_an_alarm_fail_a_growing_one_warns():
    members = [member("cp1", "192.0.2.11", 10), member("cp2", "192.0.2.12", 11), member("cp3", "192.0.2.13", 12)]
    checks = Checks()
    check_etcd(checks, config(), {"192.0.2.11": etcd_state(members, db=int(1.7 * 2**30))})
    assert [c.object for c in by_status(checks, "warn")] == ["etcd database"] * 3
    checks = Checks()
    full = etcd_state(members, db=int(1.98 * 2**30), alarms=["memberID:10 alarm:NOSPACE"])
    check_etcd(checks, config(), {"192.0.2.11": full})
    failed = by_status(checks, "fail")
    assert {c.object for c in failed} == {"etcd database", "etcd alarm"}, failed


def test_no_etcd_answering_fails_and_says_so():
    checks = Checks()
    check_etcd(checks, config(), {"192.0.2.11": state.EtcdState(node="192.0.2.11", error="no running etcd container")})
    failed = by_status(checks, "fail")
    assert any(c.node == "192.0.2.11" and "no running etcd container" in c.detail for c in failed)
    assert any(c.node == "cluster" and "no control-plane node" in c.detail for c in failed)


def test_certificates_close_to_expiry_warn_and_expired_ones_fail():
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name, days, authority=False):
        return state.CertState(name, now + datetime.timedelta(days=days), days, False, False, authority)
    checks = Checks()
    check_certificates(checks, {"192.0.2.11": [cert("apiserver", 364), cert("ca", 3649, True)],
                                "192.0.2.12": [cert("apiserver", 12), cert("admin.conf", -1)],
                                "192.0.2.13": "open /etc/kubernetes/pki/ca.crt: no such file"})
    assert [(c.node, c.status) for c in checks if c.node == "192.0.2.11"] == [("192.0.2.11", "ok")]
    assert {(c.object, c.status) for c in checks if c.node == "192.0.2.12"} == {("apiserver", "warn"),
                                                                               ("admin.conf", "fail")}
    assert any(c.node == "192.0.2.13" and c.status == "fail" for c in checks)
    # a joined control-plane node has no super-admin.conf (kubeadm writes it on the init node only)
    checks = Checks()
    check_certificates(checks, {"192.0.2.12": [cert("apiserver", 364),
                                               state.CertState("super-admin.conf", None, None, True, False, False),
                                               state.CertState("controller-manager.conf", None, None, True, False, False)]})
    assert [(c.object, c.status) for c in checks if c.status == "fail"] == [("controller-manager.conf", "fail")]


def test_etcdctl_output_is_read_past_its_log_lines():
    out = ('{"level":"warn","ts":"2026-12-07T10:00:00Z","msg":"failed to get the status of endpoint"}\n'
           '[{"Endpoint":"https://192.0.2.11:2379","Status":{"header":{"member_id":10},"leader":10,"dbSize":20480}}]\n'
           'Error: context deadline exceeded\n')
    assert state._json(out, list)[0]["Endpoint"] == "https://192.0.2.11:2379"
    assert state._json(out, dict) is None  # the log line is not the document
    assert state._error(out) == "Error: context deadline exceeded"
    assert state.sections("== a\n1\n2\n== b\n3\n") == {"a": "1\n2", "b": "3"}


def test_the_snapshot_scrubber_blanks_known_values_keys_and_credential_lines():
    import base64

    from bmctl.snapshot import Scrubber
    scrub = Scrubber()
    scrub.add("s3cr3t-generated-value")
    scrub.add_secret_data({"password": base64.b64encode(b"hunter2-but-longer").decode(), "short": "eWVz"})
    scrub.add_secret_data({"tls.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIBpublic").decode(),
                           "tls.key": base64.b64encode(b"key-material-0123456789").decode()}, "kubernetes.io/tls")
    key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIAbc\n-----END EC PRIVATE KEY-----"
    text = (f"a s3cr3t-generated-value b hunter2-but-longer {base64.b64encode(b'hunter2-but-longer').decode()} "
            f"yes key-material-0123456789 MIIBpublic\n{key}\n")
    clean = scrub(text)
    for gone in ("s3cr3t-generated-value", "hunter2-but-longer", "key-material-0123456789", "MHcCAQEEIAbc"):
        assert gone not in clean
    assert "MIIBpublic" in clean and " yes " in clean  # a TLS certificate and a short word stay
    toml = '[plugins."io.containerd.grpc.v1.cri".registry.configs."r:5000".auth]\n  password = "pw"\n  username = "u"\n'
    cleaned = scrub(toml, credentials=True)
    assert '"pw"' not in cleaned and 'username = "u"' in cleaned
