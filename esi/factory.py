"""Model registry (open_clip style): architectures are small JSON files in esi/configs/models/."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from esi.config import ConfigError, deep_merge, read_config_file
from esi.model import ESIConfig, ESIModel


def _model_config_dir():
    return resources.files("esi") / "configs" / "models"


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (``nano``, ``tiny``, ``base``)."""
    return sorted(p.name[:-5] for p in _model_config_dir().iterdir() if p.name.endswith(".json"))


def get_model_config(name_or_path: str | Path) -> dict[str, Any]:
    """The raw config dict of a registered architecture, or of a JSON/YAML file path."""
    name = str(name_or_path)
    if name in list_models():
        return json.loads((_model_config_dir() / f"{name}.json").read_text(encoding="utf-8"))
    path = Path(name)
    if path.suffix in (".json", ".yaml", ".yml") and path.exists():
        return read_config_file(path)
    raise ConfigError(f"unknown model {name!r}; registered models: {list_models()} (or pass a .json/.yaml path)")


def resolve_model_config(name_or_config: str | Path | dict[str, Any], **overrides: Any) -> ESIConfig:
    """Registered name / file / dict, deep-merged with ``overrides`` and strictly validated."""
    base = dict(name_or_config) if isinstance(name_or_config, dict) else get_model_config(name_or_config)
    return ESIConfig.from_dict(deep_merge(base, overrides))


def create_model(name_or_config: str | Path | dict[str, Any], caption_vocab: Sequence[int] | None = None,
                 **overrides: Any) -> ESIModel:
    """Build an untrained ESIModel, e.g. ``create_model("nano", ecg={"drop_path_rate": 0.1})``."""
    return ESIModel(resolve_model_config(name_or_config, **overrides), caption_vocab=caption_vocab)
