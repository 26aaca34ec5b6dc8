"""How long `bmctl check config` takes on configs with huge pools (10.0.0.0/8, IPv6 /64s).

Run:  python benchmarks/check_config_speed.py [--repeat 20]
Prints the median and max wall time of parse+validate (in-process) and of the whole
`bmctl check config` command (a fresh Python process each time).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import base_docs  # noqa: E402

from bmctl.config import parse_config  # noqa: E402


def huge_docs(pools: int):
    docs = base_docs()
    spec = docs[2]["spec"]
    spec["clusterNetwork"] = {"pods": {"cidrBlocks": ["172.16.0.0/16"]}, "services": {"cidrBlocks": ["172.17.0.0/20"]}}
    spec["loadBalancer"]["addressPools"] = [
        {"name": "ten", "addresses": ["10.0.0.0/8"], "avoidBuggyIPs": True},
        *({"name": f"v6-{i}", "addresses": [f"2001:db8:{i:x}::/64"]} for i in range(pools)),
        {"name": "doc", "addresses": ["192.0.2.100-192.0.2.150"]},
    ]
    return docs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--v6-pools", type=int, default=100)
    args = ap.parse_args()
    text = yaml.safe_dump_all(huge_docs(args.v6_pools), sort_keys=False)
    inproc = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        parse_config(text, "huge.yaml")
        inproc.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.yaml"
        path.write_text(text)
        whole = []
        for _ in range(max(3, args.repeat // 4)):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "bmctl", "check", "config", "-c", str(path)],
                                  capture_output=True, text=True)
            whole.append(time.perf_counter() - start)
            assert proc.returncode == 0, proc.stderr
    print(f"pools: 10.0.0.0/8 (avoidBuggyIPs) + {args.v6_pools} IPv6 /64 + 1 small")
    print(f"parse+validate in-process: median {statistics.median(inproc) * 1000:.1f} ms, max {max(inproc) * 1000:.1f} ms"
          f" ({args.repeat} runs)")
    print(f"`bmctl check config` command: median {statistics.median(whole) * 1000:.0f} ms, max {max(whole) * 1000:.0f} ms"
          f" ({len(whole)} runs, includes Python start-up and imports)")


if __name__ == "__main__":
    main()
