"""The lab's unit supervisor reads units as systemd does: the units bmctl installs (kubelet.service,
kubeadm's drop-in) and bmctl's LB bootstrap drop-in change the kubelet's command line exactly as they
would on a real node."""
from __future__ import annotations

from bmctl.lab import systemd
from bmctl.render import node_software
from bmctl.render.kubelet import BOOTSTRAP_CONFIG, lb_bootstrap_files

UNITS = {f.path: f.content for f in node_software.unit_files("1.6.20")}
KUBELET_UNIT, KUBEADM_DROPIN = UNITS[node_software.KUBELET_UNIT], UNITS[node_software.KUBEADM_DROPIN]


def units(tmp_path, monkeypatch, dropins: dict[str, str]):
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    (etc / "kubelet.service.d").mkdir(parents=True)
    lib.mkdir()
    (etc / "kubelet.service").write_text(KUBELET_UNIT)
    for name, text in dropins.items():
        (etc / "kubelet.service.d" / name).write_text(text)
    monkeypatch.setattr(systemd, "UNIT_DIRS", (etc, lib))


def argv(unit: systemd.Unit, env_files: dict[str, str]) -> list[str]:
    env = dict(unit.environment)
    for f in unit.environment_files:
        env.update(env_files.get(f.lstrip("-"), {}))
    return systemd.expand(unit.exec_start[-1], env)


def test_kubeadm_dropin_runs_the_kubelet_with_kubeadm_s_files(tmp_path, monkeypatch):
    units(tmp_path, monkeypatch, {"10-kubeadm.conf": KUBEADM_DROPIN})
    unit = systemd.load_unit("kubelet")
    assert unit.restart == "always" and unit.restart_sec == 10
    flags = {"/var/lib/kubelet/kubeadm-flags.env": {"KUBELET_KUBEADM_ARGS": "--node-ip=192.0.2.11 --max-pods=16"},
             "/etc/default/kubelet": {"KUBELET_EXTRA_ARGS": "--fail-swap-on=false"}}
    assert argv(unit, flags) == [
        "/usr/local/bin/kubelet", "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
        "--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml",
        "--node-ip=192.0.2.11", "--max-pods=16", "--fail-swap-on=false"]
    assert argv(unit, {}) == ["/usr/local/bin/kubelet", "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
                              "--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml"]


def test_the_lb_bootstrap_dropin_makes_the_kubelet_standalone(tmp_path, monkeypatch):
    """bmctl's 20-bmctl-lb-bootstrap.conf sorts after kubeadm's 10-kubeadm.conf: no kubeconfig, bmctl's config."""
    from bmctl.config import parse_config
    from conftest import base_docs, dump
    dropin = next(f for f in lb_bootstrap_files(parse_config(dump(base_docs()), "t.yaml"))
                  if f.path.endswith(".conf"))
    units(tmp_path, monkeypatch, {"10-kubeadm.conf": KUBEADM_DROPIN,
                                  dropin.path.rsplit("/", 1)[1]: dropin.content})
    assert argv(systemd.load_unit("kubelet"), {}) == ["/usr/local/bin/kubelet", f"--config={BOOTSTRAP_CONFIG}"]


def test_expansion_follows_systemd():
    env = {"A": "x y", "B": ""}
    assert systemd.expand("/bin/p $A ${A} --k=${B}z $B", env) == ["/bin/p", "x", "y", "x y", "--k=z"]
