"""Progress a person can follow on a long run: phase, per-host state, elapsed time (rich)."""
from __future__ import annotations

import threading
import time

from rich.markup import escape

from bmctl.output import out
from bmctl.runlog import log


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.start = time.monotonic()
        self.phase_start = self.start
        self.lock = threading.Lock()

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.start:6.1f}s"

    def phase(self, index: int, total: int, title: str) -> None:
        self.phase_start = time.monotonic()
        log().info("phase %d/%d: %s", index, total, title)
        if not self.quiet:
            with self.lock:
                out.print(f"[dim]{self._elapsed()}[/] [bold]Phase {index}/{total}: {escape(title)}[/]")

    def host(self, host: str, text: str, status: str = "ok") -> None:
        """A line for one host; status is ok, warn or fail."""
        log().info("%s", text, extra={"host": host})
        if not self.quiet:
            mark = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}[status]
            with self.lock:
                out.print(f"[dim]{self._elapsed()}[/]   {mark} [cyan]{escape(host):<16}[/] {escape(text)}")

    def note(self, text: str) -> None:
        log().info("%s", text)
        if not self.quiet:
            with self.lock:
                out.print(f"[dim]{self._elapsed()}[/]     {escape(text)}")

    def phase_done(self, title: str) -> None:
        took = time.monotonic() - self.phase_start
        log().info("phase done: %s (%.1f s)", title, took)
        if not self.quiet:
            with self.lock:
                out.print(f"[dim]{self._elapsed()}[/]   [green]done[/] {escape(title)} in {took:.1f} s")
