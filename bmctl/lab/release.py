"""The lab's release: every binary and image built here, the registry they are served from, and
the release file that names them (the same shape as a real cluster's release, see bmctl/release/):

    kubernetes: v1.34.2
    images:
      pause: registry.bmctl-lab.internal/pause:3.10.1@sha256:...
      ...

All images live under one repository, registry.bmctl-lab.internal, with kubeadm's own names for
pause, etcd, CoreDNS and the control plane, so kubeadm's `imageRepository` can point there. The
nodes' containerd resolves that host through a hosts.toml mirror to http://<registry ip>:5000.

    prepare()                        builds what is missing (binaries, then images)
    publish(netns, ip, disk_dir)     starts the registry in netns at ip:5000, pushes every image
    write_release(path, release)     writes the release file
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from bmctl.lab import binaries, images, registry

REGISTRY_HOST = "registry.bmctl-lab.internal"


def reference(built: images.Built) -> str:
    return f"{REGISTRY_HOST}/{built.name}:{built.tag}@{built.digest}"


def release(built: dict[str, images.Built]) -> dict:
    """The release file's content for `built` (what prepare returns)."""
    return {"kubernetes": binaries.KUBERNETES, "images": {name: reference(b) for name, b in built.items()}}


def prepare(bin_cache: Path | None = None, image_cache: Path | None = None, say=images._print) -> dict[str, images.Built]:
    """Build every missing binary and image (caches: $BMCTL_BIN_CACHE, $BMCTL_IMAGE_CACHE, or these);
    name -> images.Built (tag, OCI layout, manifest digest). Fast when all is cached."""
    if bin_cache:
        os.environ["BMCTL_BIN_CACHE"] = str(bin_cache)
    if image_cache:
        os.environ["BMCTL_IMAGE_CACHE"] = str(image_cache)
    binaries.ensure(say=say)
    return images.build_all(say=say)


def publish(netns: str, ip: str, disk_dir: Path, port: int = registry.PORT, say=images._print) -> tuple[int, dict]:
    """Start the registry in `netns` on ip:port (blobs in disk_dir) and push every image to it.

    Returns (the registry's pid, the release dict). Stop the registry with registry.stop(pid).
    """
    built = prepare(say=say)
    pid = registry.start(netns, ip, Path(disk_dir), port)
    try:
        registry.push_all(netns, f"{ip}:{port}", built)
    except BaseException:
        registry.stop(pid)
        raise
    return pid, release(built)


def write_release(path: Path, digests: dict) -> dict:
    """Write the release file: `digests` is a release dict (from publish) or prepare's name -> Built."""
    content = digests if "images" in digests else release(digests)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(content, sort_keys=False))
    os.replace(tmp, path)
    return content
