"""The `bmctl` command line (typer). Commands parse options and hand over to bmctl.commands."""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from bmctl import __version__
from bmctl.config.problems import ConfigError
from bmctl.defaults import DEFAULT_CONCURRENCY
from bmctl.errors import BmctlError
from bmctl.output import err, print_problems

# Each command imports its module when it runs: `check config` does not load the SSH layer, and
# nothing but the commands that talk to the cluster load the Kubernetes client.

app = typer.Typer(help="Bare-metal Kubernetes clusters over SSH, with bundled load balancing "
                       "(Keepalived + HAProxy for the API VIP, MetalLB layer 2 for Services).",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
create_app = typer.Typer(help="Create a config template or a cluster.", no_args_is_help=True)
check_app = typer.Typer(help="Check a config file, the nodes before create (preflight), or a running cluster.", no_args_is_help=True)
app.add_typer(create_app, name="create")
lab_app = typer.Typer(help="A lab of machines on this host (network namespaces), for trying bmctl.",
                      no_args_is_help=True)
reset_app = typer.Typer(help="Undo what create did.", no_args_is_help=True)
update_app = typer.Typer(help="Change a running cluster.", no_args_is_help=True)
app.add_typer(check_app, name="check")
app.add_typer(update_app, name="update")
app.add_typer(reset_app, name="reset")
app.add_typer(lab_app, name="lab")
backup_app = typer.Typer(help="Save a running cluster to one file.", no_args_is_help=True)
app.add_typer(backup_app, name="backup")

ClusterOpt = typer.Option(..., "--cluster", "-c", help="Cluster name (bmctl-workspace/NAME/NAME.yaml) or a "
                                                        "path to a config file.")
WorkspaceOpt = typer.Option(None, "--workspace", envvar="BMCTL_WORKSPACE",
                            help="Workspace folder [default: ./bmctl-workspace].")


class Output(str, Enum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


@create_app.command("config")
def create_config(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                  force: bool = typer.Option(False, "--force", help="Overwrite an existing config.")) -> None:
    """Write a commented config template to bmctl-workspace/NAME/NAME.yaml."""
    from bmctl.commands import config as config_cmd

    config_cmd.create_config(cluster, workspace, force)


@check_app.command("config")
def check_config(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                 output: Output = typer.Option(Output.text, "--output", "-o", help="text or json.")) -> None:
    """Validate a config file (no network): every problem with its field, line and fix."""
    from bmctl.commands import config as config_cmd

    raise typer.Exit(config_cmd.check_config(cluster, workspace, output.value))


AcceptKeysOpt = typer.Option(False, "--accept-new-host-keys",
                             help="Trust and record host keys of nodes not yet in known_hosts (never a changed key).")
ConcurrencyOpt = typer.Option(DEFAULT_CONCURRENCY, "--concurrency", min=1, max=256,
                              help="How many nodes to work on at once.")


@create_app.command("cluster")
def create_cluster(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                   dry_run: bool = typer.Option(False, "--dry-run", help="Render every file per node under "
                                                "bmctl-workspace/NAME/dry-run/ and print the plan; touch no machine."),
                   force: bool = typer.Option(False, "--force", help="Skip the preflight checks."),
                   until: Optional[str] = typer.Option(None, "--until", help="Stop after this phase (preflight, "
                                                       "provision, control-plane-lb, kubeadm, data-plane-lb, verify)."),
                   accept_new_host_keys: bool = AcceptKeysOpt, concurrency: int = ConcurrencyOpt) -> None:
    """Preflight, node provisioning, control-plane LB, kubeadm, MetalLB and verification."""
    from bmctl.commands import cluster as cluster_cmd

    cluster_cmd.create_cluster(cluster, workspace, dry_run, force, until, accept_new_host_keys, concurrency)


@check_app.command("preflight")
def check_preflight(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                    output: Output = typer.Option(Output.text, "--output", "-o", help="text or json."),
                    accept_new_host_keys: bool = AcceptKeysOpt, concurrency: int = ConcurrencyOpt,
                    until: Optional[str] = typer.Option(None, "--until", help="Check only what the phases up to "
                                                        "this one need (e.g. control-plane-lb: no kubeadm).")) -> None:
    """Check every node over SSH: sudo, OS, binaries, subnet, free VIPs and ports, VRRP id, time, swap."""
    from bmctl.commands import cluster as cluster_cmd

    raise typer.Exit(cluster_cmd.check_preflight(cluster, workspace, output.value, accept_new_host_keys,
                                                 concurrency, until))


@check_app.command("cluster")
def check_cluster(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                  output: Output = typer.Option(Output.text, "--output", "-o", help="text or json."),
                  accept_new_host_keys: bool = AcceptKeysOpt, concurrency: int = ConcurrencyOpt,
                  snapshot: bool = typer.Option(False, "--snapshot", help="Write one .tar.gz for a bug report "
                                                "(objects, events, per-node state and logs, bmctl's logs, the "
                                                "checks) with no secret in it; exit 0 once written."),
                  snapshot_output: Optional[Path] = typer.Option(None, "--snapshot-output", help="Where to write "
                                                                 "it (default bmctl-workspace/NAME/snapshots/).")) -> None:
    """Is the cluster healthy? Nodes (Ready, versions), static pods, etcd (members, health, leader, DB size,
    alarms), certificates, the VIP, MetalLB, the pod network and the ingress; exit status 1 on any failure."""
    from bmctl.commands import check as check_cmd

    raise typer.Exit(check_cmd.check_cluster(cluster, workspace, output.value, accept_new_host_keys, concurrency,
                                             snapshot, snapshot_output))


@backup_app.command("cluster")
def backup_cluster(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                   backup_file: Optional[Path] = typer.Option(None, "--backup-file", help="Where to write it "
                                                              "(default bmctl-workspace/NAME/backups/); never "
                                                              "overwritten."),
                   dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be saved; touch no machine."),
                   accept_new_host_keys: bool = AcceptKeysOpt, concurrency: int = ConcurrencyOpt) -> None:
    """An etcd snapshot from a healthy member (checked with etcdutl), the PKI, kubeadm's configuration,
    bmctl's secrets and the config in one 0600 tar with SHA256SUMS. It holds the cluster's keys: keep it safe."""
    from bmctl.commands import backup as backup_cmd

    backup_cmd.backup_cluster(cluster, workspace, backup_file, dry_run, accept_new_host_keys, concurrency)


@reset_app.command("cluster")
def reset_cluster(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                  force: bool = typer.Option(False, "--force", help="Do not ask for confirmation."),
                  dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be removed; touch no machine."),
                  accept_new_host_keys: bool = AcceptKeysOpt, concurrency: int = ConcurrencyOpt,
                  purge: bool = typer.Option(False, "--purge", help="Also remove the node software bmctl installed "
                                             "(containerd, runc, CNI plugins, crictl, kubelet, kubeadm, kubectl) "
                                             "with its units and containerd's configuration.")) -> None:
    """Undo on every node what create did (kubeadm reset, static pods, configs); asks first. The node
    software stays installed unless --purge."""
    from bmctl.commands import cluster as cluster_cmd

    cluster_cmd.reset_cluster(cluster, workspace, force, dry_run, accept_new_host_keys, concurrency, purge)


@update_app.command("loadbalancer")
def update_loadbalancer(cluster: str = ClusterOpt, workspace: Optional[Path] = WorkspaceOpt,
                        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before applying."),
                        dry_run: bool = typer.Option(False, "--dry-run", help="Compare with the workspace copy of "
                                                     "the applied config, print the changes and the plan, render "
                                                     "the files; touch no machine."),
                        accept_new_host_keys: bool = AcceptKeysOpt, concurrency: int = ConcurrencyOpt) -> None:
    """Apply changes of spec.loadBalancer (pools, LB nodes, control-plane backends) to a running cluster,
    one load-balancer node at a time; refuses changes that cannot be made and undoes hand edits."""
    from bmctl.commands import update as update_cmd

    update_cmd.update_loadbalancer(cluster, workspace, yes, dry_run, accept_new_host_keys, concurrency)


bundle_app = typer.Typer(help="Offline bundles: the node software and every image a cluster needs, in one file.",
                         no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


class BundleSource(str, Enum):
    official = "official"
    lab = "lab"


@bundle_app.command("build")
def bundle_build(kubernetes: str = typer.Option(..., "--kubernetes", help="Kubernetes version, e.g. v1.34.2."),
                 output: Optional[Path] = typer.Option(None, "--output", "-o", help="The bundle file [default: "
                                                       "./bmctl-bundle-VERSION-linux-amd64.tar]."),
                 source: BundleSource = typer.Option(BundleSource.official, "--from", help="official: download from "
                                                     "upstream (needs internet access); lab: the lab's bundle, built "
                                                     "on this machine."),
                 release_file: Optional[Path] = typer.Option(None, "--release", help="A release file to build "
                                                             "(default: bmctl's own for --kubernetes)."),
                 mirror: Optional[str] = typer.Option(None, "--mirror", help="Fetch every https://HOST/PATH of the "
                                                      "release as MIRROR/HOST/PATH (an artefact mirror).")) -> None:
    """Build an offline bundle: the node software (checked against the checksums upstream publishes)
    and every image (pinned by digest). Copy it next to the config and set bundlePath in its header."""
    from bmctl.commands import bundle as bundle_cmd

    bundle_cmd.build(kubernetes, output, source.value, release_file, mirror)


@bundle_app.command("fetch-manifests")
def bundle_fetch_manifests(release_file: Optional[Path] = typer.Option(None, "--release", help="A release file "
                                                                       "(default: bmctl's own).")) -> None:
    """Fetch the upstream manifests the release pins (MetalLB's, flannel's, Gateway API's CRDs) into
    ~/.cache/bmctl/upstream: from the Go module cache, else the Go module proxy (GOPROXY), each checked
    against its pinned sha256. `bmctl bundle build` puts them into the bundle itself."""
    from bmctl.commands import bundle as bundle_cmd

    bundle_cmd.fetch_manifests(release_file)


push_app = typer.Typer(help="Push images into a registry.", no_args_is_help=True)
app.add_typer(push_app, name="push")


@push_app.command("images")
def push_images(source: Path = typer.Option(..., "--source", help="The bundle (`bmctl bundle build`) or an OCI "
                                            "image layout folder."),
                private_registry: str = typer.Option(..., "--private-registry", help="HOST:PORT[/NAMESPACE] of the "
                                                     "registry (HTTPS; http://HOST:PORT for a plain-HTTP one)."),
                cacert: Optional[Path] = typer.Option(None, "--cacert", help="PEM file of the CA that signed the "
                                                      "registry's certificate (besides the system CAs)."),
                need_credential: bool = typer.Option(False, "--need-credential", help="Ask for the registry's "
                                                     "username and password."),
                credential_file: Optional[Path] = typer.Option(None, "--credential-file", help="A Docker config.json "
                                                               "with the registry's credentials (auths.HOST:PORT), "
                                                               "the format of pullCredentialConfigPath.")) -> None:
    """Push every image of a bundle into a private registry, each under its path without the source
    registry (registry.k8s.io/pause:3.10.1 -> HOST:PORT[/NAMESPACE]/pause:3.10.1); blobs the registry
    has are not sent again. Point the config's registryMirrors at it."""
    from bmctl.commands import images as images_cmd

    images_cmd.push_images(source, private_registry, cacert, credential_file, need_credential)


@lab_app.command("up")
def lab_up(workspace: Optional[Path] = WorkspaceOpt,
           control_planes: int = typer.Option(3, "--control-planes", min=1, help="Control-plane nodes."),
           lb_nodes: int = typer.Option(2, "--lb-nodes", min=0, help="Dedicated load-balancer nodes "
                                        "(0: the control plane runs the load balancers)."),
           workers: int = typer.Option(1, "--workers", min=0, help="Worker nodes."),
           host_address: bool = typer.Option(True, "--host-address/--no-host-address",
                                             help="Give this machine an address (.1) on the lab bridge."),
           subnet: Optional[str] = typer.Option(None, "--subnet", help="The node segment: one of "
                                                "192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (default: the "
                                                "first that collides with none of this machine's addresses "
                                                "and routes)."),
           router: bool = typer.Option(False, "--router", help="A BGP router (FRR) between the nodes and the "
                                       "client; lab.yaml then has BGP load balancing (nodes on a /25, Service "
                                       "pool .160-.175 advertised to the router at .126).")) -> None:
    """Start a lab: real nodes (containerd, kubelet, kubeadm; images in a registry of the lab) as network
    namespaces with sshd; builds what is missing first; writes bmctl-workspace/lab/lab.yaml."""
    from bmctl.commands import lab as lab_cmd

    lab_cmd.up(workspace, control_planes, lb_nodes, workers, host_address, subnet, router=router)


@lab_app.command("demo")
def lab_demo(workspace: Optional[Path] = WorkspaceOpt, concurrency: int = ConcurrencyOpt) -> None:
    """Create the lab's cluster (bmctl create cluster -c lab) and show a LoadBalancer Service answering."""
    from bmctl.commands import lab as lab_cmd

    lab_cmd.demo(workspace, concurrency)


@lab_app.command("down")
def lab_down(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Remove every namespace, interface, process and file the lab made."""
    from bmctl.commands import lab as lab_cmd

    lab_cmd.down(workspace)


@lab_app.command("prune")
def lab_prune() -> None:
    """Remove the labs on this machine whose processes are all gone (left by a killed run or a restart):
    what their records in /run/bmctl-lab list, nothing else; running labs are left alone."""
    from bmctl.commands import lab as lab_cmd

    lab_cmd.prune()


@lab_app.command("status")
def lab_status(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Show the lab's nodes, whether their sshd runs, and their static pods."""
    from bmctl.commands import lab as lab_cmd

    lab_cmd.status(workspace)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one paragraph and an exit status, never a traceback."""
    try:
        app(args=argv, prog_name="bmctl", standalone_mode=True)
    except SystemExit:
        raise
    except ConfigError as exc:
        print_problems(exc.problems)
        n = len(exc.errors)
        err.print(f"{n} error{'s' if n != 1 else ''} found.")
        sys.exit(1)
    except BmctlError as exc:
        err.print(exc.render(), markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to continue (every step is idempotent)")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: say what happened in one paragraph
        err.print(f"error: bmctl hit an internal error ({type(exc).__name__}: {exc}). Nothing further "
                  "was changed. Please report it with the command you ran.", markup=False)
        sys.exit(70)
