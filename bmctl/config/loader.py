"""Load a config file into a ClusterConfig, or raise ConfigError listing every problem."""
from __future__ import annotations

import copy
import difflib
import os
import types
import typing
from pathlib import Path as FsPath
from typing import Any

import pydantic

from bmctl.config import model, rules
from bmctl.config.google import take_google_fields
from bmctl.config.problems import ConfigError, Problem
from bmctl.config.source import Document, format_path, load_documents

_FIX_BY_TYPE = {
    "string_type": "quote the value as a string",
    "int_type": "write a whole number without quotes",
    "bool_type": "write true or false, without quotes",
    "float_type": "write a number without quotes, e.g. 0.2",
    "list_type": "write a YAML list: one '- item' per line",
    "model_type": "write a mapping of keys under it",
    "dict_type": "write a mapping of keys under it",
    "too_short": "add at least one entry",
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(annotation: Any) -> Any:
    """Optional[X] -> X, list[X] -> X: the model class whose fields live below."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


def _fields_at(cls: type[pydantic.BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)) or part not in cls.model_fields:
            return []
        cls = _unwrap(cls.model_fields[part].annotation)
    if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        return list(cls.model_fields)
    return []


def _keys_at(data: Any, loc: tuple) -> set:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return set()
    return set(data) if isinstance(data, dict) else set()


def _pydantic_findings(exc: pydantic.ValidationError, cls: type[pydantic.BaseModel], data: Any) -> list[rules.Finding]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            name = str(loc[-1])
            known = _fields_at(cls, loc[:-1])
            # a key already written beside it is no rename target (that would make a duplicate key)
            free = [k for k in known if k not in _keys_at(data, loc[:-1])]
            close = difflib.get_close_matches(name, free, n=1, cutoff=0.6)
            if not close:
                close = [k for k in free if k.lower() == name.lower()]
            if close:
                fix = f"did you mean {close[0]!r}? Rename the key"
            elif known:
                fix = f"remove it; the fields allowed here are {', '.join(known)}"
            else:
                fix = "remove it"
            out.append(rules.Finding(loc, f"unknown field {name!r}", fix))
        elif kind == "missing":
            parent = format_path(loc[:-1]) or "the document"
            out.append(rules.Finding(loc, "required field is missing", f"add {loc[-1]!r} under {parent}"))
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            out.append(rules.Finding(loc, f"{_describe(err.get('input'))} is not allowed",
                                     f"use one of {expected}"))
        else:
            msg = err["msg"][0].lower() + err["msg"][1:]
            out.append(rules.Finding(loc, f"{msg}, got {_describe(err.get('input'))}",
                                     _FIX_BY_TYPE.get(kind, "correct the value")))
    return out


def _without(data: Any, locs: list[tuple]) -> Any | None:
    """A copy of data with the keys at `locs` removed, or None if one is not a removable key."""
    data = copy.deepcopy(data)
    for loc in locs:
        if not loc or isinstance(loc[-1], int):
            return None
        parent = data
        for part in loc[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                return None
        if not isinstance(parent, dict) or loc[-1] not in parent:
            return None
        del parent[loc[-1]]
    return data


def _validate(cls: type[pydantic.BaseModel], data: Any) -> tuple[Any, list[rules.Finding]]:
    """Validate; on errors, also try without the offending keys (unknown fields, wrong types of
    optional fields) so that the semantic rules can still run and every problem is reported at once.
    Returns (model or None, findings of the first attempt)."""
    try:
        return cls.model_validate(data), []
    except pydantic.ValidationError as exc:
        findings = _pydantic_findings(exc, cls, data)
        errors = exc.errors(include_url=False)
    for _ in range(3):
        if any(e["type"] == "missing" for e in errors):
            return None, findings
        data = _without(data, [tuple(e["loc"]) for e in errors])
        if data is None:
            return None, findings
        try:
            return cls.model_validate(data), findings
        except pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False)
    return None, findings


def _doc_label(doc: Document, kind: str) -> str:
    if kind == "NodePool":
        name = doc.data.get("metadata", {}).get("name") if isinstance(doc.data.get("metadata"), dict) else None
        return f"NodePool {name!r}" if isinstance(name, str) else f"NodePool (document {doc.index + 1})"
    return "" if kind in ("Cluster", "header") else kind


class _Collector:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []

    def add(self, doc: Document | None, label: str, finding: rules.Finding) -> None:
        line = col = None
        if doc is not None:
            line, col = doc.position(finding.path)
        path = format_path(finding.path)
        if label:
            path = f"{label}: {path}" if path else label
        self.problems.append(Problem(path, finding.message, finding.fix, self.filename, line, col,
                                     finding.severity))


def _sorted(problems: list[Problem]) -> list[Problem]:
    """In file order, each problem once."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line is None, p.line or 0, p.column or 0))


def resolve_path(target: str, workspace: str | os.PathLike = "bmctl-workspace") -> FsPath:
    """`-c` takes a cluster name (bmctl-workspace/NAME/NAME.yaml) or a file path."""
    p = FsPath(target)
    if p.suffix in (".yaml", ".yml") or os.sep in target or p.is_file():
        return p
    return FsPath(workspace) / target / f"{target}.yaml"


def load_config(path: str | os.PathLike, expected_name: str | None = None) -> model.ClusterConfig:
    filename = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem("", "config file not found",
                                   "create one with `bmctl create config -c NAME`, or pass the path with -c",
                                   filename)]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                                   "save the file as UTF-8", filename)]) from None
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read the file: {exc.strerror}",
                                   "check the path and its permissions", filename)]) from None
    return parse_config(text, filename, expected_name)


def parse_config(text: str, filename: str, expected_name: str | None = None) -> model.ClusterConfig:
    docs = load_documents(text, filename)
    out = _Collector(filename)
    header_doc: Document | None = None
    cluster_docs: list[Document] = []
    namespace_docs: list[Document] = []
    pool_docs: list[Document] = []
    for doc in docs:
        if doc.data is None:
            continue
        if not isinstance(doc.data, dict):
            out.add(doc, "", rules.Finding((), f"document {doc.index + 1} is not a mapping",
                                           "each document must be keys and values (see `bmctl create config`)"))
            continue
        kind = doc.data.get("kind")
        if kind is None and "apiVersion" not in doc.data:
            if header_doc is not None:
                out.add(doc, "", rules.Finding((), "a second document without `kind`",
                                               "keep a single header document (sshPrivateKeyPath) and give "
                                               "every other document a kind"))
            header_doc = doc
        elif kind == "Cluster":
            cluster_docs.append(doc)
        elif kind == "Namespace":
            namespace_docs.append(doc)
        elif kind == "NodePool":
            pool_docs.append(doc)
        else:
            out.add(doc, "", rules.Finding(("kind",), f"unknown kind {_describe(kind)}",
                                           "use Cluster, Namespace or NodePool"))

    if not cluster_docs:
        out.add(None, "", rules.Finding((), "no `kind: Cluster` document",
                                        "add the Cluster document (see `bmctl create config`)"))
        raise ConfigError(_sorted(out.problems))
    for extra in cluster_docs[1:]:
        out.add(extra, "", rules.Finding(("kind",), "a second Cluster document",
                                         "keep one cluster per file"))

    header = model.Header()
    if header_doc is not None:
        data = dict(header_doc.data)
        for key in model.GCP_HEADER_KEYS:
            if key in data:
                data.pop(key)
                out.add(header_doc, "", rules.Finding(
                    (key,), "is a Google Cloud key path that this bmctl does not use; it is ignored",
                    "remove the line", "warning"))
        data, findings = take_google_fields("header", data)
        for f in findings:
            out.add(header_doc, "", f)
        try:
            header = model.Header.model_validate(data)
        except pydantic.ValidationError as exc:
            for f in _pydantic_findings(exc, model.Header, data):
                out.add(header_doc, "", f)
        else:
            for f in rules.check_header(header, os.path.dirname(os.path.abspath(filename))):
                out.add(header_doc, "", f)

    cluster_doc = cluster_docs[0]
    data, google = take_google_fields("Cluster", cluster_doc.data)
    cluster, findings = _validate(model.Cluster, data)
    for f in google + findings:
        out.add(cluster_doc, "", f)

    pools: list[tuple[Document, model.NodePool]] = []
    for doc in pool_docs:
        data, google = take_google_fields("NodePool", doc.data)
        pool, findings = _validate(model.NodePool, data)
        for f in google + findings:
            out.add(doc, _doc_label(doc, "NodePool"), f)
        if pool is not None:
            pools.append((doc, pool))

    namespaces: list[tuple[Document, model.Namespace]] = []
    for doc in namespace_docs:
        ns, findings = _validate(model.Namespace, doc.data)
        for f in findings:
            out.add(doc, "Namespace", f)
        if ns is not None:
            namespaces.append((doc, ns))

    if cluster is None:
        raise ConfigError(_sorted(out.problems))

    config = model.ClusterConfig(path=filename, header=header, cluster=cluster,
                                 node_pools=tuple(p for _, p in pools))
    for f in rules.check_cluster(config, expected_name):
        out.add(cluster_doc, "", f)
    namespace = rules.cluster_namespace(config, [ns for _, ns in namespaces])
    for doc, pool in pools:
        for f in rules.check_node_pool_doc(config, pool, namespace):
            out.add(doc, _doc_label(doc, "NodePool"), f)
    for f in rules.check_namespaces(config, [ns for _, ns in namespaces]):
        doc = namespaces[f.doc_index][0] if f.doc_index is not None else cluster_doc
        out.add(doc, "Namespace" if f.doc_index is not None else "", f)
    for f in rules.check_nodes(config, [p for _, p in pools]):
        target_doc, label = cluster_doc, ""
        if f.doc_index is not None:
            target_doc = pools[f.doc_index][0]
            label = _doc_label(target_doc, "NodePool")
        out.add(target_doc, label, f)

    if any(p.severity == "error" for p in out.problems):
        raise ConfigError(_sorted(out.problems))
    return model.ClusterConfig(path=filename, header=header, cluster=cluster, node_pools=config.node_pools,
                               warnings=tuple(out.problems))


def locate(config: model.ClusterConfig, findings: list[rules.Finding]) -> list[Problem]:
    """Findings about the Cluster document of a loaded config, as problems with file:line."""
    out = _Collector(config.path)
    try:
        docs = load_documents(FsPath(config.path).read_text(encoding="utf-8"), config.path)
    except (OSError, ConfigError):
        docs = []
    cluster_doc = next((d for d in docs if isinstance(d.data, dict) and d.data.get("kind") == "Cluster"), None)
    for f in findings:
        out.add(cluster_doc, "", f)
    return _sorted(out.problems)
