"""Cluster secrets: generated with `secrets`, stored 0600 in the workspace, never logged."""
from __future__ import annotations

import base64
import os
import secrets
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

_TOKEN_CHARS = string.ascii_lowercase + string.digits
REDACTED = "<redacted>"


@dataclass(frozen=True)
class ClusterSecrets:
    memberlist_key: str    # MetalLB memberlist key (base64 of 128 random bytes)
    bootstrap_token: str   # kubeadm bootstrap token, [a-z0-9]{6}.[a-z0-9]{16}
    certificate_key: str   # kubeadm certificate key (32 bytes, hex)

    @classmethod
    def generate(cls) -> "ClusterSecrets":
        def pick(n: int) -> str:
            return "".join(secrets.choice(_TOKEN_CHARS) for _ in range(n))

        return cls(
            memberlist_key=base64.b64encode(secrets.token_bytes(128)).decode(),
            bootstrap_token=f"{pick(6)}.{pick(16)}",
            certificate_key=secrets.token_hex(32),
        )

    @classmethod
    def redacted(cls) -> "ClusterSecrets":
        """Placeholders for dry runs: the real values never leave the workspace's 0600 file."""
        return cls(memberlist_key=REDACTED, bootstrap_token=REDACTED, certificate_key=REDACTED)

    def values(self) -> list[str]:
        return [v for v in asdict(self).values() if v != REDACTED]


def load_or_create(path: Path) -> ClusterSecrets:
    """The cluster's secrets, generated once; later runs reuse them so re-runs converge."""
    if path.exists():
        data = yaml.safe_load(path.read_text())
        return ClusterSecrets(**data)
    value = ClusterSecrets.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(asdict(value), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return value
