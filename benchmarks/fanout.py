"""Provisioning fan-out: bmctl against tuned Ansible, writing the control-plane load balancer's files
(haproxy.cfg, keepalived.conf, the track script, two static pod manifests) to every node of a lab.

Run (root, from the repository; needs PyPI for ansible-core the first time):
    python benchmarks/fanout.py --reps 5                  # 30 nodes, bmctl at 1/10/30, Ansible at 30
    python benchmarks/fanout.py --reps 5 --profile        # also a pyinstrument profile of bmctl at 30

Both tools run from the lab's client namespace, as an admin workstation would, against the same
nodes (network namespaces with a real sshd each, bare: no kubelet runs, so
the nodes stay idle between runs). For each tool and size: a first run (the five files absent on
every node) and a no-change re-run, each a fresh process, median of --reps runs.

  bmctl    `python benchmarks/fanout.py bmctl-write CONFIG`: the control-plane LB phase's own
           fan-out (ControlPlaneLB.write_files, as `create cluster --force` runs it): one SSH
           connection per node; one command reads the node's facts and the checksums and modes of
           all five files; if any differ, one more command writes them all atomically (tar stream
           into temp files, fsync, rename); all nodes at once (default --concurrency 64).
  ansible  ansible-core (PyPI) at its best, not its defaults: forks = number of nodes, pipelining
           on, SSH ControlPersist (kept warm between runs), fact gathering off, `copy` tasks of the
           very same files (rendered beforehand by bmctl's renderer, so Ansible does no templating).

Results: a table on stdout and benchmarks/results/fanout.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_VERSION = "2.19.14"
ANSIBLE_VENV = Path.home() / ".cache" / "bmctl-bench" / f"ansible-core-{ANSIBLE_VERSION}"
FILES = ("/etc/haproxy/haproxy.cfg", "/etc/keepalived/check_haproxy.sh", "/etc/keepalived/keepalived.conf",
         "/etc/kubernetes/manifests/haproxy.yaml", "/etc/kubernetes/manifests/keepalived.yaml")


# -- the bmctl side (runs in its own process, in the client namespace) ------------------------------
def bmctl_write(config_path: str) -> None:
    from bmctl.commands.cluster import access
    from bmctl.config import load_config
    from bmctl.host import Inventory
    from bmctl.phases.base import Context
    from bmctl.phases.controlplane_lb import ControlPlaneLB
    from bmctl.progress import Progress
    from bmctl.secrets import ClusterSecrets

    config = load_config(config_path)
    inventory = Inventory(config, access(config, False))  # the default concurrency, as a user gets
    ctx = Context(config=config, secrets=ClusterSecrets.redacted(), facts={}, dry_run=False,
                  inventory=inventory, progress=Progress(quiet=True))
    try:
        ControlPlaneLB.write_files(ctx)  # the phase's own fan-out, as `create cluster --force` runs it
    finally:
        inventory.close()
    changes = ctx.options["file_changes"]
    changed = sum(1 for statuses in changes.values() for c in statuses if c.status != "unchanged")
    print(json.dumps({"nodes": len(changes), "changed": changed}))


# -- the driver ---------------------------------------------------------------------------------------
def ensure_ansible() -> Path:
    playbook = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", f"ansible-core=={ANSIBLE_VERSION}"],
                       check=True)
    return playbook


def config_for(lab_config: Path, nodes: list[dict], out: Path) -> Path:
    docs = list(yaml.safe_load_all(lab_config.read_text()))
    docs[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"] = [{"address": n["address"]} for n in nodes]
    docs[2]["spec"]["loadBalancer"].pop("nodePoolSpec", None)
    docs[2]["spec"]["type"] = "standalone"
    docs = docs[:3]
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def ansible_project(lab, config_path: Path, folder: Path) -> Path:
    """Inventory, ansible.cfg, the playbook and the files it copies (rendered by bmctl)."""
    from bmctl.config import load_config
    from bmctl.render import assumed_facts, lb_node_files

    config = load_config(config_path)
    facts = assumed_facts(config)  # eth0, as on the lab's nodes
    lines = ["[nodes]"]
    for node in config.lb_nodes:
        for f in lb_node_files(config, node, facts[node.address]):
            dest = folder / "files" / node.address / f.path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f.content)
        lines.append(f"{node.address} ansible_host={node.address}")
    (folder / "inventory.ini").write_text("\n".join(lines) + "\n")
    modes = {f.path: oct(f.mode)[2:].rjust(4, "0") for f in lb_node_files(config, config.lb_nodes[0],
                                                                            facts[config.lb_nodes[0].address])}
    tasks = [{"name": f"write {path}", "ansible.builtin.copy": {
        "src": f"{folder}/files/{{{{ inventory_hostname }}}}{path}", "dest": path, "mode": modes[path],
        "owner": "root", "group": "root"}} for path in FILES]
    (folder / "playbook.yml").write_text(yaml.safe_dump(
        [{"hosts": "nodes", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    (folder / "cp").mkdir(exist_ok=True)
    (folder / "ansible.cfg").write_text(f"""[defaults]
forks = {len(config.lb_nodes)}
host_key_checking = True
gathering = explicit
interpreter_python = /usr/bin/python3
remote_user = root
private_key_file = {lab.state_dir / 'id_ed25519'}
retry_files_enabled = False
local_tmp = {folder / 'tmp'}

[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=300s -o UserKnownHostsFile={lab.state_dir / 'known_hosts'} -o IdentitiesOnly=yes
control_path_dir = {folder / 'cp'}
""")
    return folder


def node_path(lab, node: dict, path: str) -> Path:
    """A node's file as this machine sees it (the lab keeps each node's folders under its state)."""
    for base in ("/etc/kubernetes", "/etc/keepalived", "/etc/haproxy"):
        if path.startswith(base + "/"):
            return lab.state_dir / node["name"] / "fs" / base.strip("/").replace("/", "_") / path[len(base) + 1:]
    raise KeyError(path)


def clear_files(lab, nodes: list[dict]) -> None:
    """The state before a first run: none of the five files on any node."""
    for node in nodes:
        for path in FILES:
            node_path(lab, node, path).unlink(missing_ok=True)


def machine_cpu() -> float:
    """CPU seconds used so far by the whole machine (all processes, all cores): /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


CPU: list[float] = []  # machine CPU seconds of each timed run


def timed(argv: list[str], env: dict | None = None) -> tuple[float, str]:
    start, cpu = time.monotonic(), machine_cpu()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)
    took = time.monotonic() - start
    CPU.append(machine_cpu() - cpu)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:8])}... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    return took, proc.stdout


def measure(label: str, run, lab, nodes, reps: int) -> dict:
    first, again, cpu_first, cpu_again = [], [], [], []
    for _ in range(reps):
        clear_files(lab, nodes)
        first.append(run())
        cpu_first.append(CPU[-1])
        again.append(run())
        cpu_again.append(CPU[-1])
    out = {"first": first, "rerun": again, "first_median": statistics.median(first),
           "rerun_median": statistics.median(again), "machine_cpu_first_median": statistics.median(cpu_first),
           "machine_cpu_rerun_median": statistics.median(cpu_again)}
    print(f"{label:<24} first run median {out['first_median']:6.2f} s (max {max(first):.2f}, machine CPU "
          f"{out['machine_cpu_first_median']:.2f} s); no-change re-run median {out['rerun_median']:6.2f} s "
          f"(max {max(again):.2f}, machine CPU {out['machine_cpu_rerun_median']:.2f} s)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--profile", action="store_true", help="also profile bmctl at the largest size")
    parser.add_argument("--no-ansible", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bmctl.lab.lab import Lab

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: still take the lab down
    playbook = None if args.no_ansible else ensure_ansible()
    work = Path(tempfile.mkdtemp(prefix="bmctl-fanout-"))
    lab = Lab(work / "lab-state")
    results: dict = {"nodes": args.nodes, "reps": args.reps, "cores": os.cpu_count(),
                     "ansible_core": ANSIBLE_VERSION, "bmctl": {}, "ansible": {}}
    try:
        start = time.monotonic()
        state = lab.up(control_planes=args.nodes, lb_nodes=0, workers=0, host_address=False,
                       config_path=work / "lab.yaml", real_nodes=False)
        results["lab_up_seconds"] = round(time.monotonic() - start, 1)
        print(f"lab of {args.nodes} nodes up in {results['lab_up_seconds']} s", flush=True)
        client = ["ip", "netns", "exec", state["client_ns"]]
        for size in sorted(set(args.sizes + [args.nodes])):
            nodes = state["nodes"][:size]
            cfg = config_for(Path(state["config"]), nodes, work / f"fanout-{size}.yaml")
            argv = [*client, sys.executable, str(Path(__file__).resolve()), "bmctl-write", str(cfg)]

            def run_bmctl(argv=argv, size=size):
                took, out = timed(argv)
                assert json.loads(out.splitlines()[-1])["nodes"] == size
                return took
            results["bmctl"][size] = measure(f"bmctl, {size} node(s)", run_bmctl, lab, nodes, args.reps)
        if playbook is not None:
            nodes = state["nodes"][:args.nodes]
            cfg = work / f"fanout-{args.nodes}.yaml"
            project = ansible_project(lab, cfg, work / "ansible")
            env = {"ANSIBLE_CONFIG": str(project / "ansible.cfg")}
            argv = [*client, "env", *(f"{k}={v}" for k, v in env.items()), str(playbook),
                    "-i", str(project / "inventory.ini"), str(project / "playbook.yml")]
            results["ansible"][args.nodes] = measure(f"ansible, {args.nodes} node(s)", lambda: timed(argv)[0],
                                                     lab, nodes, args.reps)
            b, a = results["bmctl"][args.nodes], results["ansible"][args.nodes]
            results["speedup_first"] = round(a["first_median"] / b["first_median"], 1)
            results["speedup_rerun"] = round(a["rerun_median"] / b["rerun_median"], 1)
            print(f"bmctl is {results['speedup_first']}x faster on a first run and {results['speedup_rerun']}x "
                  f"on a no-change re-run at {args.nodes} nodes")
        if 10 in results["bmctl"] and args.nodes in results["bmctl"]:
            results["growth_10_to_max"] = round(results["bmctl"][args.nodes]["first_median"] /
                                                results["bmctl"][10]["first_median"], 2)
            print(f"bmctl first run, {args.nodes} vs 10 nodes: {results['growth_10_to_max']}x")
        if args.profile:
            cfg = work / f"fanout-{args.nodes}.yaml"
            clear_files(lab, state["nodes"][:args.nodes])
            out = ROOT / "benchmarks" / "results" / "fanout-profile.txt"
            subprocess.run([*client, sys.executable, "-m", "pyinstrument", "-o", str(out),
                            str(Path(__file__).resolve()), "bmctl-write", str(cfg)], check=True)
            print(f"profile of a first run at {args.nodes} nodes: {out}")
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)
    dest = ROOT / "benchmarks" / "results" / "fanout.json"
    dest.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {dest}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "bmctl-write":
        sys.path.insert(0, str(ROOT))
        bmctl_write(sys.argv[2])
    else:
        main()
