"""Zero-shot evaluation of a label set on a dataset: AUC on the test folds, F1 at thresholds chosen on other
folds, and the two references zero-shot should approach (caption centroid, ECG prototype)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from esi.eval.data import EvalData, resolve_labelset
from esi.eval.metrics import classification_report, multilabel_auc
from esi.serve.inference import ESIInference
from esi.zeroshot.classifier import (
    DEFAULT_CALIBRATION,
    DEFAULT_CLASS_TEXT,
    ZeroShotClassifier,
    calibrate,
    prototype_classifier,
)
from esi.zeroshot.labelsets import LabelSet


def reference_scores(
    inference: ESIInference, data: EvalData, resolved: LabelSet, y: np.ndarray, texts: Sequence[str | None],
    train: np.ndarray, model_key: str = "",
) -> dict[str, np.ndarray]:
    """Scores of the two references zero-shot should approach (class centres from the training folds):
    ``caption_centroid`` (class text = mean embedding of the class's training captions) and
    ``ecg_prototype`` (nearest class-mean ECG embedding)."""
    embeddings = data.embeddings(inference, model_key)
    out = {"ecg_prototype": prototype_classifier(resolved, embeddings[train], y[train]).cosine(embeddings)}
    with_text = train & np.array([bool(t) for t in texts], dtype=bool)
    if with_text.any():
        unique = list(dict.fromkeys(t for t, keep in zip(texts, with_text) if keep))
        vectors = dict(zip(unique, inference.embed_texts(unique)))
        text_embeddings = np.stack([vectors[t] if keep else np.zeros(inference.embed_dim, np.float32)
                                    for t, keep in zip(texts, with_text)])
        out["caption_centroid"] = prototype_classifier(resolved, text_embeddings[with_text],
                                                       y[with_text]).cosine(embeddings)
    return out


def zeroshot_evaluation(
    inference: ESIInference, data: EvalData, labelset: str | LabelSet, *, test_folds: Sequence[int] | None,
    threshold_folds: Sequence[int] | None, templates: str = "ecg", use_knowledge: bool = False,
    model_key: str = "", class_text: str | None = DEFAULT_CLASS_TEXT, calibration: str = DEFAULT_CALIBRATION,
    reference_texts: Sequence[str | None] | None = None, prototypes: bool = False,
) -> dict[str, Any]:
    """Zero-shot AUC on ``test_folds`` and F1 with thresholds chosen on ``threshold_folds``.

    ``reference_texts`` (one caption per record) adds the caption-centroid and ECG-prototype
    references, built on ``threshold_folds``; ``prototypes`` scores with the ECG prototypes instead
    of class text (few-shot from the threshold folds' example ECGs).
    """
    resolved = resolve_labelset(data, labelset)
    if use_knowledge and class_text in (None, DEFAULT_CLASS_TEXT):
        class_text = "knowledge"
    if not data.record_ids:
        raise ValueError(f"no readable {data.dataset} records to evaluate")
    y = resolved.targets(data.labels, data.vocabulary)
    labelled = np.array([bool(labels) for labels in data.labels], dtype=bool)
    examples = (data.fold_mask(threshold_folds) & ~data.fold_mask(test_folds) & labelled
                if threshold_folds is not None else np.zeros(len(y), dtype=bool))
    if prototypes:
        if not examples.any():
            raise ValueError("--prototypes needs labelled example records: pass --threshold-folds with labelled folds")
        classifier = prototype_classifier(resolved, data.embeddings(inference, model_key)[examples], y[examples],
                                          calibration)
    else:
        classifier = ZeroShotClassifier.build(inference.model, resolved, templates, class_text=class_text,
                                              calibration=calibration, prior=inference.label_prior)
    scores = classifier.scores(data.embeddings(inference, model_key))
    # A record without any label (e.g. an empty CinC #Dx) is unannotated, not negative for every class.
    labelled = np.array([bool(labels) for labels in data.labels], dtype=bool)
    test = data.fold_mask(test_folds) & labelled
    train = data.fold_mask(threshold_folds) & ~test & labelled if threshold_folds is not None else np.zeros_like(test)
    if not test.any():
        raise ValueError(f"no labelled {data.dataset} records in test folds {test_folds}")
    if train.any():
        report = classification_report(resolved.class_ids, y[test], scores[test], y[train], scores[train])
    else:
        report = classification_report(resolved.class_ids, y[test], scores[test])
        report["f1_note"] = "no threshold (training) records, so no F1: thresholds are never chosen on test labels"
    for class_id, cls in zip(resolved.class_ids, resolved.classes):
        report["per_class"][class_id]["display"] = cls.display
    if reference_texts is not None and train.any():
        references = reference_scores(inference, data, resolved, y, reference_texts, train, model_key)
        report["references"] = {
            name: {"macro_auc": ref["macro_auc"], "per_class_auc": ref["per_class_auc"]}
            for name, ref in ((n, multilabel_auc(y[test], calibrate(s[test], calibration), resolved.class_ids))
                              for n, s in references.items())}
    report.update({
        "labelset": resolved.name, "dataset": data.dataset, "test_folds": test_folds, "threshold_folds":
        threshold_folds if train.any() else None, "templates": templates, "knowledge": class_text == "knowledge",
        "class_text": classifier.class_text, "calibration": calibration,
        "score": f"{calibration} cosine similarity (ECG embedding vs {classifier.class_text} class embedding)",
        "skipped_classes": report.pop("skipped"),
        "n_unlabelled_excluded": int((data.fold_mask(test_folds) & ~labelled).sum()),
    })
    return report
