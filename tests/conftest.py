"""Shared helpers. Under CI=true a missing prerequisite fails the test instead of skipping it."""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "cluster-examples").glob("*.yaml"))
IN_CI = os.environ.get("CI", "").lower() == "true"

# Modules that use the lab's builds (binaries, images): they run after every other module, and each
# first waits for the build lock, so `./quickstart test` can build in the background while the
# tests that need no build run (a fresh machine's builds take most of its run).
NEEDS_BUILD = ("test_lab_", "test_images.py", "test_bundle_build.py", "test_oci.py")


def _needs_build(item) -> bool:
    return item.path.name.startswith(NEEDS_BUILD)


def pytest_collection_modifyitems(session, config, items):
    items[:] = [i for i in items if not _needs_build(i)] + [i for i in items if _needs_build(i)]


_waited: list[bool] = []


def pytest_runtest_setup(item):
    if _needs_build(item) and not _waited:
        from bmctl.lab import binaries
        with binaries.build_lock():  # a build under way (e.g. in the background) finishes first
            _waited.append(True)


def require(condition: bool, what: str) -> None:
    """Skip when a prerequisite is missing on a developer machine; fail under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {what}")
    pytest.skip(f"prerequisite missing: {what}")


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    require(path is not None, f"{name} (Debian package)")
    return path


def require_root() -> None:
    require(os.geteuid() == 0, "root (network namespaces)")


BASE_DOCS = [
    {"sshPrivateKeyPath": "/dev/null"},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cluster-t1"}},
    {
        "apiVersion": "baremetal.cluster.gke.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "t1", "namespace": "cluster-t1"},
        "spec": {
            "type": "standalone",
            "controlPlane": {"nodePoolSpec": {"nodes": [
                {"address": "192.0.2.11"}, {"address": "192.0.2.12"}, {"address": "192.0.2.13"}]}},
            "clusterNetwork": {"pods": {"cidrBlocks": ["10.244.0.0/16"]},
                               "services": {"cidrBlocks": ["10.96.0.0/20"]}},
            "loadBalancer": {
                "mode": "bundled",
                "type": "layer2",
                "ports": {"controlPlaneLBPort": 443},
                "vips": {"controlPlaneVIP": "192.0.2.10", "ingressVIP": "192.0.2.100"},
                "addressPools": [
                    {"name": "pool1", "addresses": ["192.0.2.100-192.0.2.150"]},
                    {"name": "pool2", "addresses": ["192.0.2.160/28"], "manualAssign": True},
                ],
            },
            "nodeAccess": {"loginUser": "root"},
        },
    },
    {
        "apiVersion": "baremetal.cluster.gke.io/v1",
        "kind": "NodePool",
        "metadata": {"name": "workers", "namespace": "cluster-t1"},
        "spec": {"clusterName": "t1", "nodes": [{"address": "192.0.2.21"}]},
    },
]


def base_docs() -> list:
    return copy.deepcopy(BASE_DOCS)


def dump(docs: list) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


@pytest.fixture
def write_config(tmp_path):
    """Write docs (or text) to a file in tmp_path and return its path."""

    def _write(docs_or_text, name: str = "cluster.yaml") -> Path:
        path = tmp_path / name
        path.write_text(docs_or_text if isinstance(docs_or_text, str) else dump(docs_or_text))
        return path

    return _write


def pinned_texts(name: str) -> list[str]:
    """The files of an upstream manifest bmctl's release pins (`manifests:`), read as bmctl reads
    them (bmctl/release/upstream.py: cache, Go module cache, module proxy) and checked against their
    sha256. Skipped on a developer machine that has none of them (failed under CI=true)."""
    from bmctl import release as releases
    from bmctl.errors import BmctlError
    from bmctl.release import upstream

    try:
        return upstream.texts(releases.default(), name)
    except BmctlError as exc:
        require(False, f"the upstream manifest {name}: {exc.message}")
        raise


def go_module_dir(module: str, version: str) -> Path:
    """A Go module's folder in the Go module cache, downloaded by the ordinary Go client (as the lab's
    build does) if it is not there yet."""
    import json
    import subprocess

    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    require(go is not None, "go (to read upstream's files from their Go modules)")
    proc = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True,
                          env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}, timeout=600)
    require(proc.returncode == 0, f"the Go module {module}@{version}: {proc.stderr.strip()[-300:]}")
    return Path(json.loads(proc.stdout)["Dir"])


def upstream_file(module: str, version: str, path: str, sha256: str) -> Path:
    """An upstream project's own file, as its Go module (which the lab's build downloads with the
    ordinary Go client) holds it, checked against the sha256 recorded in tests/data/upstream/. Not
    committed here: copies of upstream files stay out of this repository."""
    import hashlib

    found = go_module_dir(module, version) / path
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    assert digest == sha256, f"{module}@{version} {path}: sha256 {digest}, recorded {sha256}"
    return found
