"""Model registry (open_clip style): architectures are small JSON files in ``esi/model/configs/``.

Also :func:`save_random_model`, a randomly initialised model on disk: the CLI-free way to get a model
directory with the compute cost of a trained one, for benchmarks, demos and tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from esi.model.config import ConfigError, deep_merge, read_config_file
from esi.model.model import ESIConfig, ESIModel


def _model_config_dir():
    return resources.files("esi.model") / "configs"


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


def save_random_model(directory: str | Path, config: str = "nano", seed: int = 0,
                      captions: Sequence[str] = ("sinus rhythm. normal ECG.", "atrial fibrillation.")) -> Path:
    """Save a randomly initialised ESI model (a registered config) — same compute cost as a trained one.

    Used by tests and the speed benchmarks when no trained model is at hand. Configs with a
    restricted caption vocabulary get one built from ``captions``.
    """
    import torch

    from esi.model.text_encoder import load_text_backbone
    from esi.model.tokenizer import CaptionTokenizer

    torch.manual_seed(seed)
    resolved = resolve_model_config(config)
    vocab = None
    if resolved.decoder.restrict_vocab:
        _, tokenizer = load_text_backbone(resolved.text.name_or_path, weights=False)
        vocab = CaptionTokenizer.build_vocab(tokenizer, captions, resolved.decoder.context_length)
    return create_model(config, caption_vocab=vocab).save_pretrained(directory)
