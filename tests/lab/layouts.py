"""Reading the lab's built images (OCI image layouts, bmctl/lab/images.py) in tests."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from bmctl.lab import images


def unpack(b: images.Built, dest: Path) -> Path:
    """The image's root folder: its layers extracted in order, owners kept."""
    blobs = b.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / b.digest.split(":")[1]).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1], "r:gz") as tar:
            tar.extractall(dest, numeric_owner=True, filter="fully_trusted")
    return dest


def image_config(b: images.Built) -> dict:
    """The image's config (Entrypoint, Cmd, Env, User, ...)."""
    blobs = b.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / b.digest.split(":")[1]).read_text())
    return json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())["config"]
