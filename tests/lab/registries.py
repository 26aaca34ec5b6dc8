"""Registries on 127.0.0.1 for tests of the registry client and the bundle build: crane's (plain
HTTP, no auth), started and stopped by pid."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
from pathlib import Path

from bmctl.errors import BmctlError
from bmctl.lab import registry as lab_registry
from bmctl.release import oci


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_crane_registry(folder: Path) -> tuple[subprocess.Popen, str]:
    """crane's registry on 127.0.0.1 (plain HTTP): (process, IP:PORT)."""
    address = f"127.0.0.1:{free_port()}"
    (folder / "disk").mkdir(parents=True)
    with open(folder / "crane.log", "wb") as log:
        proc = subprocess.Popen([lab_registry.crane(), "registry", "serve", "--address", address,
                                 "--disk", str(folder / "disk")], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                oci.Registry(f"http://{address}").ping()
                return proc, address
            except BmctlError:
                assert proc.poll() is None, (folder / "crane.log").read_text()
                assert time.monotonic() < deadline, "crane registry did not answer"
                time.sleep(0.05)
    except BaseException:
        stop_crane_registry(proc)
        raise


def stop_crane_registry(proc: subprocess.Popen) -> None:
    lab_registry.stop(proc.pid)
    proc.wait(5)



def gz_tar(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(gzip'd tar, tar) of `files`, reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


def docker_image(w: oci.LayoutWriter, arch: str) -> dict:
    """A one-file Docker v2 schema 2 image for linux/ARCH in `w`; its descriptor for a manifest list."""
    layer, raw = gz_tar({"arch.txt": arch.encode()})
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}
                        ).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": w.add_blob(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": w.add_blob(layer),
                    "size": len(layer)}]}).encode()
    return {"mediaType": oci.DOCKER_MANIFEST, "digest": w.add_blob(manifest), "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"}}
