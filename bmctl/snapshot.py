"""`bmctl check cluster --snapshot`: one .tar.gz for a bug report, with no secret in it.

What goes in (SNAPSHOT.txt at its top lists it again, with what was left out and why):
- health.json: the health checks (bmctl/commands/check.py), whatever their result;
- cluster/: the cluster's objects (KINDS), one YAML file per kind, managedFields dropped; Secrets by
  name, type and key names only; events;
- nodes/ADDRESS/: addresses, routes and rules, iptables-save and nft's ruleset, mounts and disk use,
  processes, containers and pod sandboxes, the kubelet's and containerd's logs (journald, where the
  node has it), the static pods' manifests, the kubelet's and containerd's configuration, and the last
  lines of every log of the pods in bmctl's namespaces (/var/log/pods);
- bmctl/: bmctl's run logs of this cluster (already filtered of secret values when written).

No secret goes in: before any text is written it passes `Scrubber`, which replaces every value it
knows to be secret (the workspace's generated secrets, the data of every Secret in the cluster, the
admin kubeconfig's credentials, bootstrap tokens in their id.secret form) and every PEM private key
block with <redacted>, and blanks credential lines of containerd's configuration.
"""
from __future__ import annotations

import base64
import datetime
import io
import json
import os
import re
import tarfile
import time
from pathlib import Path

import yaml

from bmctl.host import Host, Inventory
from bmctl.state import sections

REDACTED = "<redacted>"
# The objects a snapshot holds: (apiVersion, kind); a kind the cluster does not serve is skipped.
KINDS = [
    ("v1", "Node"), ("v1", "Namespace"), ("v1", "Pod"), ("v1", "Service"), ("v1", "Endpoints"),
    ("v1", "ConfigMap"), ("v1", "Event"), ("v1", "ServiceAccount"), ("v1", "PersistentVolume"),
    ("v1", "PersistentVolumeClaim"), ("discovery.k8s.io/v1", "EndpointSlice"),
    ("apps/v1", "Deployment"), ("apps/v1", "DaemonSet"), ("apps/v1", "ReplicaSet"), ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"), ("batch/v1", "CronJob"), ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "IngressClass"), ("networking.k8s.io/v1", "NetworkPolicy"),
    ("coordination.k8s.io/v1", "Lease"), ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"), ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"), ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
    ("metallb.io/v1beta1", "IPAddressPool"), ("metallb.io/v1beta1", "L2Advertisement"),
    ("metallb.io/v1beta1", "BGPAdvertisement"), ("metallb.io/v1beta2", "BGPPeer"), ("metallb.io/v1beta1", "BFDProfile"),
    ("metallb.io/v1beta1", "ServiceL2Status"), ("metallb.io/v1beta1", "ServiceBGPStatus"),
    ("gateway.networking.k8s.io/v1", "GatewayClass"), ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"), ("gateway.networking.k8s.io/v1", "GRPCRoute"),
]
# Namespaces whose pods' logs each node's snapshot takes the end of.
LOG_NAMESPACES = ("kube-system", "kube-flannel", "metallb-system", "bmctl-ingress")
LOG_LINES = 300
JOURNAL_LINES = 2000
PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)
CREDENTIAL_LINE = re.compile(r"(?im)^(\s*\S*(password|passwd|auth|token|secret|identitytoken)\S*\s*[=:]\s*).+$")
# Keys of Kubernetes' own Secret types whose values are not secret.
PUBLIC_KEYS = {
    "kubernetes.io/tls": ("tls.crt", "ca.crt"),
    "kubernetes.io/service-account-token": ("ca.crt", "namespace"),
    "bootstrap.kubernetes.io/token": ("token-id", "description", "expiration", "usage-bootstrap-authentication",
                                      "usage-bootstrap-signing", "auth-extra-groups"),
}
MIN_SECRET = 6  # shorter strings (a Secret's "true", a port) would blank ordinary words


class Scrubber:
    """Replaces known secret values, PEM private keys and credential lines with <redacted>."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.replaced = 0
        self._pattern: re.Pattern | None = None

    def add(self, *values: str) -> None:
        for value in values:
            for v in (value, value.strip()):
                if v and len(v) >= MIN_SECRET and v != REDACTED:
                    self.values.add(v)
                    if "\n" in v:  # a multi-line value (a certificate, a key) also line by line
                        self.values.update(ln.strip() for ln in v.splitlines() if len(ln.strip()) >= 16)
        self._pattern = None

    def add_secret_data(self, data: dict | None, secret_type: str | None = None) -> None:
        """A Secret's data: each value as stored (base64) and decoded; of the kinds Kubernetes defines,
        only the keys that are secret (a TLS Secret's certificate and a bootstrap token's groups are
        not, and blanking them everywhere would hide what a bug report needs)."""
        keys = PUBLIC_KEYS.get(secret_type or "", ())
        for key, encoded in (data or {}).items():
            if not encoded or key in keys:
                continue
            self.add(encoded)
            try:
                self.add(base64.b64decode(encoded).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                pass

    def __call__(self, text: str, credentials: bool = False) -> str:
        text, n = PEM_KEY.subn(REDACTED, text)
        self.replaced += n
        if credentials:
            text, n = CREDENTIAL_LINE.subn(lambda m: m.group(1) + REDACTED, text)
            self.replaced += n
        if self.values:
            if self._pattern is None:
                self._pattern = re.compile("|".join(re.escape(v) for v in sorted(self.values, key=len, reverse=True)))
            text, n = self._pattern.subn(REDACTED, text)
            self.replaced += n
        return text


def _kubeconfig_credentials(path: Path) -> list[str]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    found = []
    for user in doc.get("users") or []:
        for key, value in (user.get("user") or {}).items():
            if key in ("client-key-data", "client-certificate-data", "token", "password") and isinstance(value, str):
                found.append(value)
                if key.endswith("-data"):
                    try:
                        found.append(base64.b64decode(value).decode())
                    except (ValueError, UnicodeDecodeError):
                        pass
    return found


def _plain(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    meta.pop("managedFields", None)
    (meta.get("annotations") or {}).pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return obj


def cluster_objects(kube, scrub: Scrubber) -> tuple[dict[str, str], list[str]]:
    """{archive path: YAML} of the cluster's objects, and notes on what could not be read. Secrets
    first: their data teaches the scrubber, and only their names, types and keys are kept."""
    from bmctl import state
    files: dict[str, str] = {}
    notes: list[str] = []
    secrets = state.get(kube, "v1", "Secret") or []
    listing = []
    for s in secrets:
        scrub.add_secret_data(s.get("data"), s.get("type"))
        meta = s.get("metadata") or {}
        if s.get("type") == "bootstrap.kubernetes.io/token":
            data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (s.get("data") or {}).items()}
            if data.get("token-id") and data.get("token-secret"):
                scrub.add(f"{data['token-id']}.{data['token-secret']}")
        listing.append({"namespace": meta.get("namespace"), "name": meta.get("name"), "type": s.get("type"),
                        "keys": sorted((s.get("data") or {}).keys())})
    files["cluster/v1/Secret.yaml"] = ("# Secrets by name, type and key names only: their data is not in this "
                                       "snapshot.\n" + yaml.safe_dump(listing, sort_keys=False))
    for api_version, kind in KINDS:
        try:
            items = state.get(kube, api_version, kind)
        except Exception as exc:  # one kind unreadable does not stop the snapshot
            notes.append(f"{kind} ({api_version}): {str(exc).splitlines()[0][:200]}")
            continue
        if items is None:
            continue
        if kind == "BGPPeer":
            for peer in items:
                if (peer.get("spec") or {}).get("password"):
                    scrub.add(peer["spec"]["password"])
        files[f"cluster/{api_version.replace('/', '_')}/{kind}.yaml"] = yaml.safe_dump(
            [_plain(i) for i in items], sort_keys=False)
    return files, notes


def _node_script() -> str:
    """One round trip per node: sections `== NAME` with each command's output (stderr included)."""
    def section(name: str, command: str) -> str:
        return f"echo '== {name}'; {{ {command} ; }} 2>&1\n"
    logs = " ".join(f"/var/log/pods/{ns}_*" for ns in LOG_NAMESPACES)
    return "".join([
        "export PATH=$PATH:/usr/local/bin:/usr/local/sbin:/usr/sbin:/sbin\n",
        section("addresses", "ip addr"),
        section("routes", "ip route show table all; ip -6 route; ip rule"),
        section("iptables-save", "command -v iptables-save >/dev/null && iptables-save || echo 'no iptables-save'"),
        section("nft-ruleset", "command -v nft >/dev/null && nft list ruleset || echo 'no nft'"),
        section("mounts", "cat /proc/mounts; df -h"),
        section("processes", "ps -eo pid,ppid,user,etime,rss,args"),
        section("containers", "crictl --timeout 5s ps -a; crictl --timeout 5s pods"),
        section("kubelet-log", f"if command -v journalctl >/dev/null && [ -d /run/systemd/system ]; then "
                               f"journalctl -u kubelet --no-pager -n {JOURNAL_LINES}; else echo 'no journald on this "
                               "node'; systemctl status kubelet; fi"),
        section("containerd-log", f"if command -v journalctl >/dev/null && [ -d /run/systemd/system ]; then "
                                  f"journalctl -u containerd --no-pager -n {JOURNAL_LINES}; else echo 'no journald on "
                                  "this node'; systemctl status containerd; fi"),
        section("static-pod-manifests", "for f in /etc/kubernetes/manifests/*.yaml; do [ -f \"$f\" ] && "
                                        "{ echo \"--- $f\"; cat \"$f\"; }; done"),
        section("kubelet-config", "cat /var/lib/kubelet/config.yaml /var/lib/kubelet/kubeadm-flags.env"),
        section("containerd-config", "cat /etc/containerd/config.toml"),
        section("pod-logs", f"for d in {logs}; do [ -d \"$d\" ] || continue; for c in \"$d\"/*/; do "
                            "f=$(ls -1 \"$c\"*.log 2>/dev/null | sort -V | tail -n1); [ -n \"$f\" ] || continue; "
                            f"echo \"--- $f\"; tail -n {LOG_LINES} \"$f\"; done; done"),
    ])


def node_files(host: Host) -> dict[str, str]:
    res = host.run(["sh", "-c", _node_script()], step="collect the node's state for the snapshot", check=False,
                   timeout=120)
    return {f"nodes/{host.address}/{name}.txt": text + "\n" for name, text in sections(res.stdout).items()}


def _add(tar: tarfile.TarFile, name: str, text: str, mtime: float) -> None:
    data = text.encode("utf-8", "replace")
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o600
    tar.addfile(info, io.BytesIO(data))


def write(path: Path, config, inventory: Inventory, kube, health: list[dict], secrets: list[str],
          kubeconfig: Path, log_root: Path | None) -> dict:
    """Collect and write the snapshot (0600); returns a summary (files, redactions, notes, seconds)."""
    start = time.monotonic()
    scrub = Scrubber()
    scrub.add(*secrets, *_kubeconfig_credentials(kubeconfig))
    notes: list[str] = []
    files: dict[str, str] = {}
    if kube is not None:
        try:
            objects, problems = cluster_objects(kube, scrub)
            files.update(objects)
            notes += problems
        except Exception as exc:
            notes.append(f"the cluster's objects: {str(exc).splitlines()[0][:300]}")
    else:
        notes.append("the cluster's objects: the API server did not answer; only the nodes were read")
    addresses = [n.address for n in config.all_nodes]

    def collect(host: Host):
        try:
            return node_files(host)
        except Exception as exc:
            return {f"nodes/{host.address}/unreachable.txt": f"{getattr(exc, 'message', exc)}\n"}
    for per_node in inventory.parallel(addresses, collect).values():
        files.update(per_node)
    if log_root is not None and log_root.is_dir():
        runs = sorted(p for p in log_root.iterdir() if p.is_dir())[-20:]
        for run in runs:
            for f in sorted(run.rglob("*")):
                if f.is_file():
                    files[f"bmctl/{f.relative_to(log_root)}"] = f.read_text(errors="replace")
    files["health.json"] = json.dumps(health, indent=2) + "\n"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.chmod(path, 0o600)
    now = time.time()
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        top = f"snapshot-{config.name}"
        written = {}
        for name, text in sorted(files.items()):
            clean = scrub(text, credentials=name.endswith("containerd-config.txt"))
            written[name] = clean
        readme = "\n".join([
            f"bmctl snapshot of cluster {config.name}, {stamp}",
            "",
            "Secrets: none. Secret objects are listed by name, type and key names only (cluster/v1/Secret.yaml);",
            "kubeconfigs, private keys (/etc/kubernetes/pki, SSH keys) and the workspace's secrets file are not",
            f"collected; {scrub.replaced} occurrence(s) of {len(scrub.values)} known secret value(s) (bmctl's",
            "generated secrets, every Secret's data, the admin kubeconfig's credentials, bootstrap tokens), PEM",
            "private key blocks and containerd credential lines were replaced with <redacted>.",
            "",
            "Contents: health.json (bmctl check cluster), cluster/ (objects by kind), nodes/ADDRESS/ (addresses,",
            "routes, packet filter rules, mounts, processes, containers, kubelet and containerd logs, static-pod",
            "manifests, kubelet and containerd configuration, the last lines of the pods' logs in "
            f"{', '.join(LOG_NAMESPACES)}), bmctl/ (bmctl's run logs).",
            *(["", "Not collected:", *(f"- {n}" for n in notes)] if notes else []),
            "",
        ])
        _add(tar, f"{top}/SNAPSHOT.txt", readme, now)
        for name, text in written.items():
            _add(tar, f"{top}/{name}", text, now)
    return {"path": str(path), "files": len(written) + 1, "redacted": scrub.replaced, "notes": notes,
            "seconds": round(time.monotonic() - start, 1), "bytes": path.stat().st_size}

