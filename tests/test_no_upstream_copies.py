"""No upstream manifest is copied into this repository: facts from elsewhere carry over (a version, a
path, a sha256 in bmctl/release/v1.34.2.yaml), text does not. bmctl gets upstream's files when it
runs (bmctl/release/upstream.py); this test fails when any file of the repository holds a substantial
part of one of them.

What is compared: every file the release pins (`manifests:`, read through bmctl/release/upstream.py,
so a newly pinned manifest is covered without listing it here) against every text file git tracks or
would track (untracked files that .gitignore does not exclude; binary files, with a NUL byte, are
skipped). Lines are compared stripped of surrounding whitespace and blank lines are dropped on both
sides, so re-indenting a copy or spacing it out does not hide it. A repository file is a copy of an
upstream file when either holds:

- RUN: 30 consecutive lines of the upstream file appear consecutively in it (a pasted block), unless
  every one of them is also in another upstream project's pinned files (the schema of Kubernetes'
  Condition, say, which controller-gen writes alike into MetalLB's CRDs and Gateway API's);
- SHARE: it has 40% of the upstream file's distinctive lines, in any order (an edited copy: a template
  with placeholders, reordered objects). A line is distinctive when, stripped, it has at least 12
  characters, a letter or digit, is not a bare YAML key (`properties:`, `description: |-`), and appears
  in the pinned files of one upstream project only (one Go module): a line two unrelated projects both
  have (`kind: ServiceAccount`, `apiVersion: rbac.authorization.k8s.io/v1`, `fieldPath:
  metadata.name`) is Kubernetes vocabulary any manifest of bmctl's may use.
  Measured when this was written: bmctl's own files had at most 7% of a pinned file's distinctive
  lines (templates/ingress/traefik.yaml.j2 of flannel's), the copies this test replaced 80% to 100%.

Fast: each upstream file's windows of 30 lines are a set, indexed by their first line, and each
repository file is read once.
"""
from __future__ import annotations

import functools
import random
import re
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bmctl import release as releases
from conftest import REPO, pinned_texts, require

RUN = 30
SHARE = 0.40
MIN_LENGTH = 12
_BARE_KEY = re.compile(r"^[-\s]*[^\s:]+:\s*[|>+-]*$")


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Pinned:
    label: str                              # manifest name, module@version/path
    lines: tuple[str, ...]
    runs: dict[str, frozenset[tuple[str, ...]]]  # first line -> every window of RUN lines it starts
    distinctive: frozenset[str]


@functools.lru_cache(maxsize=1)
def pinned() -> tuple[Pinned, ...]:
    """Every file bmctl's release pins, as bmctl reads it, prepared for the comparison."""
    found = []
    for manifest in releases.default().all_manifests():
        for file, text in zip(manifest.files, pinned_texts(manifest.name), strict=True):
            found.append((manifest, file, tuple(lines(text))))
    modules: dict[str, set[str]] = defaultdict(set)
    for manifest, _, upstream in found:
        for line in upstream:
            modules[line].add(manifest.module)
    out = []
    for manifest, file, upstream in found:
        runs: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        for i in range(len(upstream) - RUN + 1):
            window = upstream[i:i + RUN]
            if any(len(modules[line]) == 1 for line in window):  # else generated text two projects share
                runs[upstream[i]].add(window)
        distinctive = frozenset(line for line in upstream if len(line) >= MIN_LENGTH and re.search(r"[A-Za-z0-9]", line)
                                and not _BARE_KEY.match(line) and len(modules[line]) == 1)
        out.append(Pinned(f"{manifest.name} {manifest.where(file)}", upstream,
                          {k: frozenset(v) for k, v in runs.items()}, distinctive))
    return tuple(out)


def copies(text: str, upstream_files: tuple[Pinned, ...]) -> list[str]:
    """Why `text` is a copy of one of the upstream files ([] when it is none)."""
    ours = lines(text)
    have = set(ours)
    found = []
    for up in upstream_files:
        for i in range(len(ours) - RUN + 1):
            windows = up.runs.get(ours[i])
            if windows and tuple(ours[i:i + RUN]) in windows:
                found.append(f"RUN: {RUN} consecutive lines of {up.label} from its line {ours[i]!r} on")
                break
        share = len(up.distinctive & have) / len(up.distinctive) if up.distinctive else 0.0
        if share >= SHARE:
            found.append(f"SHARE: {share:.0%} of the distinctive lines of {up.label}")
    return found


def repository_files() -> list[Path]:
    """Every text file git tracks, or would track (not ignored), that exists in the work tree."""
    try:
        proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                              capture_output=True, timeout=60)
    except FileNotFoundError:
        proc = None
    require(proc is not None and proc.returncode == 0, "git and the repository's .git (to list its files)")
    out = []
    for name in sorted(set(proc.stdout.decode().split("\0")) - {""}):
        path = REPO / name
        if path.is_file() and not path.is_symlink():
            out.append(path)
    return out


def test_no_repository_file_holds_an_upstream_manifest():
    start = time.monotonic()
    upstream_files = pinned()
    assert {p.label.split()[0] for p in upstream_files} == set(releases.MANIFESTS)
    found = {}
    scanned = 0
    for path in repository_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        scanned += 1
        reasons = copies(data.decode(errors="replace"), upstream_files)
        if reasons:
            found[str(path.relative_to(REPO))] = reasons
    assert scanned > 100, scanned
    assert found == {}, ("upstream text in the repository: pin the file in the release (module, version, path, "
                         "sha256) and read it through bmctl/release/upstream.py instead")
    assert time.monotonic() - start < 30


def _one(name: str, path_part: str = "") -> Pinned:
    return next(p for p in pinned() if p.label.startswith(f"{name} ") and path_part in p.label)


def test_thirty_consecutive_lines_are_a_copy(tmp_path):
    """A pasted block: 30 lines from the middle of Gateway API's largest CRD, re-indented and spaced
    out by blank lines, among our own lines, is found; 29 are not."""
    httproutes = _one("gateway-api", "httproutes")
    block = httproutes.lines[3000:3000 + RUN]
    copy = tmp_path / "pasted.yaml"
    copy.write_text("# ours\nkind: Something\n" + "\n\n".join("    " + line for line in block) + "\nmore: ours\n")
    reasons = copies(copy.read_text(), (httproutes,))
    assert [r.split(":")[0] for r in reasons] == ["RUN"] and "config/crd/standard/" in reasons[0]
    assert copies("\n".join(block[:RUN - 1]), (httproutes,)) == []


def test_a_whole_copy_of_any_pinned_file_is_found():
    """Every pinned file, the smallest too (Gateway API's 51-line policy), is protected by both rules."""
    for up in pinned():
        assert [r.split(":")[0] for r in copies("\n".join(up.lines), (up,))] == ["RUN", "SHARE"], up.label


def test_an_edited_or_reordered_copy_is_a_copy():
    """No 30 lines in a row, but 40% of MetalLB's distinctive lines in any order (a template made from
    upstream's file, with placeholders and objects moved around) is a copy; 30% is not."""
    native = _one("metallb-native")
    picked = sorted(native.distinctive)
    random.Random(7).shuffle(picked)

    def edited(share: float) -> str:
        taken = picked[:int(len(picked) * share) + 1]
        return "\n".join(f"{line}\nplaceholder: '{{{{ value_{i} }}}}'" for i, line in enumerate(taken))

    assert [r.split(":")[0] for r in copies(edited(0.45), (native,))] == ["SHARE"]
    assert copies(edited(0.30), (native,)) == []


def test_kubernetes_vocabulary_is_not_distinctive():
    """Lines two upstream projects share, bare keys and short lines are not counted, so bmctl's own
    manifests (a DaemonSet, RBAC, a ServiceAccount) are not copies of anyone's."""
    flannel = _one("flannel")
    for line in ("kind: ServiceAccount", "apiVersion: rbac.authorization.k8s.io/v1", "fieldPath: metadata.name",
                 "properties:", "hostNetwork: true"):
        assert line not in flannel.distinctive
    assert "image: ghcr.io/flannel-io/flannel:v0.27.4" in flannel.distinctive
