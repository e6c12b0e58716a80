"""Strict config parsing: nested dataclasses from dicts, checked before anything uses them.

Every error is a :class:`ConfigError` naming the dotted key (``model_overrides.ecg.dims[2]``) and the
bad value: unknown keys, values of the wrong type (checked against the dataclass field's type hint)
and values outside the range a field declares with :func:`checked`. Why not pydantic: the configs
are plain dataclasses used everywhere (``replace``, ``asdict``, saved to config.json), and the few
rules needed (exact types, numeric bounds, non-finite floats) fit in this module without a second
model layer next to each dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


class ConfigError(ValueError):
    """A config file or dict has an unknown key or a value of the wrong type or range."""


def checked(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            min_len: int | None = None, max_len: int | None = None,
            choices: Collection[Any] | None = None) -> Any:
    """A dataclass ``field`` with constraints that :func:`from_dict` enforces, naming the key.

    The bounds apply to a number, or to each element of a list of numbers; ``min_len``/``max_len``
    to the list itself; ``choices`` lists the allowed values. ``None`` (for an ``X | None`` field)
    is never range-checked.
    """
    limits = {"ge": ge, "gt": gt, "le": le, "lt": lt, "min_len": min_len, "max_len": max_len,
              "choices": None if choices is None else tuple(choices)}
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={k: v for k, v in limits.items() if v is not None})


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "", *, root: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields recurse; unknown keys, wrong types
    and out-of-range values raise :class:`ConfigError`.

    ``prefix`` is the dotted path of ``data`` inside the dict that was passed in (``"ecg."``);
    ``root`` (e.g. ``"model_overrides."``) is where that dict sits in the user's file: value errors
    name ``root + prefix + key``, unknown keys are named ``prefix + key`` "in" the root.
    """
    if data is None:
        data = {}
    section = f"{root}{prefix}".rstrip(".") or "<root>"
    if not isinstance(data, dict):
        raise ConfigError(f"config section {section} must be a mapping, got {data!r} ({type(data).__name__})")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        names = ", ".join(f"'{prefix}{key}'" for key in unknown)
        where = f" in {root.rstrip('.')}" if root else ""
        raise ConfigError(f"unknown config key {names}{where}; allowed under {section}: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{root}{prefix}{name}"
        hint = hints[name]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            kwargs[name] = from_dict(nested, value, f"{prefix}{name}.", root=root)
        else:
            kwargs[name] = _check_range(_check_type(value, hint, key), fields[name].metadata, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"invalid config {section}: {error}") from error


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in getattr(hint, "__args__", ()) or ():
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if get_origin(hint) in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in get_args(hint))
    if dataclasses.is_dataclass(hint) or get_origin(hint) is dict:
        return "a mapping"
    if hint is Any:
        return "any"
    if get_args(hint):
        return f"{get_origin(hint).__name__}[{', '.join(_type_name(arg) for arg in get_args(hint))}]"
    return getattr(hint, "__name__", str(hint))


def _bad_type(value: Any, hint: Any, key: str) -> ConfigError:
    hint_text = ""
    if isinstance(value, str) and _type_name(hint) in ("float", "int", "float | null", "int | null"):
        try:
            float(value)
        except ValueError:
            pass
        else:
            hint_text = (" (YAML reads an exponent without a dot, like 5e-5, as a string: write 5.0e-5)"
                         if "e" in value.lower() and "." not in value
                         else " (a number in quotes is a string: drop the quotes)")
    return ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__}){hint_text}")


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` if it has type ``hint`` (an int is accepted, as a float, where a float is expected)."""
    if hint is Any:
        return value
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in get_args(hint):
                return None
            raise _bad_type(value, hint, key)
        arms = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(arms) == 1:
            return _check_type(value, arms[0], key)
        for arm in arms:
            try:
                return _check_type(value, arm, key)
            except ConfigError:
                continue
        raise _bad_type(value, hint, key)
    if dataclasses.is_dataclass(hint):  # a dict value was handled by from_dict
        raise _bad_type(value, hint, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _bad_type(value, hint, key)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad_type(value, hint, key)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return float(value)
        raise _bad_type(value, hint, key)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _bad_type(value, hint, key)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise _bad_type(value, hint, key)
        (item,) = get_args(hint) or (Any,)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad_type(value, hint, key)
        key_type, item = get_args(hint) or (Any, Any)
        return {_check_type(k, key_type, f"{key} (key {k!r})"): _check_type(v, item, f"{key}.{k}")
                for k, v in value.items()}
    return value  # a hint this checker does not know: the dataclass's own __post_init__ decides


def _check_range(value: Any, limits: Any, key: str) -> Any:
    """``value`` if it meets the ``checked(...)`` constraints in ``limits`` (field metadata)."""
    if value is None or not limits:
        return value
    if isinstance(value, list):
        if "min_len" in limits and len(value) < limits["min_len"]:
            raise ConfigError(f"{key}: needs at least {limits['min_len']} value(s), got {value!r}")
        if "max_len" in limits and len(value) > limits["max_len"]:
            raise ConfigError(f"{key}: takes at most {limits['max_len']} value(s), got {value!r}")
        for i, item in enumerate(value):
            _check_scalar(item, limits, f"{key}[{i}]")
    else:
        _check_scalar(value, limits, key)
    return value


def _check_scalar(value: Any, limits: Any, key: str) -> None:
    if "choices" in limits and value not in limits["choices"]:
        raise ConfigError(f"{key}: must be one of {list(limits['choices'])}, got {value!r}")
    for name, (symbol, ok) in _BOUNDS.items():
        if name in limits and isinstance(value, int | float) and not ok(value, limits[name]):
            raise ConfigError(f"{key}: must be {symbol} {limits[name]:g}, got {value!r}")


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
