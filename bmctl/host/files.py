"""Idempotent, atomic file writes on a host.

One round trip reads the checksum and mode of every managed file; only files that differ are
written: content goes over stdin into a temp file in the same folder, is fsynced, given its mode
and owner, and renamed over the old one, whose previous version is kept under /var/backups/bmctl.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bmctl.host.ssh import Host
from bmctl.render.engine import RenderedFile

BACKUP_DIR = "/var/backups/bmctl"

# Prints "<sha256> <mode>" or "- -" for each path argument, in order. First removes temp files
# that an interrupted earlier run may have left next to them.
_STAT = r'''
for f; do
  rm -f -- "$(dirname -- "$f")"/.bmctl.??????
done
for f; do
  if [ -f "$f" ]; then
    printf '%s %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$(stat -c %a "$f")"
  else
    echo "- -"
  fi
done
'''

# $1 path, $2 mode (octal), $3 owner; content on stdin. Temp file in the same folder (a dot file,
# which the kubelet ignores in the manifests folder), fsync, then rename: readers see the old file
# or the new one, never a partial one.
_WRITE = r'''
set -eu
path=$1; mode=$2; owner=$3; backup=$4
dir=$(dirname -- "$path")
mkdir -p -- "$dir"
tmp=$(mktemp -- "$dir/.bmctl.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod -- "$mode" "$tmp"
chown -- "$owner" "$tmp"
sync -- "$tmp" 2>/dev/null || sync
if [ -f "$path" ]; then
  mkdir -p -- "$(dirname -- "$backup$path")"
  cp -p -- "$path" "$backup$path"
fi
mv -f -- "$tmp" "$path"
trap - EXIT
sync -- "$dir" 2>/dev/null || true
'''


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # "unchanged", "created" or "updated"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def remote_state(host: Host, paths: list[str]) -> list[tuple[str, str]]:
    if not paths:
        return []
    lines = host.run(["sh", "-c", _STAT, "sh", *paths], step="read managed files").stdout.splitlines()
    return [tuple(line.split(" ", 1)) for line in lines]  # type: ignore[misc]


def sync_files(host: Host, files: list[RenderedFile], owner: str = "root:root") -> list[FileChange]:
    """Make each file on the host hold exactly its content and mode, in the given order."""
    state = remote_state(host, [f.path for f in files])
    changes = []
    for f, (digest, mode) in zip(files, state):
        want_mode = format(f.mode, "o")
        if digest == sha256(f.content) and mode == want_mode:
            changes.append(FileChange(f.path, "unchanged"))
            continue
        host.run(["sh", "-c", _WRITE, "sh", f.path, want_mode, owner, BACKUP_DIR], stdin=f.content,
                 step=f"write {f.path}")
        changes.append(FileChange(f.path, "created" if digest == "-" else "updated"))
    return changes


def remove_files(host: Host, paths: list[str]) -> None:
    if paths:
        host.run(["rm", "-f", "--", *paths], step="remove files")
