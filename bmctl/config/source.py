"""Read multi-document YAML and remember the line of every key and item.

PyYAML's composer gives a node tree with marks; we build plain Python data from it
ourselves so that each value's position is known by its path, duplicate keys are
errors instead of silently overwriting, and alias bombs are cut off.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from bmctl.config.problems import ConfigError, Problem

MAX_NODES = 200_000  # bound on constructed values (YAML alias expansion)
MAX_BYTES = 5 * 1024 * 1024

Path = tuple[Any, ...]


@dataclass
class Document:
    data: Any
    index: int
    lines: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path) -> tuple[int | None, int | None]:
        """Line and column of `path`, or of its nearest ancestor present in the file."""
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None, None
            path = path[:-1]


class _Builder:
    def __init__(self, filename: str, doc_index: int) -> None:
        self.filename = filename
        self.doc_index = doc_index
        self.constructor = yaml.SafeLoader("")  # used only to resolve scalar values
        self.count = 0
        self.lines: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError([Problem(
                "", f"document {self.doc_index + 1} expands to more than {MAX_NODES} values "
                "(YAML aliases nested too deep)", "write the document out without nested aliases",
                self.filename, node.start_mark.line + 1)])
        self.lines.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(Problem(
                        _fmt(path), "YAML merge keys (<<) are not supported",
                        "write the keys out in full", self.filename, key_node.start_mark.line + 1))
                    continue
                key = self.build_scalar_key(key_node, path)
                if key in out:
                    self.problems.append(Problem(
                        _fmt(path + (key,)), f"key {key!r} appears twice in the same mapping",
                        "keep one of them; YAML would silently use the last one",
                        self.filename, key_node.start_mark.line + 1, key_node.start_mark.column + 1))
                self.lines[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)

    def build_scalar_key(self, node: yaml.Node, path: Path) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problems.append(Problem(
                _fmt(path), "a mapping key must be a plain string", "use a plain word as the key",
                self.filename, node.start_mark.line + 1))
            return f"<complex key at line {node.start_mark.line + 1}>"
        key = self.constructor.construct_object(node)
        return key if isinstance(key, str) else str(key)


def _fmt(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


format_path = _fmt


def load_documents(text: str, filename: str) -> list[Document]:
    """Parse every YAML document in `text`; raise ConfigError with the line on bad YAML."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError([Problem("", f"file is larger than {MAX_BYTES // 1024 // 1024} MiB",
                                   "point -c at the cluster config file", filename)])
    docs: list[Document] = []
    problems: list[Problem] = []
    try:
        loader = yaml.SafeLoader(text)
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                builder = _Builder(filename, index)
                data = builder.build(node, ())
                problems.extend(builder.problems)
                docs.append(Document(data=data, index=index, lines=builder.lines))
                index += 1
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([Problem("", f"the file is not valid YAML: {what}",
                                   "correct the YAML syntax at that line (indentation, quotes, "
                                   "a missing ':' or '-')", filename, line, column)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"the file is not valid YAML: {exc}",
                                   "correct the YAML syntax", filename)]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ConfigError([Problem("", f"the file holds a value YAML cannot represent: {exc}",
                                   "write plain strings, numbers and lists", filename)]) from None
    if problems:
        raise ConfigError(problems)
    return docs
