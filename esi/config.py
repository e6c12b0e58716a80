"""Strict config parsing: nested dataclasses from dicts, unknown keys rejected with their full name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or dict has an unknown key or a value of the wrong shape."""


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields recurse; unknown keys raise."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or '<root>'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"'{prefix}{key}'" for key in unknown)
        raise ConfigError(f"unknown config key {names}; allowed under {prefix or '<root>'}: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            kwargs[name] = from_dict(nested, value, f"{prefix}{name}.")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid config {prefix or '<root>'}: {error}") from error


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in getattr(hint, "__args__", ()) or ():
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping, with the file named in any error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must contain a mapping at the top level")
    return data
