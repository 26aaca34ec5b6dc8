"""Idempotent, atomic file writes on a host, in two round trips at most.

1. One command reads the checksum and mode of every managed file (and removes temp files an
   interrupted earlier run left next to them).
2. Only if some file differs, one command writes all of them: a tar stream on stdin unpacks each
   into a temp file in its own folder (a dot file, which the kubelet ignores in the manifests
   folder) with its mode and owner; the temp files are fsynced, the old versions copied to
   /var/backups/bmctl, and each temp file renamed over its target, so readers see the old file or
   the new one, never a partial one. A failure removes the temp files it made.

A no-change re-run is one command per host; a first run two, however many files there are.
"""
from __future__ import annotations

import hashlib
import io
import posixpath
import secrets
import tarfile
from dataclasses import dataclass

from bmctl.host.ssh import Host
from bmctl.render.engine import RenderedFile

BACKUP_DIR = "/var/backups/bmctl"
TEMP_PREFIX = ".bmctl."  # + 6 characters; the read step removes leftovers matching .bmctl.??????

# Arguments: the managed paths. Removes leftover temp files in their folders, then prints
# "<sha256>  <path>" (sha256sum) and "mode <octal> <path>" lines for those that exist: two
# processes, whatever the number of files.
STAT_SCRIPT = r'''
for f; do
  for t in "${f%/*}"/.bmctl.??????; do [ -f "$t" ] && rm -f -- "$t"; done
done
IFS='
'
set -f
have=
for f; do [ -f "$f" ] && have="$have$f
"; done
if [ -n "$have" ]; then sha256sum -- $have; stat -c 'mode %a %n' -- $have; fi
'''

# Arguments: the backup folder, then (temp file, target) pairs; the tar stream on stdin holds the
# temp files. Every temp file is fsynced before any target changes.
_WRITE = r'''
set -eu
backup=$1; shift
temps=; targets=; old=; dirs=
while [ $# -ge 2 ]; do
  temps="$temps$1
"; targets="$targets$2
"; dirs="$dirs${2%/*}
"
  [ -f "$2" ] && old="$old$2
"
  shift 2
done
IFS='
'
set -f
trap 'rm -f -- $temps' EXIT
tar -x -p -m --same-owner -f - -C /
sync -- $temps 2>/dev/null || sync
for f in $old; do
  mkdir -p -- "$backup${f%/*}"
  cp -p -- "$f" "$backup$f"
done
set -- $targets
for t in $temps; do
  mv -f -- "$t" "$1"
  shift
done
trap - EXIT
sync -- $dirs 2>/dev/null || true
'''


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # "unchanged", "created" or "updated"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_paths(paths: list[str]) -> None:
    for p in paths:
        if not p.startswith("/") or "\n" in p or "\\" in p:
            raise ValueError(f"not a managed file path: {p!r}")


FileState = list[tuple[str, str]]  # (sha256, octal mode) per path; ("-", "-") for a missing file


def parse_state(out: str, paths: list[str]) -> FileState:
    """What STAT_SCRIPT printed, in the order of `paths`."""
    sha: dict[str, str] = {}
    mode: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("mode "):
            _, value, path = line.split(" ", 2)
            mode[path] = value
        elif len(line) > 66 and line[64:66] in ("  ", " *"):  # sha256sum: "<digest>  <path>"
            sha[line[66:]] = line[:64]
    return [(sha.get(p, "-"), mode.get(p, "-")) for p in paths]


def remote_state(host: Host, paths: list[str]) -> FileState:
    """(sha256, octal mode) of each path; one command."""
    if not paths:
        return []
    check_paths(paths)
    return parse_state(host.run(["sh", "-c", STAT_SCRIPT, "sh", *paths], step="read managed files").stdout, paths)


def _tar(files: list[tuple[str, RenderedFile]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for temp, f in files:
            data = f.content.encode()
            info = tarfile.TarInfo(temp.lstrip("/"))
            info.size, info.mode = len(data), f.mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_files(host: Host, files: list[RenderedFile]) -> None:
    """Write every file (owner root, its mode) atomically; one command."""
    if not files:
        return
    check_paths([f.path for f in files])
    pairs = [(posixpath.join(posixpath.dirname(f.path), TEMP_PREFIX + secrets.token_hex(3)), f) for f in files]
    argv = ["sh", "-c", _WRITE, "sh", BACKUP_DIR]
    for temp, f in pairs:
        argv += [temp, f.path]
    host.run(argv, stdin=_tar(pairs), step="write " + ", ".join(f.path for f in files))


def sync_files(host: Host, files: list[RenderedFile], state: FileState | None = None) -> list[FileChange]:
    """Make each file on the host hold exactly its content and mode (owner root). `state`: the
    files' state when the caller has just read it (with the node's facts, in one command)."""
    if state is None:
        state = remote_state(host, [f.path for f in files])
    changes, todo = [], []
    for f, (digest, mode) in zip(files, state):
        if digest == sha256(f.content) and mode == format(f.mode, "o"):
            changes.append(FileChange(f.path, "unchanged"))
        else:
            todo.append(f)
            changes.append(FileChange(f.path, "created" if digest == "-" else "updated"))
    write_files(host, todo)
    return changes


def remove_files(host: Host, paths: list[str]) -> None:
    if paths:
        host.run(["rm", "-f", "--", *paths], step="remove files")
