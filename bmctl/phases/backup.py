"""`bmctl backup cluster`: one file that `bmctl restore cluster` brings the cluster back from.

The backup is an uncompressed tar, written 0600 under a temporary name and renamed when complete (a
killed run leaves no file that looks whole):

    backup.yaml        cluster name, Kubernetes version, etcd revision, hash and size, the member it
                       came from, every node (address, name, roles), time, bmctl version, and what
                       secrets the file holds
    etcd-snapshot.db   an etcd snapshot from a healthy member, taken by etcdctl in that member's etcd
                       container with kubeadm's health-check client certificate, checked there with
                       `etcdutl snapshot status`
    pki.tar            /etc/kubernetes/pki of that node (CAs, etcd/, sa.key and sa.pub, ...)
    kubeadm.yaml       the kubeadm configuration bmctl wrote there (/etc/kubernetes/bmctl/kubeadm.yaml)
    secrets.yaml       bmctl's generated secrets of the cluster (the workspace's .secrets.yaml)
    cluster.yaml       the cluster config
    SHA256SUMS         sha256 of every other member (`sha256sum -c` format)

The snapshot and the PKI are streamed from the node into temporary files beside the output (0600),
hashed as they come, then into the tar: never a whole copy in memory.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shlex
import tarfile
import tempfile
from pathlib import Path

import yaml

from bmctl import __version__, state
from bmctl.errors import BmctlError
from bmctl.host import Host, HostError
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.render.kubeadm import KUBEADM_CONFIG

FORMAT = 1
METADATA = "backup.yaml"
SNAPSHOT = "etcd-snapshot.db"
PKI = "pki.tar"
KUBEADM = "kubeadm.yaml"
SECRETS = "secrets.yaml"
CONFIG = "cluster.yaml"
SUMS = "SHA256SUMS"
NODE_SNAPSHOT = "/var/lib/etcd/bmctl-backup.db"  # etcd's data folder: the one host folder its container mounts
HOLDS = ("the cluster's certificate authorities and keys (pki.tar: Kubernetes, etcd, front proxy, service "
         "accounts), every object of the cluster including every Secret (etcd-snapshot.db), bmctl's generated "
         "secrets (secrets.yaml: MetalLB's memberlist key, the kubeadm bootstrap token and certificate key, the "
         "ingress's TLS key) and kubeadm's configuration: keep it as you keep the admin kubeconfig")


def _snapshot_script() -> str:
    crictl = " ".join(shlex.quote(a) for a in state.CRICTL)
    etcdctl = " ".join(shlex.quote(a) for a in state.ETCDCTL)
    return f"""set -eu
id=$({crictl} ps -q --name '^etcd$' --state running | head -n1)
[ -n "$id" ] || {{ echo "no running etcd container" >&2; exit 3; }}
rm -f {NODE_SNAPSHOT}
{crictl} exec "$id" {etcdctl} snapshot save {NODE_SNAPSHOT} >&2
{crictl} exec "$id" etcdutl snapshot status {NODE_SNAPSHOT} -w json
echo "size $(stat -c %s {NODE_SNAPSHOT})"
"""


class _Hashing:
    """A binary file wrapper that hashes what is written (and forgets on truncate, for a retry)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def seek(self, *a):
        return self.f.seek(*a)

    def truncate(self, *a):
        self.sha, self.size = hashlib.sha256(), 0
        return self.f.truncate(*a)

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


def healthy_member(ctx: Context) -> tuple[Host, state.EtcdState]:
    """The first control-plane node whose own etcd member says it is healthy."""
    problems = []
    for node in ctx.config.control_plane_nodes:
        host = ctx.inventory[node.address]
        try:
            et = state.etcd(host)
        except HostError as exc:
            problems.append(f"{node.address}: {exc.message}")
            continue
        if et.error:
            problems.append(f"{node.address}: {et.error}")
            continue
        own = [h for h in et.health if f"//{node.ip}:" in h["endpoint"] or f"//[{node.ip}]:" in h["endpoint"]]
        if own and all(h["health"] for h in own):
            return host, et
        problems.append(f"{node.address}: its member is not healthy")
    raise BmctlError("no control-plane node has a healthy etcd member to take the snapshot from: "
                     + "; ".join(problems), "run `bmctl check cluster` to see why; a backup needs a healthy etcd.")


class Backup(Phase):
    name = "backup"
    title = "Backup (etcd snapshot, PKI, kubeadm configuration, bmctl's secrets)"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def plan(self, ctx: Context) -> list[Step]:
        cps = ", ".join(n.address for n in ctx.config.control_plane_nodes)
        return [Step(CLUSTER, f"the first control-plane node ({cps}) whose etcd member is healthy: an etcd snapshot "
                              "(etcdctl in its container), checked with etcdutl snapshot status; its "
                              f"/etc/kubernetes/pki and {KUBEADM_CONFIG}"),
                Step(CLUSTER, f"write {self.path} (0600; tar of {METADATA}, {SNAPSHOT}, {PKI}, {KUBEADM}, {SECRETS}, "
                              f"{CONFIG}, {SUMS}); it holds {HOLDS}")]

    def run(self, ctx: Context) -> None:
        host, et = healthy_member(ctx)
        ctx.progress.note(f"etcd snapshot from {host.address} (member of {len(et.members)})")
        folder = self.path.parent
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{self.path.name}.") as tmp:
            os.chmod(tmp, 0o700)
            work = Path(tmp)
            try:
                res = host.run(["sh", "-c", _snapshot_script()], step="etcd snapshot", timeout=600)
                *_, line, size_line = res.stdout.strip().splitlines()
                status, size = json.loads(line), int(size_line.split()[1])
                snap = self._download(host, ["cat", NODE_SNAPSHOT], work / SNAPSHOT, "download the etcd snapshot")
            finally:
                host.run(["rm", "-f", NODE_SNAPSHOT], step="remove the node's copy of the snapshot", check=False)
            if snap[1] != size:  # etcdctl's file: the database and its sha256 (32 bytes) appended
                raise BmctlError(f"the etcd snapshot from {host.address} arrived with {snap[1]} bytes, but the node's "
                                 f"file has {size}.", "run the backup again.")
            pki = self._download(host, ["tar", "-C", "/etc/kubernetes", "-cf", "-", "pki"], work / PKI,
                                 "download /etc/kubernetes/pki")
            kubeadm = host.run(["cat", KUBEADM_CONFIG], step="read kubeadm's configuration", secret_output=True).stdout
            secrets = ctx.options["workspace"].secrets_path.read_text()
            config_text = ctx.options.get("config_text") or Path(ctx.config.path).read_text()
            names = self._node_names(ctx)
            metadata = {
                "format": FORMAT, "cluster": ctx.config.name, "kubernetesVersion": ctx.release.kubernetes,
                "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "bmctl": __version__,
                "etcd": {"revision": status.get("revision"), "hash": status.get("hash"),
                         "totalKeys": status.get("totalKey"), "size": snap[1], "version": status.get("version"),
                         "from": host.address},
                "nodes": [{"address": n.address, "name": names.get(n.ip, ""), "roles": ctx.config.roles(n)}
                          for n in ctx.config.all_nodes],
                "holds": HOLDS,
            }
            small = {METADATA: yaml.safe_dump(metadata, sort_keys=False), KUBEADM: kubeadm, SECRETS: secrets,
                     CONFIG: config_text}
            sums = {SNAPSHOT: snap[0], PKI: pki[0],
                    **{n: hashlib.sha256(t.encode()).hexdigest() for n, t in small.items()}}
            part = work / "backup.tar"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                self._add_text(tar, METADATA, small[METADATA])
                tar.add(work / SNAPSHOT, SNAPSHOT, filter=_private)
                tar.add(work / PKI, PKI, filter=_private)
                for name in (KUBEADM, SECRETS, CONFIG):
                    self._add_text(tar, name, small[name])
                self._add_text(tar, SUMS, "".join(f"{d}  {n}\n" for n, d in sums.items()))
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(part, self.path)
        ctx.options["backup"] = {"path": str(self.path), "bytes": self.path.stat().st_size, **metadata["etcd"]}
        ctx.progress.note(f"backup written: {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB; etcd revision "
                          f"{status.get('revision')}, {status.get('totalKey')} keys)")

    @staticmethod
    def _download(host: Host, argv: list[str], dest: Path, step: str) -> tuple[str, int]:
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w+b") as f:
            sink = _Hashing(f)
            host.run(argv, step=step, stdout_to=sink, timeout=600, secret_output=True)
            f.flush()
            return sink.sha.hexdigest(), sink.size

    @staticmethod
    def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o600
        info.mtime = int(datetime.datetime.now().timestamp())
        tar.addfile(info, io.BytesIO(data))

    @staticmethod
    def _node_names(ctx: Context) -> dict[str, str]:
        try:
            from bmctl.kube import Kube
            kube = Kube(ctx.options["kubeconfig_path"])
            return {ip: st.name for ip, st in state.nodes(kube).items()}
        except Exception:  # names are for the reader; the API may be down while etcd is fine
            return {}


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "root", "root"
    return info
