"""The Kubernetes API through the VIP (kubernetes Python client): server-side apply as `bmctl`.

The client (a quarter of a second to import) is imported when the first `Kube` is made, or when
`ApiException` is first looked up here, so that commands that never reach the API (check config,
the file phases, dry runs) do not pay for it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from bmctl.errors import BmctlError

if TYPE_CHECKING:
    from kubernetes import client, dynamic


def __getattr__(name: str):
    if name == "ApiException":
        from kubernetes.client.rest import ApiException
        return ApiException
    raise AttributeError(name)

FIELD_MANAGER = "bmctl"
DEFAULT_TIMEOUT = (5, 30)  # seconds: connect, read


def with_default_timeout(api: client.ApiClient, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> client.ApiClient:
    """Give every request a timeout. The client's default is none at all, so a call in flight when
    the VIP moves or an apiserver dies can block for as long as TCP keeps retrying (many minutes)."""
    rest = api.rest_client
    request = rest.request

    def timed(method, url, headers=None, body=None, post_params=None, _request_timeout=None):
        return request(method, url, headers=headers, body=body, post_params=post_params,
                       _request_timeout=_request_timeout or timeout)

    rest.request = timed
    return api


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import config as kconfig

        self.api = with_default_timeout(kconfig.new_client_from_config(config_file=str(kubeconfig)))
        self._dynamic: dynamic.DynamicClient | None = None

    @property
    def dynamic(self) -> dynamic.DynamicClient:
        if self._dynamic is None:
            from kubernetes import dynamic

            self._dynamic = dynamic.DynamicClient(self.api)
        return self._dynamic

    def forget_discovery(self) -> None:
        """New CRDs: rediscover resources on next use."""
        self._dynamic = None

    def apply(self, obj: dict) -> dict:
        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        return resource.server_side_apply(body=obj, name=meta["name"], namespace=meta.get("namespace"),
                                          field_manager=FIELD_MANAGER, force_conflicts=True).to_dict()

    def apply_manifest(self, text: str) -> list[dict]:
        return [self.apply(doc) for doc in yaml.safe_load_all(text) if doc]

    def core(self) -> client.CoreV1Api:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def readyz(self) -> bool:
        try:
            resp = self.api.call_api("GET", self.api.configuration.host + "/readyz", _request_timeout=5)
            return resp.status == 200
        except Exception:  # noqa: BLE001 - any failure means not ready yet
            return False


def wait(what: str, check: Callable[[], object], timeout: float, interval: float = 1.0):
    """Poll check() until it returns something truthy; on timeout, name what was awaited."""
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except ApiException as exc:
            last = f"{exc.status} {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - connection errors while the API comes up
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise BmctlError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last})" if last else ""),
                     "look at the run log and the node's static pods; re-run the same command to continue.")
