"""One bmctl at a time per cluster: a lock file on the first control-plane node, with its owner and a
heartbeat the holder refreshes; a lock whose heartbeat is older than STALE_SECONDS is taken over
(its holder was killed or lost its network)."""
from __future__ import annotations

import getpass
import os
import secrets
import socket
import threading
import time

from bmctl.errors import BmctlError
from bmctl.host.ssh import Host, HostError
from bmctl.runlog import log

LOCK_FILE = "/var/lib/bmctl/lock"
HEARTBEAT_SECONDS = 10
STALE_SECONDS = 60

# $1 lock file, $2 our token, $3 stale seconds, $4 mode (take|beat|release), $5 the token of a holder
# known to be dead (or "-"); stdin: our fields.
# Exit 3 with the holder's fields on stdout when someone else holds a fresh lock.
_LOCK_SH = r'''
set -eu
f=$1; token=$2; stale=$3; mode=$4; dead=${5:--}
mkdir -p "$(dirname "$f")"
exec 9>>"$f.flock"
flock -w 10 9
now=$(date +%s)
if [ -s "$f" ]; then
  held=$(sed -n 's/^token=//p' "$f")
  beat=$(sed -n 's/^heartbeat=//p' "$f")
  if [ "$held" != "$token" ]; then
    if [ "$mode" != take ]; then cat "$f"; exit 4; fi
    if [ "$held" != "$dead" ] && [ $((now - ${beat:-0})) -lt "$stale" ]; then
      echo "age=$((now - ${beat:-0}))"; cat "$f"; exit 3
    fi
    echo "took-over-stale age=$((now - ${beat:-0}))"; cat "$f"
  fi
elif [ "$mode" = beat ]; then
  exit 4
fi
if [ "$mode" = release ]; then rm -f "$f"; exit 0; fi
umask 077
{ echo "token=$token"; cat; echo "heartbeat=$now"; } > "$f.tmp"
mv "$f.tmp" "$f"
'''


def _fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _dead_here(held: dict[str, str]) -> bool:
    """The holder ran on this machine and its process is gone (killed): no need to wait for staleness."""
    owner = held.get("owner", "")
    host, _, pid = owner.partition("@")[2].partition(" pid ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ClusterLock:
    def __init__(self, host: Host, command: str) -> None:
        self.host = host
        self.token = secrets.token_hex(8)
        self.info = (f"owner={getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}\n"
                     f"command={command}\nstarted={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.lost: str | None = None

    def _run(self, mode: str, dead: str = "-"):
        return self.host.run(["sh", "-c", _LOCK_SH, "sh", LOCK_FILE, self.token, str(STALE_SECONDS), mode, dead],
                             stdin=self.info, step="cluster lock", check=False)

    def acquire(self) -> str | None:
        """Take the lock; a note when a stale lock was taken over. Refuses when another run holds it."""
        res = self._run("take")
        if res.rc == 3 and _dead_here(_fields(res.stdout)):
            res = self._run("take", _fields(res.stdout).get("token", "-"))
        if res.rc == 3:
            held = _fields(res.stdout)
            raise BmctlError(
                f"another bmctl run holds the lock of this cluster on {self.host.address}: "
                f"{held.get('command', '?')} by {held.get('owner', '?')}, started {held.get('started', '?')}, "
                f"last heartbeat {held.get('age', '?')} s ago.",
                f"wait for it to finish. If that run is gone, its lock is taken over automatically once its "
                f"heartbeat is {STALE_SECONDS} s old (or remove {LOCK_FILE} on {self.host.address}).")
        if res.rc != 0:
            raise self.host.failure(res, "cluster lock", res.stderr.strip() or f"exit {res.rc}",
                                    "check that /var/lib/bmctl is writable and flock (util-linux) is installed.")
        self.thread = threading.Thread(target=self._beat, name="bmctl-lock-heartbeat", daemon=True)
        self.thread.start()
        if res.stdout.startswith("took-over-stale"):
            held = _fields(res.stdout)
            return (f"took over the lock of {held.get('command', '?')} by {held.get('owner', '?')} "
                    f"(gone, or no heartbeat for {res.stdout.split()[1].split('=')[1]} s)")
        return None

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                res = self._run("beat")
            except HostError as exc:
                log().warning("lock heartbeat failed: %s", exc.message, extra={"host": self.host.address})
                continue
            if res.rc == 4:
                self.lost = _fields(res.stdout).get("owner", "another run")
                log().error("the cluster lock was taken over by %s", self.lost, extra={"host": self.host.address})
                return

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if self.lost is None:
            try:
                self._run("release")
            except HostError as exc:  # the lock goes stale and is taken over by the next run
                log().warning("could not release the cluster lock: %s", exc.message)
