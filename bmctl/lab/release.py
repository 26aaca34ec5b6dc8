"""The lab's release: every binary and image built here, the registry they are served from, and
the release file that names them (the same shape as a real cluster's release, see bmctl/release/):

    kubernetes: v1.34.2
    images:
      pause: registry.bmctl-lab.internal/pause:3.10.1@sha256:...
      ...
    manifests:                       bmctl's own pins of the upstream manifests (MetalLB, flannel,
      ...                            Gateway API): the lab deploys upstream's files, as a real cluster

All images live under one repository, registry.bmctl-lab.internal, with kubeadm's own names for
pause, etcd, CoreDNS and the control plane, so kubeadm's `imageRepository` can point there. The
nodes' containerd resolves that host through a hosts.toml mirror to http://<registry ip>:5000.

    prepare()                        builds what is missing (binaries, then images)
    publish(netns, ip, disk_dir)     starts the registry in netns at ip:5000, pushes every image
    write_release(path, release)     writes the release file
    bundle()                         the lab's offline bundle (cached): the node software below,
                                     every image and the pinned upstream manifests (their Go modules
                                     downloaded with the Go client), in the format `bmctl bundle build`
                                     writes

The lab's node software: kubelet, kubeadm, kubectl and crictl built here (bmctl/lab/binaries.py);
containerd, runc and the CNI plugins from this machine's Debian packages (containerd 1.6, runc 1.1).
Lab nodes start without any of it: bmctl installs it from the bundle, as at an air-gapped site.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bmctl import release as releases
from bmctl.lab import binaries, images, registry
from bmctl.release import bundle as bundles
from bmctl.release import upstream

REGISTRY_HOST = "registry.bmctl-lab.internal"


def reference(built: images.Built) -> str:
    return f"{REGISTRY_HOST}/{built.name}:{built.tag}@{built.digest}"


def release(built: dict[str, images.Built]) -> dict:
    """The release file's content for `built` (what prepare returns)."""
    return {"kubernetes": binaries.KUBERNETES, "images": {name: reference(b) for name, b in built.items()},
            "manifests": {m.name: m.data() for m in releases.default().all_manifests()}}


def prepare(bin_cache: Path | None = None, image_cache: Path | None = None, say=images._print) -> dict[str, images.Built]:
    """Build every missing binary and image (caches: $BMCTL_BIN_CACHE, $BMCTL_IMAGE_CACHE, or these);
    name -> images.Built (tag, OCI layout, manifest digest). Fast when all is cached."""
    if bin_cache:
        os.environ["BMCTL_BIN_CACHE"] = str(bin_cache)
    if image_cache:
        os.environ["BMCTL_IMAGE_CACHE"] = str(image_cache)
    with binaries.build_lock():  # both, so no one sees the binaries ready and the images not
        binaries.ensure(say=say)
        return images.build_all(say=say)


def publish(netns: str, ip: str, disk_dir: Path, port: int = registry.PORT, say=images._print,
            built: dict | None = None, bundle_path: Path | None = None) -> tuple[int, dict]:
    """Start the registry in `netns` on ip:port (blobs in disk_dir) and load the lab bundle's images
    into it with `bmctl push images` (run inside `netns`, as an operator would at an air-gapped site).

    Returns (the registry's pid, the release dict). Stop the registry with registry.stop(pid).
    """
    built = built if built is not None else prepare(say=say)
    path = bundle_path or bundle(say=say, built=built)
    pid = registry.start(netns, ip, Path(disk_dir), port)
    try:
        proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "bmctl", "push", "images",
                               "--source", str(path), "--private-registry", f"http://{ip}:{port}"],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"bmctl push images into the lab registry failed: {(proc.stderr or proc.stdout)[-2000:]}")
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


DEBIAN_CNI = Path("/usr/lib/cni")


def _debian_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"the lab's node software needs the Debian package {package} (apt-get install {package})")
    return out.stdout.strip()


def node_software() -> tuple[dict[str, dict], dict[str, tuple[Path, str]]]:
    """The lab's node software: (the release's `binaries:` section, path on node -> (file here, part))."""
    parts: dict[str, tuple[str, dict[str, Path]]] = {
        name: (binaries.KUBERNETES if name != "crictl" else binaries.CRICTL,
               {f"/usr/local/bin/{name}": binaries.binary(name)})
        for name in ("kubelet", "kubeadm", "kubectl", "crictl")}
    parts["containerd"] = (_debian_version("containerd"),
                           {f"/usr/local/bin/{b}": Path("/usr/bin", b) for b in ("containerd", "containerd-shim-runc-v2", "ctr")})
    parts["runc"] = (_debian_version("runc"), {"/usr/local/sbin/runc": Path("/usr/sbin/runc")})
    parts["cni-plugins"] = (_debian_version("containernetworking-plugins"),
                            {f"/opt/cni/bin/{p.name}": p for p in sorted(DEBIAN_CNI.iterdir()) if p.is_file()})
    section = {name: {"version": version, "install": {local.name: node for node, local in files.items()}}
               for name, (version, files) in parts.items()}
    files = {node: (local.resolve(), name) for name, (_, files) in parts.items() for node, local in files.items()}
    return section, files


def bundle_cache() -> Path:
    return Path(os.environ.get("BMCTL_BUNDLE_CACHE", Path.home() / ".cache" / "bmctl" / "bundles"))


def bundle(say=images._print, built: dict | None = None) -> Path:
    """The lab's offline bundle, built when its inputs changed (cached by their identity)."""
    built = built if built is not None else prepare(say=say)
    section, files = node_software()
    content = {**release(built), "binaries": section}
    key = hashlib.sha256(json.dumps([content, sorted((n, str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                                     for n, (p, _) in files.items())]).encode()).hexdigest()[:16]
    cache = bundle_cache()
    path = cache / f"lab-{key}.tar"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    say(f"building the lab's bundle ({len(files)} node files, {len(built)} images)")
    own = releases.default()
    for manifest in own.all_manifests():  # the Go client puts each module into the Go module cache
        binaries.module_dir(manifest.module, manifest.version)
    _, manifests = upstream.for_bundle(own, say)
    layout = cache / f".layout-{key}"
    shutil.rmtree(layout, ignore_errors=True)
    try:
        bundles.merge_layouts([(reference(b), b.layout) for b in built.values()], layout)
        bundles.write(path, content, files, layout, source="lab (Go modules and Debian packages, built here)", say=say,
                      manifests=manifests)
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    for old in cache.glob("lab-*.tar"):  # keep the newest only
        if old != path:
            old.unlink(missing_ok=True)
    return path


if __name__ == "__main__":  # `python -m bmctl.lab.release`: every binary and image, as `bmctl lab up` needs them
    _start = time.monotonic()
    _built = prepare()
    print(f"lab release: {len(_built)} images and their binaries ready in {time.monotonic() - _start:.0f} s", flush=True)
