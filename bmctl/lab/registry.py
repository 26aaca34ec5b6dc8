"""The lab's OCI registry: `crane registry serve` inside a network namespace (the lab loads its
images into it with `bmctl push images`: bmctl/lab/release.py publish).

It serves plain HTTP on IP:5000 of that namespace; blobs live in a folder on disk (`--disk`), so a
restarted registry still has them and a push of unchanged images only sends manifests. Manifests and
tags are kept in memory: after a restart, push again (publish in bmctl/lab/release.py does).
Every process here is started and stopped by pid.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from bmctl.lab import binaries

PORT = 5000


def crane() -> str:
    path = binaries.binary("crane")
    if not path.exists():
        binaries.ensure(["crane"])
    return str(path)


def _in(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def answers(netns: str, address: str) -> bool:
    """Whether a registry answers at `address` (IP:PORT) from inside `netns`."""
    proc = subprocess.run(_in(netns, crane(), "catalog", "--insecure", address), capture_output=True, timeout=10)
    return proc.returncode == 0


def start(netns: str, ip: str, disk_dir: Path, port: int = PORT, log: Path | None = None,
          timeout: float = 15) -> int:
    """Start the registry on ip:port inside `netns`, blobs in `disk_dir`; wait until it answers; its pid.

    Its output goes to `log` (default: `disk_dir` + ".log"). It outlives this process: stop it with stop().
    """
    disk_dir = Path(disk_dir)
    disk_dir.mkdir(parents=True, exist_ok=True)
    log = Path(log or f"{disk_dir}.log")
    address = f"{ip}:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(_in(netns, crane(), "registry", "serve", "--address", address, "--disk", str(disk_dir)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if not alive(proc.pid):
            proc.wait()
            raise RuntimeError(f"the registry on {address} (netns {netns}) exited: {log.read_text()[-2000:]}")
        if answers(netns, address):
            return proc.pid
        if time.monotonic() > deadline:
            stop(proc.pid)
            raise RuntimeError(f"the registry on {address} (netns {netns}) did not answer within {timeout:.0f}s")
        time.sleep(0.1)


def stop(pid: int, timeout: float = 5) -> None:
    """Stop the registry started as `pid` (SIGTERM, then SIGKILL); a pid that is no registry is left alone."""
    stop_pid(pid, lambda cmdline: b"registry\0serve\0" in cmdline, timeout)


def stop_pid(pid: int, is_ours, timeout: float = 5) -> None:
    """SIGTERM `pid`, then SIGKILL, when `is_ours(its /proc cmdline)`; reap it when it is our child."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return
    if not is_ours(cmdline):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive(pid):
            break
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
    except ChildProcessError:
        pass
