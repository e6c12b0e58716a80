"""Zero-shot on the validation folds during pretraining, beside the two references it should approach.

Why: the contrastive loss and in-batch retrieval say little about what users come for. Each
validation reports the superclass zero-shot macro AUC (default class text and calibration of
:mod:`esi.zeroshot.classifier`) and the references of the same split: ``caption_centroid`` (each class is the
mean embedding of its training captions) and ``ecg_prototype`` (the mean ECG embedding of its
training records). The gap between zero-shot and the references is the prompt gap.

The labels come from the caption rows themselves (``labels`` and ``label_terms``: a PTB-XL statement's
``diagnostic_class``), so no dataset files are read; a caption table without them (MIMIC, older
captions) simply has no zero-shot metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from esi.train.data import CaptionTable
from esi.zeroshot.labelsets import LabelSet, load_labelset


def superclass_labelset(captions: CaptionTable) -> LabelSet | None:
    """PTB-XL superclasses with their member codes read from the captions' label terms."""
    labelset = load_labelset("superclass")
    classes = []
    for cls in labelset.classes:
        codes = tuple(sorted(c for c, t in captions.terms.items() if t.get("diagnostic_class") == cls.id))
        classes.append(replace(cls, codes={labelset.vocabulary: codes}))
    if not any(c.codes[labelset.vocabulary] for c in classes):
        return None
    return replace(labelset, classes=tuple(classes), resolved=True)


class ZeroShotMonitor:
    """Scores a model on the validation records; built once per run from the caption table."""

    def __init__(self, captions: CaptionTable, labelset: LabelSet, val_ids: Sequence[str],
                 train_ids: Sequence[str], prior: dict[str, float]):
        self.labelset = labelset
        self.prior = prior
        self.val_ids = list(val_ids)
        self.train_ids = list(train_ids)
        self.y_val = labelset.targets([dict.fromkeys(captions.labels.get(r, []), 100.0) for r in self.val_ids],
                                      labelset.vocabulary)
        self.y_train = labelset.targets([dict.fromkeys(captions.labels.get(r, []), 100.0) for r in self.train_ids],
                                        labelset.vocabulary)
        self.train_texts = [captions.texts[r] for r in self.train_ids]

    @classmethod
    def create(cls, captions: CaptionTable, val_ids: Sequence[str], train_ids: Sequence[str],
               prior: dict[str, float]) -> ZeroShotMonitor | None:
        labelset = superclass_labelset(captions)
        if labelset is None or not val_ids or not train_ids:
            return None
        return cls(captions, labelset, val_ids, train_ids, prior)

    @torch.no_grad()
    def __call__(self, model: Any, val_signals: np.ndarray, train_signals: np.ndarray | None,
                 device: torch.device) -> dict[str, float]:
        from esi.eval.metrics import multilabel_auc
        from esi.model.embed import embed_texts
        from esi.zeroshot.classifier import (
            DEFAULT_CALIBRATION,
            DEFAULT_CLASS_TEXT,
            ZeroShotClassifier,
            prototype_classifier,
        )

        def embed(signals: np.ndarray) -> np.ndarray:
            chunks = [model.encode_ecg(torch.from_numpy(signals[i:i + 64]).to(device)).float().cpu().numpy()
                      for i in range(0, len(signals), 64)]
            return np.concatenate(chunks)

        ids = self.labelset.class_ids
        val = embed(val_signals)
        classifier = ZeroShotClassifier.build(model, self.labelset, class_text=DEFAULT_CLASS_TEXT,
                                              calibration=DEFAULT_CALIBRATION, prior=self.prior)
        out = {"val_zeroshot_superclass_auc": multilabel_auc(self.y_val, classifier.scores(val), ids)["macro_auc"]}
        texts = embed_texts(model, self.train_texts)
        centroid = prototype_classifier(self.labelset, texts, self.y_train)
        out["val_ref_caption_centroid_auc"] = multilabel_auc(self.y_val, centroid.scores(val), ids)["macro_auc"]
        if train_signals is not None:
            prototypes = prototype_classifier(self.labelset, embed(train_signals), self.y_train)
            out["val_ref_ecg_prototype_auc"] = multilabel_auc(self.y_val, prototypes.scores(val), ids)["macro_auc"]
        return out
