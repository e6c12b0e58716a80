"""Linear probe on frozen ESI ECG embeddings (the paper's "linear probing" protocol).

One-vs-rest logistic regression (sklearn) on standardised embeddings, trained on a seeded
random subset of the training folds (1 %, 10 %, 100 % of the records), scored on the test folds.
Small fractions are repeated over several seeds and averaged, because which few records land
in a 1 % subset changes the result a lot. F1 thresholds come from the probe's own scores on its
training subset (in-sample; no test label is used).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from esi.eval.data import EvalData, labelset_targets
from esi.eval.metrics import classification_report
from esi.serve.inference import ESIInference


def subset_indices(n_records: int, fraction: float, seed: int, minimum: int = 2) -> np.ndarray:
    """A seeded random subset of ``fraction`` of ``n_records`` indices (at least ``minimum``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    size = min(n_records, max(minimum, int(round(fraction * n_records))))
    if fraction == 1:
        return np.arange(n_records)
    return np.sort(np.random.default_rng(seed).choice(n_records, size=size, replace=False))


def fit_probe(train_embeddings: np.ndarray, y_train: np.ndarray, C: float = 1.0, seed: int = 0):
    """Fit the standardise + one-vs-rest logistic regression probe; constant columns are allowed."""
    probe = make_pipeline(
        StandardScaler(),
        OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000, random_state=seed)),
    )
    with warnings.catch_warnings():
        # A class absent from a tiny subset becomes a constant predictor; sklearn warns about it.
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        probe.fit(train_embeddings, y_train)
    return probe


def probe_scores(probe, embeddings: np.ndarray) -> np.ndarray:
    return np.asarray(probe.predict_proba(embeddings), dtype=np.float64)


def linear_probe(
    train_embeddings: np.ndarray, y_train: np.ndarray, test_embeddings: np.ndarray, y_test: np.ndarray,
    class_ids: Sequence[str], fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2),
    C: float = 1.0,
) -> dict[str, Any]:
    """Probe results per training fraction: mean macro AUC / F1 over seeds plus each run's report."""
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    results: dict[str, Any] = {}
    for fraction in fractions:
        runs = []
        for seed in seeds if fraction < 1 else seeds[:1]:
            index = subset_indices(len(y_train), fraction, seed)
            probe = fit_probe(train_embeddings[index], y_train[index], C=C, seed=seed)
            report = classification_report(
                class_ids, y_test, probe_scores(probe, test_embeddings),
                y_train[index], probe_scores(probe, train_embeddings[index]),
            )
            report["seed"] = seed
            report["n_train_records"] = int(len(index))
            runs.append(report)
        aucs = [r["macro_auc"] for r in runs if not math.isnan(r["macro_auc"])]
        f1s = [r["macro_f1"] for r in runs if not math.isnan(r["macro_f1"])]
        results[f"{fraction:g}"] = {
            "fraction": fraction,
            "n_train_records": runs[0]["n_train_records"],
            "macro_auc": float(np.mean(aucs)) if aucs else math.nan,
            "macro_auc_std": float(np.std(aucs)) if aucs else math.nan,
            "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
            "runs": runs,
        }
    return results


def probe_evaluation(
    inference: ESIInference, data: EvalData, labelset: str, *, train_folds: Sequence[int], test_folds: Sequence[int],
    fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2), model_key: str = "",
) -> dict[str, Any]:
    """Linear probes on the model's frozen ECG embeddings (train folds -> test folds), per training fraction."""
    resolved, y = labelset_targets(data, labelset)
    embeddings = data.embeddings(inference, model_key)
    train, test = data.fold_mask(train_folds), data.fold_mask(test_folds)
    results = linear_probe(embeddings[train], y[train], embeddings[test], y[test], resolved.class_ids,
                           fractions=fractions, seeds=seeds)
    return {"labelset": resolved.name, "fractions": results, "n_test_records": int(test.sum())}
