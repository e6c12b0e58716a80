"""Zero-shot ECG classification: class names -> prompts -> ESI text embeddings -> cosine scores.

Open_clip style: each class's text embedding is the mean of the L2-normalised embeddings of its
prompts (templates from ``esi/templates/<name>.json`` filled with the class display name), then
re-normalised. With ``use_knowledge`` the class text also draws on the ECG knowledge corpus: for
every knowledge entry listing one of the class's native codes, a description prompt
``"<display>: <waveform feature>; <waveform feature>; ..."`` (the grounded CQA description) is
embedded; the mean of those is averaged with the template mean (equal weight) and re-normalised.

Scores are the raw cosine similarities between ECG and class embeddings (in [-1, 1]). They are
per-class, independent scores (multi-label): ranking metrics (AUC) need nothing more, and F1 uses
per-class thresholds chosen on training scores (see :mod:`esi.evaluate`). ``probabilities`` maps
them through ``sigmoid(logit_scale * (s - bias))`` for display only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from esi.labelsets import LabelSet


class TextEncoder(Protocol):
    def encode_text(self, texts: list[str]) -> Any: ...


class TemplateError(ValueError):
    """Unknown template set or a malformed template file."""


def templates_dir() -> Path:
    return Path(str(resources.files("esi.templates")))


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


def knowledge_descriptions(labelset: LabelSet, max_entries: int = 3) -> dict[str, list[str]]:
    """Per class id, the grounded CQA-style descriptions of the knowledge entries for its codes."""
    from corpora.knowledge import code_index, entry_by_id

    index, entries = code_index(), entry_by_id()
    out: dict[str, list[str]] = {}
    for cls in labelset.classes:
        ids: list[str] = []
        for codes in cls.codes.values():
            for code in codes:
                ids.extend(i for i in index.get(code, []) if i not in ids)
        descriptions = []
        for entry_id in ids[:max_entries]:
            features = entries[entry_id].waveform_features
            if features:
                descriptions.append(f"{cls.display}: " + "; ".join(features) + ".")
        out[cls.id] = descriptions
    return out


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.clip(norms, 1e-12, None)


def to_numpy(tensor: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor or array-like (detached, on CPU)."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().float().cpu().numpy()
    return np.asarray(tensor, dtype=np.float32)


def embed_texts(model: TextEncoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised text embeddings (N, D) in batches, without gradients."""
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunks.append(to_numpy(model.encode_text(list(texts[start:start + batch_size]))))
    if not chunks:
        raise ValueError("no texts to embed")
    return _unit_rows(np.concatenate(chunks))


@dataclass
class ZeroShotClassifier:
    """Class text embeddings for one label set; scores ECG embeddings by cosine similarity."""

    labelset: LabelSet
    class_embeddings: np.ndarray  # (C, D), unit rows
    prompts: dict[str, list[str]]
    logit_scale: float = 10.0
    bias: float = 0.0

    @classmethod
    def build(
        cls, model: TextEncoder, labelset: LabelSet, templates: str | Sequence[str] = "ecg",
        *, use_knowledge: bool = False,
    ) -> ZeroShotClassifier:
        template_list = load_templates(templates) if isinstance(templates, str) else list(templates)
        descriptions = knowledge_descriptions(labelset) if use_knowledge else {}
        prompts: dict[str, list[str]] = {}
        for c in labelset.classes:
            prompts[c.id] = [t.format(c.display) for t in template_list]
        # One batched pass over every prompt and description (much faster than per class).
        unique = list(dict.fromkeys(t for c in labelset.classes for t in prompts[c.id] + descriptions.get(c.id, [])))
        vectors = dict(zip(unique, embed_texts(model, unique)))
        rows = []
        for c in labelset.classes:
            embedding = _unit_rows(np.mean([vectors[t] for t in prompts[c.id]], axis=0))
            extra = descriptions.get(c.id, [])
            if extra:
                embedding = _unit_rows(embedding + _unit_rows(np.mean([vectors[t] for t in extra], axis=0)))
            prompts[c.id] = prompts[c.id] + extra
            rows.append(embedding)
        scale = getattr(model, "logit_scale", None)
        logit_scale = float(scale.detach().exp()) if hasattr(scale, "detach") else 10.0
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            logit_scale = 10.0
        return cls(labelset, np.stack(rows).astype(np.float32), prompts, logit_scale=logit_scale)

    @property
    def class_ids(self) -> list[str]:
        return self.labelset.class_ids

    def scores(self, ecg_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity (N, C) between L2-normalised ECG embeddings and the class embeddings."""
        ecg = _unit_rows(np.asarray(ecg_embeddings, dtype=np.float32))
        if ecg.ndim != 2 or ecg.shape[1] != self.class_embeddings.shape[1]:
            raise ValueError(
                f"ECG embeddings of shape {ecg.shape} do not match class embeddings of dim "
                f"{self.class_embeddings.shape[1]}"
            )
        return ecg @ self.class_embeddings.T

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Display-only sigmoid of the scaled similarity (not calibrated)."""
        return 1.0 / (1.0 + np.exp(-self.logit_scale * (np.asarray(scores) - self.bias)))

    def top_classes(self, scores_row: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
        order = np.argsort(-scores_row)[:k]
        return [
            {"class": self.class_ids[j], "display": self.labelset.classes[j].display, "score": float(scores_row[j])}
            for j in order
        ]
