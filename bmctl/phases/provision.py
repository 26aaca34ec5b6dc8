"""Node provisioning: the node software (containerd, runc, the CNI plugins, crictl, kubelet, kubeadm
and kubectl) and its configuration, kernel modules and sysctls, and the firewall ports bmctl's parts
use.

Two sources of the software:
- the offline bundle (header `bundlePath`): one upload per node of the bundle's node archive, checked
  on the node against its sha256, then each file that differs installed atomically (a temp file in
  the same folder, renamed over the old one); a record of what was installed
  (/var/lib/bmctl/node-software.list: sha256, size, mtime, path) lets a re-run skip hashing files
  nobody touched. A node whose files all match gets nothing sent.
- the node's package manager (no bundle): Kubernetes' own repositories, versions pinned and held
  (bmctl/render/packages.py); skipped when the right versions are installed.
Then containerd's config (sandbox image, cgroup driver, registry mirrors and credentials), the units
(bundle), spec.proxy drop-ins, and the services: started when stopped, restarted only when their
binary, unit or config changed. Last, each node pulls the sandbox image through its registry
configuration: a node that cannot reach its mirror fails here, before kubeadm.
"""
from __future__ import annotations

from bmctl.config.model import APISERVER_PORT, MEMBERLIST_PORT, ClusterConfig
from bmctl.config.registries import RegistryAccess, access
from bmctl.host import Host, HostError, sync_files
from bmctl.phases.base import Context, Phase, Step
from bmctl.release import Release
from bmctl.render import node_software as ns
from bmctl.render.engine import RenderedFile, render
from bmctl.render.facts import NodeFacts

MODULES_FILE = "/etc/modules-load.d/bmctl.conf"
SYSCTL_FILE = "/etc/sysctl.d/90-bmctl.conf"
KUBELET_PORT = 10250
RECORD = "/var/lib/bmctl/node-software.list"
CACHE_DIR = "/var/cache/bmctl"

# Loads each module not loaded yet; prints the ones that could not be loaded.
_MODULES = r'''
for m; do
  [ -d "/sys/module/$m" ] || modprobe "$m" 2>/dev/null || echo "$m"
done
'''

# Opens each "port/proto" argument in the active firewall manager (ufw or firewalld); both commands
# are idempotent. Prints the manager used, or "none".
_FIREWALL = r'''
if command -v ufw >/dev/null 2>&1 && ufw status 2>/dev/null | grep -q "Status: active"; then
  for p; do ufw allow "$p" >/dev/null; done
  echo ufw
elif command -v firewall-cmd >/dev/null 2>&1 && firewall-cmd --state >/dev/null 2>&1; then
  for p; do firewall-cmd -q --permanent --add-port="$p"; done
  firewall-cmd -q --reload
  echo firewalld
else
  echo none
fi
'''

# Arguments: the record file, the cached archive, then the software paths. Prints "sha256 path" for
# each path that exists (the recorded sha256 when size and mtime still match the record, else the
# file hashed now), "archive <sha256>" for the archive an earlier run uploaded, and removes temp
# files an interrupted run left next to the paths.
_STATE = r'''
record=$1 archive=$2; shift 2
for f; do
  for t in "${f%/*}"/.bmctl.??????; do [ -f "$t" ] && rm -f -- "$t"; done
  [ -f "$f" ] || continue
  st=$(stat -c '%s %Y' -- "$f")
  sum=
  if [ -f "$record" ]; then
    sum=$(awk -v p="$f" -v st="$st" '$4 == p && ($2 " " $3) == st { print $1; exit }' "$record")
  fi
  [ -n "$sum" ] || sum=$(sha256sum -- "$f" | cut -d' ' -f1)
  echo "$sum $f"
done
[ -f "$archive" ] && echo "archive $(sha256sum -- "$archive" | cut -d' ' -f1)"
exit 0
'''

# Arguments: archive, its sha256, then "path sha256" pairs of every software file, the ones to
# install marked with a leading "+". Checks the archive, installs each marked file atomically (temp
# file in the same folder, fsynced, renamed over the target), then writes the record. The archive
# stays in /var/cache/bmctl (older ones go), so a re-run or a killed run never needs it sent again.
# Uploads and installs on a node wait for each other (a killed bmctl's may still be finishing).
_INSTALL = r'''
set -eu
archive=$1 sum=$2; shift 2
mkdir -p /var/lib/bmctl
exec 9>/var/lib/bmctl/software.lock
flock 9
echo "$sum  $archive" | sha256sum -c --quiet - >/dev/null 2>&1 || {
  echo "the uploaded node software archive $archive does not match its sha256" >&2; rm -f -- "$archive"; exit 3; }
stage=$(mktemp -d /var/cache/bmctl/stage.XXXXXX)
trap 'rm -rf -- "$stage"' EXIT
want=
for p; do
  case $p in +*) want="$want ${p#+/}";; esac
done
set -f
[ -z "$want" ] || tar -xzf "$archive" -C "$stage" -- $want
set +f
record=/var/lib/bmctl/node-software.list
: > "$record.tmp"
while [ $# -ge 2 ]; do
  p=$1 s=$2; shift 2
  case $p in
    +*) p=${p#+}
        mkdir -p -- "${p%/*}"
        t=$(mktemp "${p%/*}/.bmctl.XXXXXX")
        cat -- "$stage$p" > "$t"
        chmod 0755 -- "$t"
        sync -- "$t" 2>/dev/null || sync
        mv -f -- "$t" "$p";;
  esac
  echo "$s $(stat -c '%s %Y' -- "$p") $p" >> "$record.tmp"
done
mv -f -- "$record.tmp" "$record"
for old in /var/cache/bmctl/node-software-*.tar.gz; do
  [ "$old" = "$archive" ] || rm -f -- "$old"
done
'''

# Uploads stdin to the archive path (a .part file renamed once complete and checked).
_UPLOAD = r'''
set -eu
mkdir -p -m 0700 /var/cache/bmctl /var/lib/bmctl
exec 9>/var/lib/bmctl/software.lock
flock 9
umask 077
cat > "$1.part"
echo "$2  $1.part" | sha256sum -c --quiet - >/dev/null 2>&1 || {
  echo "the upload of $1 arrived damaged (sha256 differs)" >&2; rm -f -- "$1.part"; exit 3; }
mv -f -- "$1.part" "$1"
'''

# Waits for containerd's CRI to answer, then pulls the image unless it is there already.
_PULL = r'''
export CONTAINER_RUNTIME_ENDPOINT=unix:///run/containerd/containerd.sock
i=0
until crictl info >/dev/null 2>&1; do
  i=$((i+1)); [ $i -le 120 ] || { echo "containerd does not answer on its socket after 60 s" >&2; exit 4; }
  sleep 0.5
done
crictl inspecti -q "$1" >/dev/null 2>&1 && { echo present; exit 0; }
crictl pull "$1" >/dev/null && echo pulled
'''

# Arguments: the files this run wrote (or keeps). Removes bmctl's files that a config no longer asks
# for: a hosts.toml (and its CA files) of a registry host no longer mirrored, the proxy drop-ins once
# spec.proxy is gone. Prints each path removed.
_STALE = r'''
keep=" $* "
for f in /etc/containerd/certs.d/*/hosts.toml /etc/containerd/certs.d/*/ca-*.crt \
         /etc/systemd/system/containerd.service.d/http-proxy.conf /etc/systemd/system/kubelet.service.d/http-proxy.conf; do
  [ -f "$f" ] || continue
  case $keep in *" $f "*) continue;; esac
  case $f in
    */hosts.toml|*/http-proxy.conf) grep -q "Managed by bmctl" "$f" || continue;;
  esac
  rm -f -- "$f" && echo "$f"
  rmdir -- "${f%/*}" 2>/dev/null || true
done
'''

# Versions of what is on the PATH (root's: /usr/local first), one "name version" line each.
VERSIONS = r'''
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
v() { command -v "$1" >/dev/null 2>&1 && echo "$1 $(command -v "$1") $("$@" 2>/dev/null | head -n1)"; }
v kubelet --version
v kubeadm version -o short
v containerd --version
v crictl --version
v runc --version
exit 0
'''


def provision_files(ipvs: bool) -> list[RenderedFile]:
    return [
        RenderedFile(MODULES_FILE, render("kubeadm/modules.conf.j2", ipvs=ipvs)),
        RenderedFile(SYSCTL_FILE, render("kubeadm/sysctl.conf.j2")),
    ]


def modules(ipvs: bool) -> list[str]:
    return [line for line in provision_files(ipvs)[0].content.splitlines() if line and not line.startswith("#")]


def firewall_ports(config: ClusterConfig, address: str) -> list[str]:
    ports = [f"{KUBELET_PORT}/tcp"]
    if address in {n.address for n in config.control_plane_nodes}:
        ports += [f"{APISERVER_PORT}/tcp", "2379-2380/tcp"]
    if config.bundled and address in {n.address for n in config.lb_nodes}:
        ports += [f"{config.lb.ports.controlPlaneLBPort}/tcp", f"{MEMBERLIST_PORT}/tcp", f"{MEMBERLIST_PORT}/udp"]
    return ports


def source(config: ClusterConfig) -> str:
    """Where the node software comes from: "bundle" (header bundlePath) or "packages"."""
    return "bundle" if config.header.bundlePath else "packages"


def parse_versions(out: str) -> dict[str, tuple[str, str]]:
    """VERSIONS' output: name -> (path, version as the tool prints it)."""
    found = {}
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2:
            found[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return found


def version_of(printed: str) -> str:
    """`Kubernetes v1.34.2` -> v1.34.2; `containerd github.com/containerd/containerd 1.6.20~ds1 ...` ->
    1.6.20~ds1; `crictl version v1.34.0` -> v1.34.0; `runc version 1.1.5+ds1` -> 1.1.5+ds1."""
    words = printed.split()
    if words[:1] == ["containerd"] and len(words) >= 3:
        return words[2]
    return words[-1] if words else ""


# Which written files make systemd reload, and which service restart (when it runs).
UNIT_FILES = {ns.CONTAINERD_UNIT, ns.KUBELET_UNIT, ns.KUBEADM_DROPIN, *ns.PROXY_DROPINS.values()}
RESTARTS_CONTAINERD = {ns.CONTAINERD_CONFIG, ns.CONTAINERD_UNIT, ns.PROXY_DROPINS["containerd"]}
RESTARTS_KUBELET = {ns.KUBELET_UNIT, ns.KUBEADM_DROPIN, ns.PROXY_DROPINS["kubelet"]}
# What a node must have for its software to count as installed.
REQUIRED = ("kubelet", "kubeadm", "containerd", "crictl", "runc")


def node_config_files(config: ClusterConfig, release: Release, facts: NodeFacts, driver: str,
                      registries: RegistryAccess, from_bundle: bool) -> list[RenderedFile]:
    """containerd's configuration, the proxy drop-ins and, with the bundle, the units."""
    units = ns.unit_files(release.binaries["containerd"].version if "containerd" in release.binaries else "") \
        if from_bundle else []
    return [*ns.containerd_files(config, release.image("pause"), facts, driver, registries),
            *ns.proxy_files(config), *units]


def node_family(facts: NodeFacts) -> str | None:
    """"debian", "rhel" or None (no package manager bmctl installs with), from the node's os-release."""
    from bmctl.render import packages
    os_id, *like = facts.os_release or ("",)
    return packages.os_family({"ID": os_id, "ID_LIKE": " ".join(like)})


def wrong_versions(found: dict[str, tuple[str, str]], kubernetes: str) -> list[tuple[str, str, str]]:
    """(name, path, version) of each kubelet or kubeadm installed at another version than `kubernetes`."""
    return [(n, found[n][0], version_of(found[n][1])) for n in ("kubelet", "kubeadm")
            if n in found and version_of(found[n][1]) != kubernetes]


class Provision(Phase):
    name = "provision"
    title = "Node provisioning"

    def plan(self, ctx: Context) -> list[Step]:
        ipvs = ctx.config.spec.clusterNetwork.kubeProxyMode == "ipvs"
        release = ctx.release
        registries = access(ctx.config)
        driver = ctx.cgroup_driver()
        steps = []
        for address in ctx.only([n.address for n in ctx.config.all_nodes]):
            facts = ctx.facts[address]
            steps.append(Step(address, "kernel modules and sysctls", provision_files(ipvs)))
            steps.append(Step(address, self._software_title(ctx), self._software_files(ctx, facts)))
            files = node_config_files(ctx.config, release, facts, driver, registries, source(ctx.config) == "bundle")
            steps.append(Step(address, f"containerd ({driver} cgroup driver, sandbox {release.image('pause')}"
                              f"{', ' + str(len(registries.hosts)) + ' registry host(s) configured' if registries.hosts else ''})"
                              f"{', units' if source(ctx.config) == 'bundle' else ''}"
                              f"{', proxy' if ctx.config.spec.proxy else ''}; enable and start containerd and "
                              "the kubelet; pull the sandbox image", files))
            steps.append(Step(address, "open in the firewall (ufw or firewalld, when active): " +
                              ", ".join(firewall_ports(ctx.config, address))))
        return steps

    def _software_title(self, ctx: Context) -> str:
        release = ctx.release
        parts = ", ".join(f"{p.name} {p.version}" for p in release.binaries.values())
        if source(ctx.config) == "bundle":
            size = f", {ctx.bundle.archive_size / 1e6:.0f} MB once" if ctx.bundle is not None else ""
            return (f"install from the bundle {ctx.config.header.bundlePath}: {parts} (upload{size}, "
                    "checked by sha256; files that already match are left alone)")
        return (f"install Kubernetes {release.kubernetes} from the node's package manager (pkgs.k8s.io, "
                "pinned and held) and containerd from the distribution, unless the right versions are there")

    def _software_files(self, ctx: Context, facts: NodeFacts) -> list[RenderedFile]:
        """With packages as the source: the plan's files and its script (what runs on the node, as
        /var/lib/bmctl/install-packages.sh in the dry run); both families' when the node's OS is not
        known (a dry run reads no node)."""
        if source(ctx.config) == "bundle":
            return []
        plans = [_package_plan(ctx, facts)] if facts.os_release else \
            [_package_plan(ctx, facts, family) for family in ("debian", "rhel")]
        files: list[RenderedFile] = []
        for plan in filter(None, plans):
            suffix = "" if len(plans) == 1 else f"-{plan.family}"
            files += [*plan.files, RenderedFile(f"/var/lib/bmctl/install-packages{suffix}.sh", plan.script, mode=0o700)]
        return files

    def run(self, ctx: Context) -> None:
        config = ctx.config
        ipvs = config.spec.clusterNetwork.kubeProxyMode == "ipvs"
        addresses = ctx.only([n.address for n in config.all_nodes])
        facts = ctx.node_facts(addresses)
        driver = ctx.cgroup_driver()
        registries = access(config)
        release = ctx.release
        from_bundle = source(config) == "bundle"

        def provision(host: Host) -> None:
            changes = ctx.record(host.address, sync_files(host, provision_files(ipvs)))
            missing = host.run(["sh", "-c", _MODULES, "sh", *modules(ipvs)], step="load kernel modules").stdout.split()
            # -e: keys of modules that are not loaded are skipped, not fatal
            host.run(["sysctl", "-q", "-e", "-p", SYSCTL_FILE], step="apply sysctls")
            if missing:
                ctx.progress.host(host.address, f"kernel modules not loaded: {', '.join(missing)} "
                                                "(Kubernetes networking may need them)", "warn")
            installed = install_bundle(ctx, host) if from_bundle else install_packages(ctx, host, facts[host.address])
            files = node_config_files(config, release, facts[host.address], driver, registries, from_bundle)
            written = [c.path for c in ctx.record(host.address, sync_files(host, files)) if c.status != "unchanged"]
            written += host.run(["sh", "-c", _STALE, "sh", *(f.path for f in files)],
                                step="remove registry and proxy files no longer configured").stdout.split()
            restarted = services(host, written, installed)
            pulled = host.run(["sh", "-c", _PULL, "sh", release.image("pause")], step="pull the sandbox image",
                              check=False, timeout=300)
            if pulled.rc != 0:
                raise HostError(host.address, "pull the sandbox image",
                                f"containerd could not pull {release.image('pause')}: "
                                f"{(pulled.stderr.strip() or pulled.stdout.strip())[-600:]}",
                                pull_fix(registries))
            fw = host.run(["sh", "-c", _FIREWALL, "sh", *firewall_ports(config, host.address)],
                          step="open firewall ports").stdout.strip()
            kernel = [c.path for c in changes if c.status != "unchanged"]
            ctx.progress.host(host.address, "; ".join([
                f"software: {installed['summary']}",
                f"config: {len(written)} file(s) written" if written else "config unchanged",
                f"restarted: {', '.join(restarted)}" if restarted else "no service restarted",
                f"sandbox image {pulled.stdout.strip() or 'present'}",
                "kernel settings " + ("written" if kernel else "unchanged"), f"firewall: {fw}"]))

        ctx.inventory.parallel(addresses, provision)


def pull_fix(registries: RegistryAccess) -> str:
    if registries.hosts:
        where = ", ".join(f"{h.host} -> {', '.join(r.url for r in h.routes)}" for h in registries.hosts)
        return (f"check that every node reaches its registries ({where}): the address and port, the CA "
                "(caCertPath) and the credential (pullCredentialConfigPath); then re-run")
    return ("give the nodes a path to the image registries (or set registryMirrors in the header to a "
            "registry loaded with `bmctl push images`); then re-run")


def install_bundle(ctx: Context, host: Host) -> dict:
    """Install the bundle's node software on one node; {"changed": [paths], "summary": text}."""
    bundle = ctx.bundle
    software = bundle.software
    paths = sorted(software)
    archive = f"{CACHE_DIR}/node-software-{bundle.archive_sha256[:16]}.tar.gz"
    out = host.run(["sh", "-c", _STATE, "sh", RECORD, archive, *paths], step="read installed node software",
                   timeout=300).stdout
    have: dict[str, str] = {}
    cached = None
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "archive":
            cached = value
        elif value:
            have[value] = key
    differ = [p for p in paths if have.get(p) != software[p].sha256]
    if not differ:
        return {"changed": [], "summary": f"{len(paths)} files already installed, nothing sent"}
    sent = 0
    if cached != bundle.archive_sha256:
        with bundle.node_archive() as f:
            host.run(["sh", "-c", _UPLOAD, "sh", archive, bundle.archive_sha256], step="upload the node software",
                     stdin=f, timeout=900)
        sent = bundle.archive_size
    args = [a for p in paths for a in (("+" if p in differ else "") + p, software[p].sha256)]
    host.run(["sh", "-c", _INSTALL, "sh", archive, bundle.archive_sha256, *args], step="install the node software",
             timeout=600)
    parts = sorted({software[p].part for p in differ})
    return {"changed": differ, "sent": sent,
            "summary": f"installed {len(differ)} file(s) of {', '.join(parts)}"
                       + (f" ({sent / 1e6:.0f} MB sent)" if sent else " (the archive was on the node already)")}


def _package_plan(ctx: Context, facts: NodeFacts, family: str | None = None):
    """The package manager's plan for the node (None when bmctl knows no package manager of its OS)."""
    from bmctl.config.registries import no_proxy
    from bmctl.render import packages
    family = family or node_family(facts)
    if family is None:
        return None
    proxy = ctx.config.spec.proxy
    return packages.plan(family, ctx.release.kubernetes, proxy.url if proxy else None,
                         no_proxy(ctx.config) if proxy else [])


def install_packages(ctx: Context, host: Host, facts: NodeFacts) -> dict:
    """Install from the node's package manager, unless kubelet, kubeadm, containerd and crictl are
    there at the release's versions."""
    release = ctx.release
    found = parse_versions(host.run(["sh", "-c", VERSIONS], step="read installed versions").stdout)
    if not wrong_versions(found, release.kubernetes) and all(n in found for n in REQUIRED):
        return {"changed": [], "summary": f"Kubernetes {release.kubernetes} and containerd already installed"}
    plan = _package_plan(ctx, facts)
    if plan is None:
        raise HostError(host.address, "install node software", f"no package manager bmctl knows on {facts.os} "
                        "(bmctl installs with apt on Debian/Ubuntu and dnf on the RHEL family)",
                        "install from an offline bundle instead: `bmctl bundle build`, then set bundlePath in "
                        "the config's header")
    ctx.record(host.address, sync_files(host, plan.files))
    host.run(["sh", "-c", plan.script], step="install packages", timeout=1800, retry=False)
    return {"changed": ["packages"], "summary": "installed " + ", ".join(f"{k} {v}" for k, v in plan.packages.items())}


def services(host: Host, written: list[str], installed: dict) -> list[str]:
    """daemon-reload when a unit changed; containerd started (restarted when its binary, unit or config
    changed) and enabled; the kubelet enabled, and restarted only if it runs and its binary or unit
    changed (kubeadm starts it). Returns the services restarted."""
    changed_files = set(written)
    binaries = set(installed.get("changed", []))
    script = ["set -e"]
    if changed_files & UNIT_FILES or "packages" in binaries:
        script.append("systemctl daemon-reload")
    restart_containerd = bool(changed_files & RESTARTS_CONTAINERD) or any(
        b.startswith(("/usr/local/bin/containerd", "/usr/local/sbin/runc")) for b in binaries)
    restart_kubelet = bool(changed_files & RESTARTS_KUBELET) or "/usr/local/bin/kubelet" in binaries
    script.append("systemctl enable containerd kubelet >/dev/null 2>&1 || systemctl enable containerd kubelet")
    script.append("if systemctl is-active -q containerd; then "
                  + ("systemctl restart containerd; echo containerd; " if restart_containerd else ":; ")
                  + "else systemctl start containerd; fi")
    if restart_kubelet:
        script.append("if systemctl is-active -q kubelet; then systemctl restart kubelet; echo kubelet; fi")
    out = host.run(["sh", "-c", "\n".join(script)], step="start the node software services").stdout
    return out.split()
