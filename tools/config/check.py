"""Checking a source of settings against the schema: unknown keys with the closest valid one, typed values.

Every error is one line that says where the setting came from (``--config my.yaml``, ``command line``,
``profile demo``...), the key, and what is allowed; all problems of a source are reported at once.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from p53hcc.tools.config.schema import RECORDED, RENAMED, StudyConfig, flat_keys, key_tree
from p53hcc.tools.errors import P53hccError


def _display(key: str, source: str) -> str:
    return f"--{key}" if source == "command line" else key


def closest_key(key: str, model: type[BaseModel] = StudyConfig) -> str | None:
    """The valid dotted key most like ``key`` (also matching its last part alone, ``epoch`` -> ``dl.epochs``)."""
    keys = flat_keys(model)
    sections = [k for k, v in key_tree(model).items() if v is not None]
    match = difflib.get_close_matches(key, keys + sections, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[match[0]] if match else None


def unknown_key(key: str, source: str, model: type[BaseModel] = StudyConfig, what: str = "study setting"
                ) -> P53hccError:
    """The error for an unknown key: where it came from and the closest valid key."""
    shown = _display(key, source)
    if key in RENAMED or key.rsplit(".", 1)[-1] in RENAMED:
        hint = f"; it was renamed: use {_display(RENAMED.get(key) or RENAMED[key.rsplit('.', 1)[-1]], source)}"
    else:
        near = closest_key(key, model)
        hint = f"; did you mean {_display(near, source)}?" if near else ""
    return P53hccError(f"{source}: unknown {what} {shown}{hint} (`p53hcc config` lists every setting)")


def check_keys(raw: Mapping[str, Any], source: str, model: type[BaseModel] = StudyConfig,
               what: str = "study setting") -> None:
    """Raise for the first unknown key of ``raw`` (nested dicts of sections), or for a recorded key."""
    problems = _unknown(raw, key_tree(model), "")
    if problems:
        raise unknown_key(problems[0], source, model, what)
    recorded = [k for k in raw if k in RECORDED] if issubclass(model, StudyConfig) else []
    if recorded:
        raise P53hccError(f"{source}: {recorded[0]} is recorded by the run, not a setting (the cohort is the "
                          "command's argument, the profile --profile)")


def _unknown(raw: Mapping[str, Any], tree: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for key, value in raw.items():
        if key not in tree:
            out.append(f"{prefix}{key}")
        elif tree[key] is not None and isinstance(value, Mapping):  # a non-dict section: the typed check names it
            out += _unknown(value, tree[key], f"{prefix}{key}.")
    return out


def leaf_keys(raw: Mapping[str, Any], tree: Mapping[str, Any] | None = None, prefix: str = "") -> list[str]:
    """The dotted keys ``raw`` sets (a dict-valued setting, such as ``dl.optimizer``, counts as one key)."""
    tree = key_tree() if tree is None else tree
    out = []
    for key, value in raw.items():
        sub = tree.get(key)
        if sub is not None and isinstance(value, Mapping):
            out += leaf_keys(value, sub, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def error_lines(err: ValidationError, raw: Mapping[str, Any], sources: Mapping[str, str] | None = None,
                default_source: str = "settings", what: str = "study setting") -> list[str]:
    """One line per problem of a pydantic ``ValidationError``: source, key, value, what is allowed.

    A check across settings (a model validator) names its key at the start of its message (``"folds: ..."``).
    """
    lines = []
    for e in err.errors():
        key = ".".join(p for p in e["loc"] if isinstance(p, str))
        msg, value = e["msg"].removeprefix("Value error, "), e.get("input")
        if isinstance(value, Mapping) and ": " in msg:  # a model-level check: "key: message"
            inner, msg = msg.split(": ", 1)
            key = f"{key}.{inner}" if key else inner
            value = _value_at(raw, key)
        where = _source_of(key, sources or {}, default_source)
        if e["type"] == "missing":
            lines.append(f"{where}: {what} {key}: required")
        elif isinstance(value, Mapping):
            lines.append(f"{where}: {what} {key}: {msg}")
        else:
            lines.append(f"{where}: {what} {key} = {value!r}: {msg}")
    return lines


def _value_at(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _source_of(key: str, sources: Mapping[str, str], default: str) -> str:
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return default


def validated(model: type[BaseModel], raw: Mapping[str, Any], sources: Mapping[str, str] | None = None,
              default_source: str = "settings", what: str = "study setting") -> BaseModel:
    """``model`` validated from ``raw``; every problem as one line of one :class:`P53hccError`."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise P53hccError("\n".join(error_lines(err, raw, sources, default_source, what))) from None
