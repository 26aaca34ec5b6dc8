"""The config last applied to a cluster: kept in the cluster (ConfigMap kube-system/bmctl-applied-config,
owned by bmctl) and copied to bmctl-workspace/NAME/applied/NAME.yaml. `bmctl update loadbalancer`
compares the desired config with it."""
from __future__ import annotations

import time

import bmctl.kube as kubeapi
from bmctl import __version__
from bmctl.kube import Kube
from bmctl.workspace import Workspace, _mkdir_private, write_private

NAMESPACE = "kube-system"
NAME = "bmctl-applied-config"
KEY = "config.yaml"


def store(kube: Kube, ws: Workspace, text: str) -> None:
    kube.apply({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "bmctl"},
                     "annotations": {"bmctl.io/applied-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "bmctl.io/version": __version__}},
        "data": {KEY: text},
    })
    store_local(ws, text)


def store_local(ws: Workspace, text: str) -> None:
    _mkdir_private(ws.applied_path.parent)
    write_private(ws.applied_path, text)


def read_cluster(kube: Kube) -> str | None:
    try:
        cm = kube.core().read_namespaced_config_map(NAME, NAMESPACE)
    except kubeapi.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return (cm.data or {}).get(KEY)


def read_local(ws: Workspace) -> str | None:
    return ws.applied_path.read_text() if ws.applied_path.exists() else None
