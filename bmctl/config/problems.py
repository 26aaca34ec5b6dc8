"""Problems found in a config file, reported with field path, file, line and fix."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    fix: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    severity: str = "error"

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}" + (f":{self.column}" if self.column else "")

    def render(self) -> str:
        """One paragraph: what, where, and how to fix it."""
        where = f" ({self.where})" if self.where else ""
        path = f"{self.path}: " if self.path else ""
        return f"{self.severity}: {path}{self.message}{where}. Fix: {self.fix}"

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "path": self.path,
            "message": self.message,
            "fix": self.fix,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }


@dataclass
class ConfigError(Exception):
    """Raised when a config has at least one error; carries every problem found."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(p.render() for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]
