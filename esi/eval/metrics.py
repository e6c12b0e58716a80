"""The metrics every evaluation task reports (zero-shot, linear probe, fine-tune, retrieval; also the training monitor).

Metric conventions (kept identical across tasks so tables compare):

- AUC: ``sklearn.metrics.roc_auc_score`` per class; a class with no positive or no negative test
  record is skipped (listed under ``skipped`` with the reason) and left out of the macro mean.
- F1: each class's decision threshold is chosen on the *training* folds' scores (the threshold that
  maximises that class's F1 there), never on test labels, then applied to the test scores. Macro F1
  averages over the same classes as macro AUC.
- Recall@k: the fraction of queries whose own pair is among the top k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score


def _as_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be (records, classes); got shape {array.shape}")
    return array


def multilabel_auc(y_true: np.ndarray, scores: np.ndarray, class_ids: Sequence[str]) -> dict[str, Any]:
    """Per-class ROC AUC and their macro mean; classes without both outcomes are skipped and reported."""
    y_true, scores = _as_2d(y_true, "y_true"), _as_2d(scores, "scores")
    if y_true.shape != scores.shape or y_true.shape[1] != len(class_ids):
        raise ValueError(f"shape mismatch: y_true {y_true.shape}, scores {scores.shape}, {len(class_ids)} classes")
    per_class: dict[str, float] = {}
    skipped: list[dict[str, str]] = []
    for j, class_id in enumerate(class_ids):
        positives = int(y_true[:, j].sum())
        if positives == 0 or positives == len(y_true):
            reason = "no positive test record" if positives == 0 else "no negative test record"
            skipped.append({"class": class_id, "reason": reason})
            continue
        per_class[class_id] = float(roc_auc_score(y_true[:, j], scores[:, j]))
    macro = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return {"macro_auc": macro, "per_class_auc": per_class, "skipped": skipped}


def best_f1_thresholds(y_train: np.ndarray, train_scores: np.ndarray) -> np.ndarray:
    """Per class, the score threshold that maximises F1 on the training data.

    Only training labels and scores are used. A class with no training positive gets +inf
    (never predicted) because no threshold can be justified from the data.
    """
    y_train, train_scores = _as_2d(y_train, "y_train"), _as_2d(train_scores, "train_scores")
    thresholds = np.full(y_train.shape[1], np.inf)
    for j in range(y_train.shape[1]):
        if y_train[:, j].sum() == 0:
            continue
        precision, recall, cuts = precision_recall_curve(y_train[:, j], train_scores[:, j])
        f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
        best = int(np.argmax(f1[:-1])) if len(cuts) else 0
        thresholds[j] = cuts[best] if len(cuts) else -np.inf
    return thresholds


def f1_at_thresholds(
    y_true: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, class_ids: Sequence[str],
    evaluated: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class F1 of ``scores >= thresholds``; macro over ``evaluated`` classes (default: all)."""
    y_true, scores = _as_2d(y_true, "y_true"), _as_2d(scores, "scores")
    predictions = scores >= np.asarray(thresholds)[None, :]
    per_class = {
        class_id: float(f1_score(y_true[:, j], predictions[:, j], zero_division=0))
        for j, class_id in enumerate(class_ids)
    }
    keep = list(evaluated) if evaluated is not None else list(class_ids)
    macro = float(np.mean([per_class[c] for c in keep])) if keep else math.nan
    return {"macro_f1": macro, "per_class_f1": per_class}


def classification_report(
    class_ids: Sequence[str], y_test: np.ndarray, test_scores: np.ndarray,
    y_train: np.ndarray | None = None, train_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """AUC on the test set plus, when training scores are given, F1 at training-chosen thresholds."""
    report = multilabel_auc(y_test, test_scores, class_ids)
    report["n_records"] = int(len(y_test))
    if y_train is not None and train_scores is not None:
        thresholds = best_f1_thresholds(y_train, train_scores)
        f1 = f1_at_thresholds(y_test, test_scores, thresholds, class_ids, evaluated=list(report["per_class_auc"]))
        report["macro_f1"] = f1["macro_f1"]
        report["per_class_f1"] = f1["per_class_f1"]
        report["thresholds"] = {c: float(t) for c, t in zip(class_ids, thresholds)}
        report["n_train_records"] = int(len(y_train))
    else:
        report["macro_f1"] = math.nan
    positives = np.asarray(y_test).sum(axis=0)
    report["per_class"] = {
        c: {
            "auc": report["per_class_auc"].get(c),
            "f1": report.get("per_class_f1", {}).get(c),
            "threshold": report.get("thresholds", {}).get(c),
            "n_positive": int(positives[j]),
        }
        for j, c in enumerate(class_ids)
    }
    return report


def recall_at_k(
    similarity: np.ndarray, ks: Sequence[int] = (1, 5, 10), relevant: np.ndarray | None = None
) -> dict[str, float]:
    """Recall@k for paired retrieval (rows: queries, columns: items).

    By default query i's only correct item is item i. ``relevant`` (bool, same shape) marks every
    correct item, e.g. all ECGs whose caption text is identical to the query caption: a hit on any of
    them counts. A query succeeds at k when fewer than k non-relevant items score strictly above its
    best relevant item.
    """
    similarity = _as_2d(similarity, "similarity")
    if relevant is None:
        if similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"paired retrieval needs a square similarity matrix, got {similarity.shape}")
        relevant = np.eye(similarity.shape[0], dtype=bool)
    relevant = np.asarray(relevant, dtype=bool)
    if relevant.shape != similarity.shape or not relevant.any(axis=1).all():
        raise ValueError("relevant must match the similarity shape and mark at least one item per query")
    best_relevant = np.where(relevant, similarity, -np.inf).max(axis=1, keepdims=True)
    rank = ((similarity > best_relevant) & ~relevant).sum(axis=1)
    return {f"recall@{k}": float(np.mean(rank < k)) for k in ks}
