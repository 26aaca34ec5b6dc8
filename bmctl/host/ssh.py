"""One SSH connection per host (paramiko), reused by every step; commands built from argv lists.

Host keys are verified against known_hosts: an unknown host is refused (its fingerprint shown)
unless the user accepts new keys explicitly; a changed key is always refused.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from bmctl.errors import BmctlError
from bmctl.runlog import log


class HostError(BmctlError):
    """A failure on one host: which host, which step, and the remote stderr."""

    def __init__(self, host: str, step: str, message: str, fix: str | None = None) -> None:
        super().__init__(f"{host}: {step}: {message}", fix)
        self.host = host
        self.step = step


class SudoPasswordError(HostError):
    """The login user may not sudo without a password on this host."""

    def __init__(self, host: str, step: str, user: str) -> None:
        super().__init__(host, step, f"{user} cannot sudo without a password",
                         f"give {user} passwordless sudo on the node (a sudoers line such as "
                         f"`{user} ALL=(ALL:ALL) NOPASSWD: ALL`), or log in as root (nodeAccess.loginUser).")


def fingerprint(key: paramiko.PKey) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, accept_new: bool, known_hosts: Path, lock: threading.Lock) -> None:
        self.accept_new = accept_new
        self.known_hosts = known_hosts
        self.lock = lock

    def missing_host_key(self, client, hostname, key):
        if not self.accept_new:
            raise HostError(hostname, "host key", f"unknown host key {key.get_name()} {fingerprint(key)} "
                            f"(not in {self.known_hosts})",
                            "check the fingerprint on the machine (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                            "then add it to known_hosts (ssh-keyscan) or re-run with --accept-new-host-keys.")
        with self.lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            entry = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(entry)
        log().info("accepted new host key %s %s", key.get_name(), fingerprint(key), extra={"host": hostname})


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


@dataclass
class AccessOptions:
    """How to reach the nodes; from the config header and the command line."""

    user: str = "root"
    key_path: str | None = None
    known_hosts: str | None = None
    accept_new_host_keys: bool = False
    ssh_config: str | None = "~/.ssh/config"
    connect_timeout: float = 10.0
    connect_attempts: int = 3
    retry_seconds: float = 60.0   # how long a lost connection is retried (backoff 0.5 s .. 8 s)
    stall_seconds: float = 30.0   # a command silent this long on a short step means a dead connection


_known_hosts_lock = threading.Lock()
_known_hosts_cache: dict[tuple[str, int, int], paramiko.HostKeys] = {}


def _known_hosts(path: Path) -> paramiko.HostKeys:
    """known_hosts parsed once per run (and again when it changes), not once per node: parsing
    builds a key object per line, which for a fleet's file costs more than the SSH handshake."""
    try:
        st = path.stat()
    except OSError:
        return paramiko.HostKeys()
    cache_key = (str(path), st.st_mtime_ns, st.st_size)
    with _known_hosts_lock:
        if cache_key not in _known_hosts_cache:
            _known_hosts_cache.clear()
            _known_hosts_cache[cache_key] = paramiko.HostKeys(str(path))
        return _known_hosts_cache[cache_key]


def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection for SSH, with Nagle's algorithm off: SSH sends small packets and waits
    for the answer, which Nagle + delayed ACKs would hold back ~40 ms each time (paramiko leaves
    it on; OpenSSH turns it off too)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Host:
    """A node reached over SSH. `run` takes an argv list; nothing is passed to a shell unquoted."""

    def __init__(self, address: str, access: AccessOptions) -> None:
        self.address = address
        self.access = access
        self.client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------
    def _ssh_config(self) -> dict:
        path = os.path.expanduser(self.access.ssh_config) if self.access.ssh_config else None
        if path and os.path.isfile(path):
            return paramiko.SSHConfig.from_path(path).lookup(self.address)
        return {}

    def connect(self) -> paramiko.SSHClient:
        with self._lock:
            if self.client is not None and self.client.get_transport() and self.client.get_transport().is_active():
                return self.client
            cfg = self._ssh_config()
            known = Path(os.path.expanduser(self.access.known_hosts or "~/.ssh/known_hosts"))
            hostname, port = cfg.get("hostname", self.address), int(cfg.get("port", 22))
            client = paramiko.SSHClient()
            name = hostname if port == 22 else f"[{hostname}]:{port}"  # as known_hosts (and paramiko) name it
            for keytype, key in (_known_hosts(known).lookup(name) or {}).items():
                client.get_host_keys().add(name, keytype, key)
            client.set_missing_host_key_policy(_Policy(self.access.accept_new_host_keys, known, _known_hosts_lock))
            keys = []
            if self.access.key_path and os.path.isfile(os.path.expanduser(self.access.key_path)):
                keys.append(os.path.expanduser(self.access.key_path))  # missing: the agent may hold it
            keys += [os.path.expanduser(k) for k in cfg.get("identityfile", []) if os.path.exists(os.path.expanduser(k))]
            proxy = paramiko.ProxyCommand(cfg["proxycommand"]) if "proxycommand" in cfg else None
            last: Exception | None = None
            for attempt in range(self.access.connect_attempts):
                try:
                    sock = proxy or _tcp(hostname, port, self.access.connect_timeout)
                    client.connect(hostname, port=port,
                                   username=self.access.user, key_filename=keys or None, allow_agent=True,
                                   look_for_keys=False, timeout=self.access.connect_timeout,
                                   banner_timeout=self.access.connect_timeout,
                                   auth_timeout=self.access.connect_timeout, sock=sock)
                    break
                except HostError:
                    raise
                except paramiko.BadHostKeyException as exc:
                    raise HostError(self.address, "host key",
                                    f"the host key CHANGED: known_hosts has {fingerprint(exc.expected_key)}, the "
                                    f"host offers {fingerprint(exc.key)}; refusing to connect",
                                    f"if the machine was reinstalled, remove its old line from {known} "
                                    f"(ssh-keygen -R {self.address}) and verify the new key.") from None
                except paramiko.AuthenticationException as exc:
                    raise HostError(self.address, "ssh login", f"authentication failed for user "
                                    f"{self.access.user!r} ({exc})",
                                    "check sshPrivateKeyPath (or your SSH agent) and spec.nodeAccess.loginUser.") from None
                except (OSError, socket.timeout, paramiko.SSHException) as exc:
                    if isinstance(exc, paramiko.SSHException) and "authentication methods" in str(exc):
                        raise HostError(self.address, "ssh login", f"no key to log in as {self.access.user!r}: "
                                        f"{exc}", "set sshPrivateKeyPath to a readable private key, or load the "
                                        "key into your SSH agent.") from None
                    last = exc
                    client.close()
                    if attempt + 1 < self.access.connect_attempts:
                        log().warning("connect failed (%s); retrying in %d s", exc or type(exc).__name__,
                                      min(2 ** attempt, 4), extra={"host": self.address})
                        time.sleep(min(2 ** attempt, 4))
            else:
                raise HostError(self.address, "ssh connect", f"cannot connect after "
                                f"{self.access.connect_attempts} attempts: {last}",
                                "check that the node is up and that sshd listens on its address.")
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(10)
            self.client = client
            log().debug("connected as %s", self.access.user, extra={"host": self.address})
            return client

    def close(self) -> None:
        with self._lock:
            if self.client is not None:
                self.client.close()
                self.client = None

    # -- commands ---------------------------------------------------------------------------
    def command_line(self, argv: list[str], sudo: bool = True) -> str:
        cmd = shlex.join(argv)
        if sudo and self.access.user != "root":
            cmd = "sudo -n -- " + cmd
        return cmd

    def _exec(self, cmd: str, stdin, timeout: float, silence: float, sink=None) -> tuple[int, str, str]:
        """One attempt: blocking reads (no polling), stdout to EOF, then stderr, then the exit status.
        A read that waits longer than `silence` means the connection is dead. `sink`: a binary file
        that takes stdout instead (emptied first, so that a retried attempt starts it again)."""
        client = self.connect()
        log().debug("run %s", cmd, extra={"host": self.address})
        transport = client.get_transport()
        if transport is None:
            raise paramiko.SSHException("transport closed")
        chan = transport.open_session(timeout=self.access.connect_timeout)
        try:
            chan.settimeout(silence)
            chan.exec_command(cmd)
            if hasattr(stdin, "read"):  # a file: streamed in chunks, never held in memory whole
                stdin.seek(0)
                while chunk := stdin.read(1 << 20):
                    chan.sendall(chunk)
            elif stdin is not None:
                chan.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
            chan.shutdown_write()
            end = time.monotonic() + timeout
            out = bytearray()
            if sink is not None:
                sink.seek(0)
                sink.truncate()
            while chunk := chan.recv(65536):
                if sink is not None:
                    sink.write(chunk)
                else:
                    out += chunk
                if time.monotonic() > end:
                    raise socket.timeout(f"no end after {timeout:.0f} s")
            err = bytearray()
            while chunk := chan.recv_stderr(65536):
                err += chunk
            if not chan.status_event.wait(max(0.1, end - time.monotonic())):
                raise socket.timeout(f"no exit status after {timeout:.0f} s")
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def run(self, argv: list[str], *, step: str = "", sudo: bool = True, stdin=None,
            check: bool = True, timeout: float | None = None, retry: bool = True, secret_output: bool = False,
            stdout_to=None) -> Result:
        """Run argv on the host; raise HostError (host, step, stderr) when check and rc != 0.

        `timeout`: for a command that may stay silent a while (kubeadm, arping); without it the
        command is a quick one, and silence for `access.stall_seconds` means the connection is dead.
        A lost or dead connection is reopened with backoff and the command run again, for at most
        `access.retry_seconds`; pass retry=False for a command that must not run twice, and
        secret_output=True when stdout holds a secret (it is then not logged). `stdin`: text, bytes, or
        a seekable binary file (streamed; sent again from its start when the command is retried).
        `stdout_to`: a seekable binary file that receives stdout as it comes (a download never held in
        memory; Result.stdout is then empty)."""
        cmd = self.command_line(argv, sudo)
        step = step or argv[0]
        deadline = time.monotonic() + self.access.retry_seconds
        delay = 0.5
        while True:
            try:
                rc, out, err = self._exec(cmd, stdin, timeout or 120.0, timeout or self.access.stall_seconds,
                                          stdout_to)
                break
            except (OSError, EOFError, socket.timeout, paramiko.SSHException, HostError) as exc:
                self.close()
                if isinstance(exc, HostError) and exc.step != "ssh connect":
                    raise
                why = exc.message if isinstance(exc, HostError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
                if not retry or time.monotonic() + delay > deadline:
                    raise HostError(self.address, step, f"connection lost ({why})" +
                                    (f"; retried for {self.access.retry_seconds:g} s" if retry else ""),
                                    "re-run the command when the node is reachable; every step is idempotent "
                                    "and files are replaced atomically, so nothing is left half-written.") from None
                log().warning("%s: connection lost (%s); retrying in %.1f s", step, why, delay,
                              extra={"host": self.address})
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        result = Result(rc, out, err)
        log().debug("rc=%d stdout=%r stderr=%r", rc,
                    f"<{len(result.stdout)} bytes, secret: not logged>" if secret_output else result.stdout[-2000:],
                    result.stderr[-2000:], extra={"host": self.address})
        if check and rc != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[-1500:]
            raise self.failure(result, step, f"`{cmd}` exited {rc}: {detail}")
        return result

    def failure(self, result: Result, step: str, message: str, fix: str | None = None) -> HostError:
        """The error for a command that failed: SudoPasswordError when sudo refused to run it."""
        if self.access.user != "root" and result.stderr.startswith("sudo:") and "password" in result.stderr:
            return SudoPasswordError(self.address, step, self.access.user)
        return HostError(self.address, step, message, fix)
