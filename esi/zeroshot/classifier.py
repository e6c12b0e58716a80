"""Zero-shot ECG classification: class names -> prompts -> ESI text embeddings -> cosine scores.

Open_clip style: each class's text embedding is the mean of the L2-normalised embeddings of its
prompts (templates from ``esi/zeroshot/templates/<name>.json`` filled with the class display name), then
re-normalised. With ``use_knowledge`` the class text also draws on the ECG knowledge corpus: for
every knowledge entry listing one of the class's native codes, a description prompt
``"<display>: <waveform feature>; <waveform feature>; ..."`` (the grounded CQA description) is
embedded; the mean of those is averaged with the template mean (equal weight) and re-normalised.

Class text (``class_text``): ``templates`` (the above), ``knowledge`` (templates + knowledge
description), ``views`` (the training caption views' short sentences naming the class and its member
findings, members weighted by how often they occurred in the model's training folds, read from the
model's ``label_prior.json``; see :func:`esi.train.views.class_view_texts`) or ``mean`` (the re-normalised
mean of the three).

Scores (``calibration``): ``raw`` cosine per class; ``centre`` subtracts each ECG's mean over the
classes (an ECG that resembles every prompt no longer ranks high for all of them); ``zscore`` also
divides by its standard deviation over the classes; ``softmax`` is ``softmax(logit_scale * cosine)``
over the classes (for single-label sets). They are per-class scores: ranking metrics (AUC) need
nothing more, and F1 uses per-class thresholds chosen on training scores (see :mod:`esi.eval.metrics`).
``probabilities`` maps them through ``sigmoid(logit_scale * (s - bias))`` for display only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from esi.model.embed import TextEncoder, embed_texts, unit_rows
from esi.zeroshot.labelsets import LabelSet
from esi.zeroshot.templates import load_templates

CLASS_TEXTS = ("templates", "knowledge", "views", "mean")
CALIBRATIONS = ("raw", "centre", "zscore", "softmax")
DEFAULT_CLASS_TEXT = "views"
DEFAULT_CALIBRATION = "raw"
# How a text query (search, the query-by-text task) is embedded: as typed, or expanded into the training views
# that name its finding or class. raw is the default: on fold-9 half A it gave the higher precision@5 for 3 of 4
# pretraining recipes, and half B confirmed it (esi/configs/README.md).
QUERY_TEXTS = ("raw", "views")
DEFAULT_QUERY_TEXT = "raw"


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


def class_codes(labelset: LabelSet, terms: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, set[str]]:
    """Per class id, its native codes: the resolved ones, else (a PTB-XL set used without
    scp_statements.csv, e.g. by the API) those the model's training labels place in it (``terms``:
    code -> hierarchy names, from ``label_prior.json``)."""
    column = labelset.membership.get("column")
    out: dict[str, set[str]] = {}
    for cls in labelset.classes:
        codes = {c for codes in cls.codes.values() for c in codes}
        if not codes and labelset.membership.get("kind") == "scp_column" and terms:
            codes = {code for code, names in terms.items() if names.get(column) == cls.id}
        elif not codes and labelset.membership.get("kind") == "scp_statement":
            codes = {cls.id}
        out[cls.id] = codes
    return out


def member_names(labelset: LabelSet, prior: Mapping[str, float] | None = None,
                 terms: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, float]]:
    """Per class id, its member findings' names (knowledge-entry names) -> weight.

    The weight of a member is how often its codes occurred in the model's training folds (``prior``:
    native code -> count); with no prior, or none of the class's codes in it, members weigh equally.
    """
    from corpora.knowledge import code_index, entry_by_id

    index, entries = code_index(), entry_by_id()
    prior = prior or {}
    codes_of = class_codes(labelset, terms)
    out: dict[str, dict[str, float]] = {}
    for cls in labelset.classes:
        counts: dict[str, float] = {}
        for codes in (sorted(codes_of[cls.id]),):
            for code in codes:
                for entry_id in index.get(code, [])[:1]:
                    name = entries[entry_id].name
                    counts[name] = counts.get(name, 0.0) + float(prior.get(code, 0.0))
        if counts and sum(counts.values()) <= 0:
            counts = dict.fromkeys(counts, 1.0)
        out[cls.id] = counts
    return out


def calibrate(scores: np.ndarray, calibration: str, logit_scale: float = 10.0) -> np.ndarray:
    """Per-ECG calibration of (N, C) cosine scores across the classes (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float32)
    if calibration == "raw":
        return scores
    if calibration == "centre":
        return scores - scores.mean(axis=1, keepdims=True)
    if calibration == "zscore":
        centred = scores - scores.mean(axis=1, keepdims=True)
        return centred / (scores.std(axis=1, keepdims=True) + 1e-6)
    if calibration == "softmax":
        logits = logit_scale * scores
        logits = logits - logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)
    raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")


def _weighted_unit_mean(vectors: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    total = sum(weights.values())
    return unit_rows(np.sum([vectors[t] * (w / total) for t, w in weights.items()], axis=0))


@dataclass
class ZeroShotClassifier:
    """Class text embeddings for one label set; scores ECG embeddings by cosine similarity."""

    labelset: LabelSet
    class_embeddings: np.ndarray  # (C, D), unit rows
    prompts: dict[str, list[str]]
    logit_scale: float = 10.0
    bias: float = 0.0
    class_text: str = "templates"
    calibration: str = "raw"

    @classmethod
    def build(
        cls, model: TextEncoder, labelset: LabelSet, templates: str | Sequence[str] = "ecg",
        *, use_knowledge: bool = False, class_text: str | None = None, calibration: str = "raw",
        prior: Mapping[str, float] | None = None, terms: Mapping[str, Mapping[str, str]] | None = None,
    ) -> ZeroShotClassifier:
        """Class embeddings from ``class_text`` (``use_knowledge`` alone means ``knowledge``, as before).

        ``prior``/``terms``: the model's training-fold code counts and each code's hierarchy names
        (``label_prior.json``), used by ``views``.
        """
        class_text = class_text or ("knowledge" if use_knowledge else "templates")
        if class_text not in CLASS_TEXTS:
            raise ValueError(f"class text must be one of {', '.join(CLASS_TEXTS)}, got {class_text!r}")
        calibrate(np.zeros((1, 1)), calibration)  # an unknown calibration fails before any embedding
        template_list = load_templates(templates) if isinstance(templates, str) else list(templates)
        wanted = {"templates", "knowledge", "views"} if class_text == "mean" else {class_text}
        descriptions = knowledge_descriptions(labelset) if wanted & {"knowledge"} else {}
        members = member_names(labelset, prior, terms) if "views" in wanted else {}
        # text -> weight, per class and per kind of class text
        texts: dict[str, dict[str, dict[str, float]]] = {c.id: {} for c in labelset.classes}
        for c in labelset.classes:
            base = {t.format(c.display): 1.0 for t in template_list}
            if wanted & {"templates", "knowledge"}:
                texts[c.id]["templates"] = base
                texts[c.id].setdefault("knowledge", {})
            if "knowledge" in wanted:
                texts[c.id]["knowledge"] = dict.fromkeys(descriptions.get(c.id, []), 1.0)
            if "views" in wanted:
                from esi.train.views import class_view_texts

                view_texts, weights = class_view_texts(c.display, members.get(c.id, {}))
                texts[c.id]["views"] = dict(zip(view_texts, weights))
        # One batched pass over every text (much faster than per class).
        unique = list(dict.fromkeys(t for per_class in texts.values() for kind in per_class.values() for t in kind))
        vectors = dict(zip(unique, embed_texts(model, unique)))
        rows = []
        prompts: dict[str, list[str]] = {}
        for c in labelset.classes:
            parts = {k: _weighted_unit_mean(vectors, v) for k, v in texts[c.id].items() if v}
            if "knowledge" in parts:  # the knowledge text is the template prompts plus the descriptions
                parts["knowledge"] = unit_rows(parts["knowledge"] + parts["templates"])
            if class_text == "knowledge" and "knowledge" not in parts:
                parts["knowledge"] = parts["templates"]  # a class without a knowledge entry keeps its prompts
            parts = {k: v for k, v in parts.items() if k in wanted}
            rows.append(unit_rows(np.sum(list(parts.values()), axis=0)))
            prompts[c.id] = list(dict.fromkeys(t for v in texts[c.id].values() for t in v))
        # the temperature the model trained with: ESIModel.scale() clamps exp(logit_scale) at max_logit_scale
        scale = model.scale() if callable(getattr(model, "scale", None)) else None
        logit_scale = float(scale.detach()) if hasattr(scale, "detach") else 10.0
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            logit_scale = 10.0
        return cls(labelset, np.stack(rows).astype(np.float32), prompts, logit_scale=logit_scale,
                   class_text=class_text, calibration=calibration)

    @property
    def class_ids(self) -> list[str]:
        return self.labelset.class_ids

    def scores(self, ecg_embeddings: np.ndarray, calibration: str | None = None) -> np.ndarray:
        """(N, C) class scores: cosine similarity, calibrated per ECG (``self.calibration`` by default)."""
        return calibrate(self.cosine(ecg_embeddings), calibration or self.calibration, self.logit_scale)

    def cosine(self, ecg_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity (N, C) between L2-normalised ECG embeddings and the class embeddings."""
        ecg = unit_rows(np.asarray(ecg_embeddings, dtype=np.float32))
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


def prototype_classifier(labelset: LabelSet, embeddings: np.ndarray, y: np.ndarray,
                         calibration: str = "raw") -> ZeroShotClassifier:
    """Few-shot classification from example ECGs: each class is the mean embedding of its examples
    (nearest class-mean prototype). A class without an example gets a zero vector (scores 0)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    rows = []
    for j in range(len(labelset.classes)):
        members = embeddings[np.asarray(y[:, j], dtype=bool)]
        mean = members.mean(axis=0) if len(members) else np.zeros(embeddings.shape[1], np.float32)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    prompts = {c.id: [f"{int(np.asarray(y[:, j]).sum())} example ECGs"] for j, c in enumerate(labelset.classes)}
    return ZeroShotClassifier(labelset, np.stack(rows).astype(np.float32), prompts, class_text="prototypes",
                              calibration=calibration)
