"""Zero-shot prompt templates kept as data (``<name>.json`` with a ``templates`` list of ``{}`` strings).

``ecg`` and ``plain`` are the class prompts of the ``templates`` class text; ``views`` holds the short
sentences of the training caption views (:mod:`esi.train.views`), which the ``views`` class text reuses.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


class TemplateError(ValueError):
    """Unknown template set or a malformed template file."""


def templates_dir() -> Path:
    return Path(str(resources.files(__name__)))


def available_templates() -> list[str]:
    return sorted(p.stem for p in templates_dir().glob("*.json"))


def load_templates(name: str = "ecg") -> list[str]:
    """Prompt templates by shipped name (``ecg``, ``plain``) or from a JSON file path."""
    path = Path(name)
    if not (path.suffix == ".json" and path.is_file()):
        path = templates_dir() / f"{name}.json"
        if not path.is_file():
            raise TemplateError(f"unknown template set {name!r}; available: {', '.join(available_templates())}")
    data = json.loads(path.read_text(encoding="utf-8"))
    templates = data.get("templates") if isinstance(data, dict) else data
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise TemplateError(f"{path}: 'templates' must be a non-empty list of strings containing '{{}}'")
    return list(templates)
