"""``p53hcc config``: every study setting with its type, allowed values, default and meaning, from the schema.

The defaults shown are those a study would use (the schema's, with the stage defaults filled in from their homes:
the folds, the presets, the bundles' ``train.json``), so the listing never disagrees with what runs.
"""
from __future__ import annotations

import json
import typing
from typing import Any

import yaml

from p53hcc.tools.config.schema import FederatedStudyConfig, StudyConfig, field_info, flat_keys


def _type_text(annotation: Any) -> str:
    """A short, readable type: ``int >= 1``, ``one of: nested, apparent``, ``list of: mc, ff``..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " | ".join(parts) + (" | null" if type(None) in args else "")
    if origin in (list, tuple):
        inner = sorted({_type_text(a) for a in args if a is not Ellipsis})
        return f"{'list' if origin is list else 'tuple'} of {', '.join(inner)}"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    marks = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length"),
                           ("pattern", "matching")):
            value = getattr(m, attr, None)
            if value is not None:
                marks.append(f"{sign} {value}")
    return f" ({', '.join(marks)})" if marks else ""


def settings_rows(profile: str = "paper", federated: bool = False) -> list[dict[str, str]]:
    """One row per setting: ``key``, ``type``, ``default`` (as the profile resolves it) and ``meaning``; with
    ``federated`` also the federation's ``fl`` section (``p53hcc federated``)."""
    from p53hcc.tools.pipeline.config import resolve_config

    model = FederatedStudyConfig if federated else StudyConfig
    resolved = resolve_config(profile=profile, model=model)
    rows = []
    for key in flat_keys(model):
        field = field_info(key, model)
        value: Any = resolved
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        rows.append({"key": key, "type": _type_text(field.annotation) + _bounds(field),
                     "default": json.dumps(value), "meaning": field.description or ""})
    return rows


def settings_text(format: str = "table", profile: str = "paper", federated: bool = False) -> str:
    """The schema as a table (``format="table"``) or as a commented YAML of the defaults (``"yaml"``)."""
    rows = settings_rows(profile, federated)
    if format == "yaml":
        return _commented_yaml(rows)
    if format != "table":
        raise ValueError(f"format must be table or yaml, got {format!r}")
    width = max(len(r["key"]) for r in rows)
    lines = [f"Study settings (profile {profile}); set them in a --config YAML or as --section.key flags.",
             "Recorded keys (profile, cohort, cohort_generated) are written by the run, not set.", ""]
    for r in rows:
        lines.append(f"{r['key']:<{width}}  {r['type']}")
        lines.append(f"{'':<{width}}  default {r['default']}: {r['meaning']}")
    return "\n".join(lines)


def _commented_yaml(rows: list[dict[str, str]]) -> str:
    """A study YAML of every default, each key with its type and meaning as a comment."""
    out, section = ["# p53hcc study settings (defaults); see `p53hcc config` for types and ranges"], None
    for r in rows:
        if r["key"] in ("profile", "cohort", "cohort_generated"):
            continue
        parts = r["key"].split(".")
        if len(parts) == 2 and parts[0] != section:
            section = parts[0]
            out.append(f"{section}:")
        elif len(parts) == 1:
            section = None
        indent = "  " * (len(parts) - 1)
        value = yaml.safe_dump(json.loads(r["default"]), default_flow_style=True, width=10_000).strip()
        value = value.removesuffix("\n...").removesuffix("...").strip()
        out.append(f"{indent}{parts[-1]}: {value}  # {r['meaning']}")
    return "\n".join(out) + "\n"
