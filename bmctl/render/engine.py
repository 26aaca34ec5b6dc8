"""Jinja2 environment: StrictUndefined, templates shipped inside the package."""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml


def template_dir() -> Path:
    """bmctl/templates in an installed wheel; the repository's templates/ in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "keepalived").is_dir():
            return candidate
    raise RuntimeError(f"bmctl templates not found next to {here}; reinstall bmctl")


def yaml_str(value: object) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML), whatever the text holds."""
    if not isinstance(value, str):
        raise TypeError(f"yaml_str expects a string, got {type(value).__name__}")
    return json.dumps(value, ensure_ascii=False)


def yaml_bool(value: object) -> str:
    if not isinstance(value, bool):
        raise TypeError(f"yaml_bool expects a bool, got {type(value).__name__}")
    return "true" if value else "false"


def toml_str(value: object) -> str:
    """A TOML basic string (JSON's escapes with ASCII output are valid TOML)."""
    if not isinstance(value, str):
        raise TypeError(f"toml_str expects a string, got {type(value).__name__}")
    return json.dumps(value, ensure_ascii=True)


def systemd_quote(value: object) -> str:
    """One double-quoted word of a systemd unit setting (`Environment=`): backslash and quote escaped,
    `%` doubled (systemd expands %-specifiers)."""
    if not isinstance(value, str) or "\n" in value:
        raise ValueError(f"systemd_quote expects a one-line string, got {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["yaml_str"] = yaml_str
    env.filters["yaml_bool"] = yaml_bool
    env.filters["toml_str"] = toml_str
    env.filters["systemd_quote"] = systemd_quote
    return env


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)


def sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class RenderedFile:
    """A file bmctl writes on a node (absolute path there) or a cluster manifest (name)."""

    path: str
    content: str
    mode: int = 0o644
    secret: bool = False


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def documents(text: str) -> list[dict]:
    """The YAML documents of a manifest (libyaml's parser where present: the Gateway API CRDs are 1 MB)."""
    return [d for d in yaml.load_all(text, Loader=_LOADER) if d]
