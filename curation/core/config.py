"""Typed configuration: YAML files in ``conf/`` loaded into pydantic models, with CLI overrides.

Every config class derives from :class:`ConfigModel`, which forbids unknown keys, so a typo in a
YAML file or an override is an error that names the key instead of a silently ignored setting.
Overrides use dotted paths (``--set score.batch_size=256``); values are parsed as YAML 1.2 scalars:
only ``true``/``false`` are booleans, so ``--set image.resize_mode=no`` is the string ``no`` (YAML
1.1 reads ``no``, ``on``, ``off``, ``yes`` as booleans); a boolean field still takes them, as
pydantic reads those strings as booleans.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

M = TypeVar("M", bound="ConfigModel")


class ConfigError(ValueError):
    """A config that does not validate; the message names each offending key."""


class ConfigModel(BaseModel):
    """Base of every config: strict keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping with the safe loader (configs may come from untrusted places)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


class _Yaml12Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's booleans: only true/false (any case), not yes/no/on/off."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_override_value(raw: str) -> Any:
    """One ``--set`` value as a YAML 1.2 scalar (or flow list/mapping).

    A value starting with ``|`` or ``>`` would be a YAML block-scalar header (``separator= | ``
    parses as ""): it is kept exactly as typed.
    """
    if _is_block_indicator(raw):
        return raw
    return yaml.load(raw, Loader=_Yaml12Loader) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (returns a new dict)."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key")
        node: Any = out
        for p in parts[:-1]:
            node = _child(node, p, item)
        value = parse_override_value(raw)
        if isinstance(node, list):
            node[_index(node, parts[-1], item)] = value
        else:
            node[parts[-1]] = value
    return out


def _is_block_indicator(raw: str) -> bool:
    """A one-line value that YAML would read as a block scalar (``|``, ``>-``, `` | ``): meant as typed."""
    return raw.strip()[:1] in ("|", ">")


def _index(node: list[Any], part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {item!r}: {part!r} is not an index of a {len(node)}-item list")
    return int(part)


def _child(node: Any, part: str, item: str) -> Any:
    """Step into a mapping key (created if missing) or a list index."""
    if isinstance(node, list):
        return node[_index(node, part, item)]
    nxt = node.setdefault(part, {})
    if not isinstance(nxt, dict | list):
        raise ConfigError(f"override {item!r}: {part!r} is not a section")
    return nxt


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def build(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_config(model: type[M], path: str | Path | None = None, overrides: Sequence[str] = ()) -> M:
    """Load ``path`` (if given) into ``model``, apply dotted overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return build(model, data, source=str(path) if path else "defaults")
