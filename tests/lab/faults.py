"""Link faults on LB nodes in BGP mode, timed from the router and from clients behind it: the lab
test (tests/test_lab_bgp.py) asserts on what alternating_faults measures, the benchmark
(benchmarks/bgp_failover.py) reports it."""
from __future__ import annotations

import collections
import socket
import ssl
import threading
import time

from bmctl.lab import router
from lab.harness import in_netns, wait_for

CONNECT_OK = 0.9  # a TCP handshake slower than this lost a SYN (Linux resends the first after 1 s)
TIMEOUT = 3.0
# (LB node index, fault): A, B alternating; a pulled cable, then `ip link set eth0 down`
FAULTS = ((0, "carrier"), (1, "carrier"), (0, "admin"), (1, "admin"), (0, "carrier"))


def _probe(lab, ip: str, port: int, request: bytes, tls: bool, ok) -> str | None:
    """One new connection from the client: None when its handshake lost no SYN and the answer came;
    else why."""
    start = time.monotonic()
    try:
        with in_netns(lab.client_ns):
            sock = socket.create_connection((ip, port), timeout=TIMEOUT)
        took = time.monotonic() - start
        local = sock.getsockname()[1]
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        with sock:
            sock.settimeout(TIMEOUT)
            sock.sendall(request)
            data = b""
            while len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if took > CONNECT_OK:
        return f"handshake took {took:.2f} s (a SYN was lost; from port {local})"
    return None if ok(data) else f"answer {data[:80]!r}"


class Clients:
    """A new connection to each target every 50 ms, each in a thread of its own (a slow one delays
    no other), from behind the router; failures are kept as (target, start, why)."""

    def __init__(self, probes: dict) -> None:
        self.probes = probes
        self.count = collections.Counter()
        self.failures: list[tuple[str, float, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: list = []
        self.loop = threading.Thread(target=self._run, daemon=True)

    def _one(self, name: str, probe, start: float) -> None:
        why = probe()
        with self.lock:
            self.count[name] += 1
            if why is not None:
                self.failures.append((name, start, why))

    def _run(self) -> None:
        while not self.stop.is_set():
            for name, probe in self.probes.items():
                t = threading.Thread(target=self._one, args=(name, probe, time.monotonic()), daemon=True)
                t.start()
                self.threads.append(t)
            self.stop.wait(0.05)

    def __enter__(self) -> "Clients":
        self.loop.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.loop.join()
        for t in self.threads:
            t.join(TIMEOUT * 3)


class RouteWatch:
    """The router's next hops for each prefix, polled every 20 ms: changes as (time, prefix, hops)."""

    def __init__(self, lab, prefixes: list[str]) -> None:
        self.lab, self.prefixes = lab, prefixes
        self.changes: list[tuple[float, str, frozenset]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: dict[str, frozenset] = {}
        while not self.stop.is_set():
            for prefix in self.prefixes:
                hops = frozenset(router.routes(self.lab.state, prefix))
                if last.get(prefix) != hops:
                    last[prefix] = hops
                    self.changes.append((time.monotonic(), prefix, hops))
            self.stop.wait(0.02)

    def first(self, prefix: str, hops: set, after: float) -> float | None:
        return next((t for t, p, h in self.changes if p == prefix and h == hops and t >= after), None)

    def __enter__(self) -> "RouteWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def alternating_faults(lab, service: str, vip: str, faults=FAULTS, hold: float = 2.0, settle: float = 4.0) -> dict:
    """Cut and restore the LB nodes in turn (`faults`) while clients open a new connection to the
    API VIP and to the Service IP every 50 ms. Each restore waits until the router lists both next
    hops again for both prefixes, then `settle` s. Returns the rounds (times from the cut and from
    the restore), the clients' failures and counts."""
    lbs = sorted(n["address"] for n in lab.nodes if n["role"] == "load-balancer")
    prefixes = {"api": f"{vip}/32", "service": f"{service}/32"}
    for prefix in prefixes.values():
        wait_for(lambda: set(router.routes(lab.state, prefix)) == set(lbs), 60, f"the ECMP route for {prefix}")
    probes = {
        "api": lambda: _probe(lab, vip, 443, f"GET /readyz HTTP/1.1\r\nHost: {vip}\r\nConnection: close"
                                                   "\r\n\r\n".encode(), True, lambda d: d.startswith(b"HTTP/1.1 200")),
        "service": lambda: _probe(lab, service, 80, f"GET / HTTP/1.0\r\nHost: {service}\r\n\r\n".encode(), False,
                                  lambda d: b"client=" in d),
    }
    rounds = []
    with RouteWatch(lab, list(prefixes.values())) as watch, Clients(probes) as clients:
        time.sleep(1)
        for index, kind in faults:
            victim = lab.node(lbs[index])
            other = {a for a in lbs if a != victim["address"]}
            cut = time.monotonic()
            lab.fault(victim, kind, False)
            try:
                for prefix in prefixes.values():
                    wait_for(lambda: set(router.routes(lab.state, prefix)) == other, 15,
                             f"the router to drop {victim['name']}'s next hop for {prefix}")
                time.sleep(hold)
            finally:
                restore = time.monotonic()
                lab.fault(victim, kind, True)
            for prefix in prefixes.values():
                wait_for(lambda: set(router.routes(lab.state, prefix)) == set(lbs), 60,
                         f"{victim['name']}'s next hop back for {prefix}")
            time.sleep(settle)
            rounds.append({"node": victim["name"], "fault": kind, "cut": cut, "restore": restore,
                           **{f"{name}_withdrawn_s": round((watch.first(prefix, other, cut) or restore) - cut, 2)
                              for name, prefix in prefixes.items()},
                           **{f"{name}_back": watch.first(prefix, set(lbs), restore) for name, prefix in prefixes.items()}})
        time.sleep(1)
    end = time.monotonic()
    return classify(rounds, clients.failures, list(prefixes), end) | {"count": dict(clients.count)}


# A new connection lasts well under this (TLS and /readyz through HAProxy included): one that fails and
# started this long before an event (a cut, a next hop added) was in flight when it happened.
IN_FLIGHT = 1.0
STEADY_WITHIN = 1.0  # after a cut, new connections fail only this long (BFD takes the next hop away)


def classify(rounds: list[dict], failures: list[tuple[str, float, str]], targets: list[str], end: float) -> dict:
    """Per round and target: `steady_s`, the start of the last failed connection from the cut on;
    `back_s`, from the restore until the router listed the node again; `rehash_resets`, connections
    in flight at that moment that failed (the router's ECMP hash moves some of them to the restored
    node, which has no such connection and resets it); `failed_after_back`, connections started after it that
    failed (the target: 0). `stray`: failures that belong to no cut and no rehash."""
    stray = []
    for i, r in enumerate(rounds):
        upto = rounds[i + 1]["cut"] - IN_FLIGHT if i + 1 < len(rounds) else end
        for name in targets:
            mine = [(t, why) for n, t, why in failures if n == name]
            cut = [t for t, _ in mine if r["cut"] - IN_FLIGHT <= t < r["restore"]]
            back = r[f"{name}_back"]
            r[f"{name}_steady_s"] = round(max(cut) - r["cut"], 2) if cut else 0.0
            r[f"{name}_back_s"] = round(back - r["restore"], 2)
            r[f"{name}_rehash_resets"] = sum(1 for t, _ in mine if back - IN_FLIGHT <= t < back)
            r[f"{name}_failed_after_back"] = sum(1 for t, _ in mine if back <= t < upto)
    for name, t, why in failures:
        in_cut = any(r["cut"] - IN_FLIGHT <= t < r["cut"] + STEADY_WITHIN for r in rounds)
        in_rehash = any(r[f"{name}_back"] - IN_FLIGHT <= t < r[f"{name}_back"] for r in rounds)
        if not (in_cut or in_rehash):
            stray.append((name, round(t - rounds[0]["cut"], 2), why))
    return {"rounds": rounds, "failures": failures, "stray": stray}
