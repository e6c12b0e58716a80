"""One-shot patient identification from ESI ECG embeddings (adapted from the ESI paper).

Protocol (documented because the paper's exact split cannot be reproduced on the PTB-XL subset):

- ``records`` mode, the main figure: patients with two or more records. Each patient is *enrolled*
  with one record (the lowest record id); every other record of every patient in the set is
  enrolled too as a distractor when the patient has only one record. Each remaining record of a
  multi-record patient is a *query*, identified as the enrolled record with the highest cosine
  similarity among all enrolled. Top-1 accuracy = fraction of queries whose nearest enrolment
  belongs to the same patient.
- ``segments`` mode (one record per patient, so every patient counts): the first half of the
  record (e.g. 0-5 s of a 10-s ECG) is enrolled, the second half is the query.
- AUC (both modes): ROC AUC of the cosine similarity for separating same-patient from
  different-patient (query, enrolment) pairs, over all pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from esi.eval.data import EvalData
from esi.serve.inference import ESIInference


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)


def identify(
    query_embeddings: np.ndarray, query_patients: Sequence[str],
    gallery_embeddings: np.ndarray, gallery_patients: Sequence[str], topk: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Top-k identification accuracy and same-vs-different-patient pair AUC."""
    if len(query_patients) == 0 or len(gallery_patients) == 0:
        return {"n_queries": 0, "n_enrolled": len(gallery_patients), "top1_accuracy": math.nan, "pair_auc": math.nan}
    similarity = _unit(query_embeddings) @ _unit(gallery_embeddings).T
    gallery = np.asarray(gallery_patients, dtype=object)
    same = np.asarray(query_patients, dtype=object)[:, None] == gallery[None, :]
    if not same.any(axis=1).all():
        raise ValueError("every query patient must be enrolled")
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(same, order, axis=1)
    out: dict[str, Any] = {"n_queries": int(len(query_patients)), "n_enrolled": int(len(gallery))}
    for k in topk:
        out[f"top{k}_accuracy"] = float(hits[:, :k].any(axis=1).mean())
    labels, scores = same.ravel(), similarity.ravel()
    out["pair_auc"] = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else math.nan
    out["chance_top1"] = float(np.mean(1.0 / same.shape[1] * same.sum(axis=1)))
    return out


def records_protocol(
    embeddings: np.ndarray, patients: Sequence[str], record_ids: Sequence[str]
) -> dict[str, Any]:
    """``records`` mode: enrol each patient's first record, query with their other records."""
    by_patient: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        if patient is None:
            continue
        by_patient.setdefault(str(patient), []).append(index)
    enrolled, queries = [], []
    for indices in by_patient.values():
        indices = sorted(indices, key=lambda i: _sort_key(record_ids[i]))
        enrolled.append(indices[0])
        queries.extend(indices[1:])
    patient_array = [str(p) for p in patients]
    result = identify(
        embeddings[queries], [patient_array[i] for i in queries],
        embeddings[enrolled], [patient_array[i] for i in enrolled],
    )
    result["n_patients_with_repeats"] = int(sum(len(v) > 1 for v in by_patient.values()))
    result["mode"] = "records"
    return result


def segments_protocol(
    first_half_embeddings: np.ndarray, second_half_embeddings: np.ndarray, patients: Sequence[str]
) -> dict[str, Any]:
    """``segments`` mode: one record per patient; enrol its first half, query with its second half."""
    seen: dict[str, int] = {}
    for index, patient in enumerate(patients):
        if patient is not None and str(patient) not in seen:
            seen[str(patient)] = index
    keep = list(seen.values())
    ids = [str(patients[i]) for i in keep]
    result = identify(second_half_embeddings[keep], ids, first_half_embeddings[keep], ids)
    result["mode"] = "segments"
    return result


def _sort_key(record_id: str) -> tuple[float, str]:
    """Numeric ids sort numerically (PTB-XL ecg_id), others lexically."""
    return (int(record_id), "") if str(record_id).isdigit() else (math.inf, str(record_id))


def _zscore(signals: np.ndarray) -> np.ndarray:
    mean = signals.mean(axis=(1, 2), keepdims=True)
    return ((signals - mean) / (signals.std(axis=(1, 2), keepdims=True) + 1e-6)).astype(np.float32)


def patient_id_evaluation(
    inference: ESIInference, data: EvalData, *, folds: Sequence[int] | None = None, model_key: str = "",
) -> dict[str, Any]:
    """Both protocols of :mod:`esi.eval.patient_id` on the records of ``folds`` (all by default)."""
    mask = data.fold_mask(folds)
    embeddings = data.embeddings(inference, model_key)[mask]
    subjects = [s for s, keep in zip(data.subjects, mask) if keep]
    ids = [r for r, keep in zip(data.record_ids, mask) if keep]
    half = data.signals.shape[2] // 2
    signals = data.signals[mask]
    first = inference.embed_signals(_zscore(signals[:, :, :half]))
    second = inference.embed_signals(_zscore(signals[:, :, half:2 * half]))
    return {
        "folds": folds,
        "records": records_protocol(embeddings, subjects, ids),
        "segments": segments_protocol(first, second, subjects),
        "segment_seconds": half / inference.sampling_rate,
    }
