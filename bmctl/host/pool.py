"""All hosts in parallel (a bounded pool); each host's result collected; the first failure named."""
from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

from bmctl.config.model import ClusterConfig
from bmctl.defaults import DEFAULT_CONCURRENCY
from bmctl.host.ssh import AccessOptions, Host, HostError

T = TypeVar("T")


class Inventory:
    """One Host (one SSH connection) per node, shared by every phase of a run."""

    def __init__(self, config: ClusterConfig, access: AccessOptions, concurrency: int = DEFAULT_CONCURRENCY,
                 extra: tuple[str, ...] = ()) -> None:
        """`extra`: nodes no longer in the config that the run still works on (LB nodes being removed)."""
        self.access = access
        self.concurrency = max(1, concurrency)
        self.hosts = {a: Host(a, access) for a in [*(n.address for n in config.all_nodes), *extra]}

    def __getitem__(self, address: str) -> Host:
        return self.hosts[address]

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()

    def parallel(self, addresses: list[str], fn: Callable[[Host], T]) -> dict[str, T]:
        """fn on each host at once (bounded); on a failure, wait for in-flight hosts, start no more,
        and raise the first HostError (host, step, stderr)."""
        results: dict[str, T] = {}
        if not addresses:
            return results
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(addresses))) as pool:
            futures = {pool.submit(fn, self.hosts[a]): a for a in addresses}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            wait(pending)
            errors = []
            for f, address in futures.items():
                if f.cancelled():
                    continue
                exc = f.exception()
                if exc is None:
                    results[address] = f.result()
                else:
                    errors.append(exc if isinstance(exc, HostError) else
                                  HostError(address, "step", f"{type(exc).__name__}: {exc}"))
            if errors:
                raise errors[0]
        return results
