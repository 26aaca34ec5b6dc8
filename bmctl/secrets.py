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
    # The bundled ingress's self-signed certificate (PEM), served on port 443 when the config names no
    # TLS Secret, and its private key. Generated once; workspaces older than the ingress get them added.
    ingress_tls_cert: str = ""
    ingress_tls_key: str = ""

    @classmethod
    def generate(cls) -> "ClusterSecrets":
        def pick(n: int) -> str:
            return "".join(secrets.choice(_TOKEN_CHARS) for _ in range(n))

        return cls(
            memberlist_key=base64.b64encode(secrets.token_bytes(128)).decode(),
            bootstrap_token=f"{pick(6)}.{pick(16)}",
            certificate_key=secrets.token_hex(32),
            **dict(zip(("ingress_tls_cert", "ingress_tls_key"), self_signed_certificate())),
        )

    @classmethod
    def redacted(cls) -> "ClusterSecrets":
        """Placeholders for dry runs: the real values never leave the workspace's 0600 file."""
        return cls(memberlist_key=REDACTED, bootstrap_token=REDACTED, certificate_key=REDACTED,
                   ingress_tls_cert=REDACTED, ingress_tls_key=REDACTED)

    def values(self) -> list[str]:
        return [v for v in asdict(self).values() if v != REDACTED]


INGRESS_CERT_NAME = "bmctl ingress (self-signed)"
INGRESS_CERT_DAYS = 3650


def self_signed_certificate() -> tuple[str, str]:
    """(certificate, key) PEM: an ECDSA P-256 self-signed server certificate for the bundled ingress,
    valid ten years; its name says what it is, since no client can trust it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, INGRESS_CERT_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=INGRESS_CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("bmctl-ingress.invalid")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def _write(path: Path, value: ClusterSecrets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(asdict(value), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_or_create(path: Path) -> ClusterSecrets:
    """The cluster's secrets, generated once; later runs reuse them so re-runs converge. A file
    written before a secret existed gets it generated and added."""
    if path.exists():
        data = yaml.safe_load(path.read_text())
        value = ClusterSecrets(**data)
        if not value.ingress_tls_key:
            cert, key = self_signed_certificate()
            value = ClusterSecrets(**{**data, "ingress_tls_cert": cert, "ingress_tls_key": key})
            _write(path, value)
        return value
    value = ClusterSecrets.generate()
    _write(path, value)
    return value
