"""A registry with TLS and authentication, as private registries are: the CNCF Distribution registry
(bmctl/lab/binaries.py builds it, binary `registry`), for testing bmctl's registry client
(bmctl/release/oci.py) where crane's `registry serve` (plain HTTP, no auth) does not reach.

start() writes into a folder of its own: a CA and a server certificate for the registry's IP
(bmctl/lab/pki.py), an htpasswd file (bcrypt) with the given users (or, instead, Bearer token auth
from a token service the caller runs), the registry's config.yml (distribution v3's format) and its
storage; it starts the registry on IP:PORT (inside a network
namespace, or on this host) and waits until it listens. stop() ends it by pid.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import yaml

from bmctl.lab import binaries, pki, registry

REALM = "bmctl-lab-registry"
BCRYPT_COST = 4  # the registry checks the hash on every request: the lowest cost keeps tests fast


@dataclass
class TlsRegistry:
    pid: int
    address: str  # IP:PORT
    cacert: Path  # the CA that signed its certificate
    folder: Path
    log: Path


def registry_binary() -> Path:
    """The registry binary, built (once) when missing."""
    path = binaries.binary("registry")
    if not path.exists():
        binaries.ensure(["distribution"])
    return path


def htpasswd(users: dict[str, str]) -> str:
    """An htpasswd file's content (bcrypt, which is all the registry accepts)."""
    return "".join(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()}\n"
                   for user, password in users.items())


def write_config(folder: Path, ip: str, port: int, users: dict[str, str] | None, tls: bool = True,
                 token: dict | None = None) -> Path:
    """CA, server certificate, htpasswd and config.yml in `folder`; the config's path. `token`
    (realm, service, issuer, rootcertbundle) switches auth to Bearer tokens from that realm."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"{ip}:{port}", "secret": secrets.token_hex(16)},
    }
    if tls:
        pki_dir = folder / "pki"
        pki_dir.mkdir(exist_ok=True)
        if not (pki_dir / "ca.crt").exists():
            pki.make_ca(pki_dir, cn="bmctl lab registry CA")
        pki.issue(pki_dir, "registry", cn=ip, server_names=[ip, "localhost"], client=False, server=True)
        config["http"]["tls"] = {"certificate": str(pki_dir / "registry.crt"), "key": str(pki_dir / "registry.key")}
    if token:
        config["auth"] = {"token": dict(token)}
    elif users:
        (folder / "htpasswd").write_text(htpasswd(users))
        config["auth"] = {"htpasswd": {"realm": REALM, "path": str(folder / "htpasswd")}}
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(folder: Path, ip: str = "127.0.0.1", port: int = 5443, netns: str | None = None,
          users: dict[str, str] | None = None, tls: bool = True, token: dict | None = None,
          timeout: float = 15) -> TlsRegistry:
    """Start the registry on ip:port (inside `netns`, or on this host), with TLS and htpasswd auth
    for `users` (user -> password; None: anonymous), or Bearer token auth (`token`: see write_config);
    wait until it listens. Stop it with stop(pid)."""
    folder = Path(folder)
    config = write_config(folder, ip, port, users, tls, token)
    log = folder / "registry.log"
    argv = [str(registry_binary()), "serve", str(config)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    seen = log.stat().st_size if log.exists() else 0  # an earlier run's lines do not count
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
    started = TlsRegistry(proc.pid, f"{ip}:{port}", folder / "pki" / "ca.crt", folder, log)
    deadline = time.monotonic() + timeout
    while True:
        if not registry.alive(proc.pid):
            proc.wait()
            raise RuntimeError(f"the TLS registry on {ip}:{port} exited: {log.read_text()[-2000:]}")
        # The registry logs "listening on IP:PORT" once its socket is bound: connections queue from then on.
        if b"listening on" in log.read_bytes()[seen:]:
            return started
        if time.monotonic() > deadline:
            stop(proc.pid)
            raise RuntimeError(f"the TLS registry on {ip}:{port} did not listen within {timeout:.0f}s: "
                               f"{log.read_text()[-2000:]}")
        time.sleep(0.05)


def stop(pid: int, timeout: float = 5) -> None:
    """Stop the registry started as `pid` (SIGTERM, then SIGKILL); a pid that is no registry is left alone."""
    registry.stop_pid(pid, lambda cmdline: b"\0serve\0" in cmdline and b"registry" in cmdline, timeout)