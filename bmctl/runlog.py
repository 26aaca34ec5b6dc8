"""Logs of one run: bmctl-workspace/NAME/log/<op>-<timestamp>/run.log plus one file per host.

Every record passes a filter that replaces the cluster's secret values with <redacted>.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

LOGGER = "bmctl"
_FMT = logging.Formatter("%(asctime)s %(levelname)s %(host)s %(message)s")


class _Redact(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "host"):
            record.host = "-"
        if self.secrets:
            text = record.getMessage()
            for value in self.secrets:
                text = text.replace(value, "<redacted>")
            record.msg, record.args = text, None
        return True


class _HostFiles(logging.Handler):
    """One file per host, opened on its first record."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.handlers: dict[str, logging.FileHandler] = {}

    def emit(self, record: logging.LogRecord) -> None:
        host = getattr(record, "host", "-")
        if host == "-":
            return
        handler = self.handlers.get(host)
        if handler is None:
            path = self.folder / f"{host.replace(':', '_')}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.close(fd)
            handler = self.handlers[host] = logging.FileHandler(path)
            handler.setFormatter(_FMT)
        handler.emit(record)

    def close(self) -> None:
        for h in self.handlers.values():
            h.close()
        super().close()


def start(folder: Path, secrets: list[str]) -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    stop()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    redact = _Redact(secrets)
    fd = os.open(folder / "run.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    whole = logging.FileHandler(folder / "run.log")
    whole.setFormatter(_FMT)
    per_host = _HostFiles(folder)
    for h in (whole, per_host):
        h.addFilter(redact)
        logger.addHandler(h)
    return logger


def stop() -> None:
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def log() -> logging.Logger:
    return logging.getLogger(LOGGER)
