"""Evaluation metrics and the ``eval`` suite (zero-shot, linear probe, fine-tune, patient id, retrieval).

Metric conventions (kept identical across tasks so tables compare):

- AUC: ``sklearn.metrics.roc_auc_score`` per class; a class with no positive or no negative test
  record is skipped (listed under ``skipped`` with the reason) and left out of the macro mean.
- F1: each class's decision threshold is chosen on the *training* folds' scores (the threshold that
  maximises that class's F1 there), never on test labels, then applied to the test scores. Macro F1
  averages over the same classes as macro AUC.
- Recall@k: the fraction of queries whose own pair is among the top k.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from corpora.base import DatasetReader, ECGRecord, RecordError, Skip
from esi.inference import ESIInference, InputError, ModelInput, ResampledWarning
from esi.io import atomic_write_text, format_number
from esi.labelsets import LabelSet, load_labelset
from esi.zeroshot import (
    DEFAULT_CALIBRATION,
    DEFAULT_CLASS_TEXT,
    ZeroShotClassifier,
    calibrate,
    prototype_classifier,
)


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


def to_json(obj: Any) -> str:
    """JSON with NaN/inf written as null (strict JSON readers reject NaN)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float | np.floating):
            return None if not math.isfinite(float(value)) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, np.ndarray):
            return clean(value.tolist())
        return value

    return json.dumps(clean(obj), indent=2, ensure_ascii=False)


# ==== data loading shared by every task ==========================================================

@dataclass
class EvalData:
    """Records of one dataset fitted to a model's input, with what every task needs."""

    dataset: str
    vocabulary: str
    record_ids: list[str]
    signals: np.ndarray  # (N, 12, T) model input
    labels: list[dict[str, float]]
    folds: list[int | None]
    subjects: list[str | None]
    reports: list[str | None]
    records: list[ECGRecord] = field(default_factory=list)  # metadata (signal dropped)
    skipped: list[Skip] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)  # note -> how many records it applies to
    scp_statements: Path | None = None
    _embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def fold_mask(self, folds: Sequence[int] | None) -> np.ndarray:
        if folds is None:
            return np.ones(len(self.record_ids), dtype=bool)
        return np.array([f in set(folds) for f in self.folds], dtype=bool)

    def embeddings(self, inference: ESIInference, key: str = "") -> np.ndarray:
        """ECG embeddings under this model (cached per model key)."""
        if key not in self._embeddings:
            self._embeddings[key] = inference.embed_signals(self.signals)
        return self._embeddings[key]


def parse_folds(text: str | None) -> list[int] | None:
    """``"1-8"``, ``"9"``, ``"1,3,5-7"`` -> fold list; None/empty -> None (all)."""
    if text is None or not str(text).strip():
        return None
    folds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                folds.extend(range(low, high + 1))
            else:
                folds.append(int(part))
        except ValueError as err:
            raise ValueError(f"bad fold list {text!r}: use e.g. '1-8' or '9' or '1,3,5-7'") from err
    return sorted(set(folds))


def load_eval_data(
    reader: DatasetReader, model_input: ModelInput, *, folds: Sequence[int] | None = None,
    limit_per_fold_set: int | None = None, progress: bool = True,
) -> EvalData:
    """Read the records of ``folds`` (all when None), fit them to the model input, keep metadata.

    ``limit_per_fold_set`` keeps the first N records (file order) — for quick checks only.
    """
    from tqdm import tqdm

    wanted = set(folds) if folds is not None else None
    ids = []
    for record_id in reader.record_ids():
        if wanted is not None:
            try:
                fold = reader.read_metadata(record_id).fold
            except RecordError:
                fold = None
            if fold not in wanted:
                continue
        ids.append(record_id)
        if limit_per_fold_set is not None and len(ids) >= limit_per_fold_set:
            break
    data = EvalData(reader.name, reader.label_vocabulary, [], np.zeros((0, 12, model_input.n_samples), np.float32),
                    [], [], [], [], scp_statements=getattr(reader, "scp_statements_path", None))
    signals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResampledWarning)
        for record_id in tqdm(ids, disable=not progress, desc=f"reading {reader.name}", unit="ecg"):
            try:
                record = reader.read(record_id)
                prepared = model_input.fit(record, warn=False)
            except (RecordError, InputError) as err:
                reason = str(err).removeprefix(f"{record_id}: ")
                data.skipped.append(Skip(record_id, reason))
                continue
            for note in prepared.notes:
                key = note.split(" of ")[0] if note.startswith("cropped") else note
                data.notes[key] = data.notes.get(key, 0) + 1
            signals.append(prepared.signal)
            data.record_ids.append(record_id)
            data.labels.append(dict(record.labels))
            data.folds.append(record.fold)
            data.subjects.append(record.subject_id)
            data.reports.append(record.report)
            data.records.append(replace(record, signal=None))
    if signals:
        data.signals = np.stack(signals)
    return data


def merge_eval_data(parts: Sequence[EvalData]) -> EvalData:
    first = parts[0]
    merged = EvalData(first.dataset, first.vocabulary, [], np.concatenate([p.signals for p in parts]), [], [], [], [],
                      scp_statements=first.scp_statements)
    for part in parts:
        merged.record_ids += part.record_ids
        merged.labels += part.labels
        merged.folds += part.folds
        merged.subjects += part.subjects
        merged.reports += part.reports
        merged.records += part.records
        merged.skipped += part.skipped
        for note, count in part.notes.items():
            merged.notes[note] = merged.notes.get(note, 0) + count
    return merged


# ==== zero-shot ==================================================================================

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
    labelset = load_labelset(labelset) if isinstance(labelset, str) else labelset
    resolved = labelset.resolve(data.scp_statements) if labelset.needs_scp_statements else labelset.resolve()
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


# ==== linear probe, fine-tune, patient identification, retrieval ===================================

def _targets(data: EvalData, labelset: str) -> tuple[LabelSet, np.ndarray]:
    resolved = load_labelset(labelset)
    resolved = resolved.resolve(data.scp_statements) if resolved.needs_scp_statements else resolved.resolve()
    return resolved, resolved.targets(data.labels, data.vocabulary)


def probe_evaluation(
    inference: ESIInference, data: EvalData, labelset: str, *, train_folds: Sequence[int], test_folds: Sequence[int],
    fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2), model_key: str = "",
) -> dict[str, Any]:
    from esi.probe import linear_probe

    resolved, y = _targets(data, labelset)
    embeddings = data.embeddings(inference, model_key)
    train, test = data.fold_mask(train_folds), data.fold_mask(test_folds)
    results = linear_probe(embeddings[train], y[train], embeddings[test], y[test], resolved.class_ids,
                           fractions=fractions, seeds=seeds)
    return {"labelset": resolved.name, "fractions": results, "n_test_records": int(test.sum())}


def finetune_evaluation(
    inference: ESIInference, data: EvalData, labelset: str, *, train_folds: Sequence[int], test_folds: Sequence[int],
    epochs: int = 5, seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    from esi.finetune import FinetuneConfig, finetune_and_baseline

    resolved, y = _targets(data, labelset)
    train, test = data.fold_mask(train_folds), data.fold_mask(test_folds)
    result = finetune_and_baseline(
        inference.model.config.ecg, inference.model.ecg_encoder, data.signals[train], y[train],
        data.signals[test], y[test], resolved.class_ids, FinetuneConfig(epochs=epochs, seed=seed), progress=progress,
    )
    result["labelset"] = resolved.name
    return result


def _zscore(signals: np.ndarray) -> np.ndarray:
    mean = signals.mean(axis=(1, 2), keepdims=True)
    return ((signals - mean) / (signals.std(axis=(1, 2), keepdims=True) + 1e-6)).astype(np.float32)


def patient_id_evaluation(
    inference: ESIInference, data: EvalData, *, folds: Sequence[int] | None = None, model_key: str = "",
) -> dict[str, Any]:
    """Both protocols of :mod:`esi.patient_id` on the records of ``folds`` (all by default)."""
    from esi.patient_id import records_protocol, segments_protocol

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


def caption_texts(data: EvalData, kind: str, captions_file: str | Path | None = None) -> list[str | None]:
    """Per record the text used for retrieval: ``cqa`` (grounded CQA caption, or the ``caption`` column of
    a CQA Parquet file), or ``label_text`` (the dataset's own label wording, the no-CQA ablation text)."""
    if captions_file is not None:
        from esi.data import read_captions

        table = read_captions(captions_file, "caption" if kind == "cqa" else "label_text")
        return [table.texts.get(r) or table.texts.get(f"{data.dataset}:{r}") for r in data.record_ids]
    from cqa.caption import Captioner, label_text

    if kind == "label_text":
        return [label_text(r.labels, r.label_vocabulary, r.label_info) or None for r in data.records]
    if kind != "cqa":
        raise ValueError(f"caption kind must be 'cqa' or 'label_text', not {kind!r}")
    captioner = Captioner()
    return [captioner.caption_record(r).caption for r in data.records]


def retrieval_evaluation(
    inference: ESIInference, data: EvalData, texts: Sequence[str | None], *, folds: Sequence[int] | None,
    ks: Sequence[int] = (1, 5, 10), model_key: str = "",
) -> dict[str, Any]:
    """ECG -> caption and caption -> ECG recall@k over the held-out (record, caption) pairs.

    Records with identical caption text are interchangeable: retrieving any of them counts.
    """
    mask = data.fold_mask(folds) & np.array([bool(t) for t in texts], dtype=bool)
    if not mask.any():
        return {"n_pairs": 0}
    ecg = data.embeddings(inference, model_key)[mask]
    pair_texts = [t for t, keep in zip(texts, mask) if keep]
    unique = list(dict.fromkeys(pair_texts))
    text_embeddings = inference.embed_texts(unique)
    index = {t: i for i, t in enumerate(unique)}
    # ECG -> text: candidates are the distinct caption texts; caption -> ECG: candidates are all ECGs.
    ecg_to_text = ecg @ text_embeddings.T
    relevant_text = np.zeros_like(ecg_to_text, dtype=bool)
    relevant_text[np.arange(len(pair_texts)), [index[t] for t in pair_texts]] = True
    text_to_ecg = text_embeddings @ ecg.T
    owner = np.array([index[t] for t in pair_texts])
    relevant_ecg = owner[None, :] == np.arange(len(unique))[:, None]
    return {
        "folds": folds, "n_pairs": int(mask.sum()), "n_distinct_texts": len(unique),
        "ecg_to_text": recall_at_k(ecg_to_text, ks, relevant_text),
        "text_to_ecg": recall_at_k(text_to_ecg, ks, relevant_ecg),
        "chance_ecg_to_text@1": 1.0 / len(unique),
    }


# ==== query by text ===============================================================================

def query_set(path: str | Path | None = None) -> list[dict[str, str]]:
    """The class queries of ``esi/labelsets/queries/ptbxl.json`` (or a JSON file of the same shape)."""
    from esi.labelsets import labelsets_dir

    file = Path(path) if path else labelsets_dir() / "queries" / "ptbxl.json"
    queries = json.loads(file.read_text(encoding="utf-8")).get("queries")
    if not queries or not all(isinstance(q, dict) and "labelset" in q and "class" in q for q in queries):
        raise ValueError(f"{file}: 'queries' must be a list of {{labelset, class}} objects")
    return queries


def query_evaluation(
    inference: ESIInference, data: EvalData, *, folds: Sequence[int] | None, ks: Sequence[int] = (5, 10),
    query_text: str = "views", model_key: str = "", queries: Sequence[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Text->ECG precision@k of class queries (the class display name, as a user types it) over the
    records of ``folds``; each query's chance rate (its class prevalence there) is reported beside it."""
    mask = data.fold_mask(folds) & np.array([bool(labels) for labels in data.labels], dtype=bool)
    embeddings = data.embeddings(inference, model_key)[mask]
    labels = [lab for lab, keep in zip(data.labels, mask) if keep]
    per_query: dict[str, Any] = {}
    skipped: list[str] = []
    resolved_sets: dict[str, LabelSet] = {}
    for item in queries or query_set():
        if item["labelset"] not in resolved_sets:
            labelset = load_labelset(item["labelset"])
            resolved_sets[item["labelset"]] = (labelset.resolve(data.scp_statements) if labelset.needs_scp_statements
                                               else labelset.resolve())
        selected = resolved_sets[item["labelset"]].select([item["class"]])
        relevant = selected.targets(labels, data.vocabulary)[:, 0].astype(bool)
        query = item.get("query") or selected.classes[0].display
        order = np.argsort(-(embeddings @ inference.query_embedding(query, query_text)), kind="stable")
        if not relevant.any():  # nothing to find: left out of the means, listed
            skipped.append(query)
            continue
        row: dict[str, Any] = {"class": f"{item['labelset']}:{item['class']}", "n_relevant": int(relevant.sum()),
                               "chance": float(relevant.mean())}
        for k in ks:
            row[f"precision@{k}"] = float(relevant[order[:k]].mean())
            row[f"ceiling@{k}"] = min(k, int(relevant.sum())) / k  # the best any ranking can reach
        per_query[query] = row
    if not per_query:
        raise ValueError(f"no class query has a relevant record in folds {folds}")
    summary = {f"mean_{m}@{k}": float(np.mean([r[f"{m}@{k}"] for r in per_query.values()]))
               for k in ks for m in ("precision", "ceiling")}
    summary["mean_chance"] = float(np.mean([r["chance"] for r in per_query.values()]))
    return {"folds": folds, "n_records": int(mask.sum()), "query_text": query_text, **summary, "queries": per_query,
            "skipped_queries": skipped}


# ==== the whole suite ===========================================================================

EVAL_TASKS = ("zeroshot", "probe", "finetune", "patient_id", "retrieval", "query")
ZEROSHOT_SETS = ("superclass", "subclass", "form", "rhythm")


@dataclass
class EvalOptions:
    root: Path
    out: Path
    train_folds: list[int]
    test_folds: list[int]
    what: tuple[str, ...] = EVAL_TASKS
    cinc_root: Path | None = None
    captions: Path | None = None
    zeroshot_sets: tuple[str, ...] = ZEROSHOT_SETS
    probe_sets: tuple[str, ...] = ("superclass", "subclass", "form", "rhythm")
    finetune_set: str = "superclass"
    finetune_epochs: int = 5
    templates: str = "ecg"
    knowledge: bool = False
    class_text: str = DEFAULT_CLASS_TEXT
    calibration: str = DEFAULT_CALIBRATION
    query_text: str = "views"
    limit: int | None = None
    ptbxl_rate: int | None = None  # records100/records500 for every model; None: nearest each model's rate
    force: bool = False
    progress: bool = True


def _task_runs(options: EvalOptions) -> list[tuple[str, str]]:
    runs: list[tuple[str, str]] = []
    for task in options.what:
        if task == "zeroshot":
            runs += [("zeroshot", s) for s in options.zeroshot_sets]
            if options.cinc_root is not None:
                runs.append(("zeroshot", "cinc_scored"))
        elif task == "probe":
            runs += [("probe", s) for s in options.probe_sets]
        elif task == "finetune":
            runs.append(("finetune", options.finetune_set))
        elif task == "patient_id":
            runs.append(("patient_id", "all_folds"))
        elif task == "retrieval":
            runs += [("retrieval", "cqa"), ("retrieval", "label_text")]
        elif task == "query":
            runs.append(("query", "class_queries"))
        else:
            raise ValueError(f"unknown eval task {task!r}; choose from {', '.join(EVAL_TASKS)}")
    return runs


def run_evaluation(models: Sequence[tuple[str, str | Path]], options: EvalOptions) -> dict[str, Any]:
    """Every requested task for every model; each (model, task) result is saved as it finishes and
    reused on a rerun (resume) unless ``force``. Writes ``results.json`` and ``results.md``."""
    from corpora.cinc import CincReader
    from corpora.ptbxl import PTBXLReader

    runs = _task_runs(options)
    all_folds = sorted(set(options.train_folds) | set(options.test_folds))
    results: dict[str, Any] = {"models": {}, "options": {
        "root": str(options.root), "train_folds": options.train_folds, "test_folds": options.test_folds,
        "what": list(options.what), "cinc_root": str(options.cinc_root) if options.cinc_root else None,
        "captions": str(options.captions) if options.captions else "grounded CQA captions (cqa.caption, no LLM)",
        "templates": options.templates, "knowledge": options.knowledge, "class_text": options.class_text,
        "calibration": options.calibration, "query_text": options.query_text, "limit": options.limit,
        "ptbxl_rate": options.ptbxl_rate,
    }}
    data_cache: dict[tuple, EvalData] = {}
    text_cache: dict[str, list[str | None]] = {}
    for name, model_dir in models:
        inference = ESIInference(model_dir)
        model_input = inference.input  # models with the same input key share the loaded records
        model_results: dict[str, Any] = {"model_dir": str(model_dir)}
        results["models"][name] = model_results

        def ptbxl(model_input=model_input) -> EvalData:
            rate = options.ptbxl_rate or (100 if model_input.sampling_rate <= 100 else 500)
            cache_key = ("ptbxl", *model_input.key, rate)
            if cache_key not in data_cache:
                reader = PTBXLReader(options.root, rate=rate)
                parts = [load_eval_data(reader, model_input, folds=[f], limit_per_fold_set=options.limit,
                                        progress=options.progress) for f in all_folds] if options.limit else [
                    load_eval_data(reader, model_input, folds=all_folds, progress=options.progress)]
                data_cache[cache_key] = merge_eval_data(parts)
            return data_cache[cache_key]

        def cinc(model_input=model_input) -> EvalData:
            cache_key = ("cinc", *model_input.key)
            if cache_key not in data_cache:
                data_cache[cache_key] = load_eval_data(CincReader(options.cinc_root), model_input,
                                                       limit_per_fold_set=options.limit, progress=options.progress)
            return data_cache[cache_key]

        for task, variant in runs:
            partial = options.out / "partial" / name / f"{task}-{variant}.json"
            if partial.is_file() and not options.force:
                model_results.setdefault(task, {})[variant] = json.loads(partial.read_text(encoding="utf-8"))
                continue
            try:
                result = _run_task(task, variant, inference, options, name, ptbxl, cinc, text_cache)
            except (ValueError, RecordError) as err:  # e.g. no labelled records: recorded, retried on rerun
                model_results.setdefault(task, {})[variant] = {"error": str(err)}
                continue
            data = cinc() if variant == "cinc_scored" else ptbxl()
            result["skipped_records"] = [f"{s.record}: {s.reason}" for s in data.skipped]
            result["input_notes"] = dict(data.notes)
            atomic_write_text(partial, to_json(result))
            model_results.setdefault(task, {})[variant] = json.loads(to_json(result))
    atomic_write_text(options.out / "results.json", to_json(results))
    atomic_write_text(options.out / "results.md", markdown_table(results))
    return results


def _run_task(task: str, variant: str, inference: ESIInference, options: EvalOptions, name: str, ptbxl, cinc,
              text_cache: dict[str, list[str | None]]) -> dict[str, Any]:
    """One (task, variant) of the suite for one model."""
    text_options = {"templates": options.templates, "use_knowledge": options.knowledge,
                    "class_text": options.class_text, "calibration": options.calibration}
    if task == "zeroshot" and variant == "cinc_scored":
        data = cinc()
        result = zeroshot_evaluation(inference, data, variant, test_folds=None, threshold_folds=None,
                                     model_key=name, **text_options)
    elif task == "zeroshot":
        data = ptbxl()
        text_key = f"cqa:{id(data)}"
        if text_key not in text_cache:
            text_cache[text_key] = caption_texts(data, "cqa", options.captions)
        result = zeroshot_evaluation(inference, data, variant, test_folds=options.test_folds,
                                     threshold_folds=options.train_folds, model_key=name,
                                     reference_texts=text_cache[text_key], **text_options)
    elif task == "query":
        result = query_evaluation(inference, ptbxl(), folds=options.test_folds, query_text=options.query_text,
                                  model_key=name)
    elif task == "probe":
        result = probe_evaluation(inference, ptbxl(), variant, train_folds=options.train_folds,
                                  test_folds=options.test_folds, model_key=name)
    elif task == "finetune":
        result = finetune_evaluation(inference, ptbxl(), variant, train_folds=options.train_folds,
                                     test_folds=options.test_folds, epochs=options.finetune_epochs,
                                     progress=options.progress)
    elif task == "patient_id":
        result = patient_id_evaluation(inference, ptbxl(), folds=None, model_key=name)
    else:
        data = ptbxl()
        text_key = f"{variant}:{id(data)}"
        if text_key not in text_cache:
            text_cache[text_key] = caption_texts(data, variant, options.captions)
        result = retrieval_evaluation(inference, data, text_cache[text_key], folds=options.test_folds,
                                      model_key=name)
    return result


def summary_rows(model_results: dict[str, Any]) -> dict[str, Any]:
    """Flat ``metric -> value`` view of one model's results (the rows of the Markdown table)."""
    rows: dict[str, Any] = {}
    for variant, r in model_results.get("zeroshot", {}).items():
        rows[f"zero-shot {variant}: macro AUC"] = r.get("macro_auc")
        rows[f"zero-shot {variant}: macro F1"] = r.get("macro_f1")
        for reference, ref in r.get("references", {}).items():
            rows[f"reference {variant} ({reference.replace('_', '-')}): macro AUC"] = ref.get("macro_auc")
    for r in model_results.get("query", {}).values():
        for k in (5, 10):
            rows[f"query by text: mean precision@{k} (chance {format_number(r.get('mean_chance'))}, best possible "
                 f"{format_number(r.get(f'mean_ceiling@{k}'))})"] = r.get(f"mean_precision@{k}")
        for query, q in r.get("queries", {}).items():
            rows[f"query \"{query}\": precision@5 (chance {format_number(q.get('chance'))})"] = q.get("precision@5")
    for variant, r in model_results.get("probe", {}).items():
        for fraction, f in r.get("fractions", {}).items():
            rows[f"linear probe {variant} {float(fraction):.0%}: macro AUC"] = f.get("macro_auc")
    for variant, r in model_results.get("finetune", {}).items():
        for run in ("esi_init", "random_init"):
            if run in r:
                rows[f"fine-tune {variant} ({run.replace('_', ' ')}): macro AUC"] = r[run].get("macro_auc")
                rows[f"fine-tune {variant} ({run.replace('_', ' ')}): macro F1"] = r[run].get("macro_f1")
    for r in model_results.get("patient_id", {}).values():
        for mode in ("records", "segments"):
            rows[f"patient id ({mode}): top-1 accuracy"] = r[mode].get("top1_accuracy")
            rows[f"patient id ({mode}): pair AUC"] = r[mode].get("pair_auc")
    for variant, r in model_results.get("retrieval", {}).items():
        for direction in ("ecg_to_text", "text_to_ecg"):
            for metric, value in r.get(direction, {}).items():
                rows[f"retrieval {variant} {direction.replace('_', '→').replace('→to→', '→')}: {metric}"] = value
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    """One row per metric, one column per model (so a CQA-vs-label-text comparison reads across)."""
    names = list(results["models"])
    rows = {name: summary_rows(results["models"][name]) for name in names}
    metrics = list(dict.fromkeys(m for name in names for m in rows[name]))
    opts = results["options"]
    lines = [
        "# ESI evaluation", "",
        f"PTB-XL root `{opts['root']}`; train folds {opts['train_folds']}, test folds {opts['test_folds']}. "
        "Zero-shot F1 thresholds are chosen on the training folds' scores; AUC skips classes without "
        "positive or negative test records (see results.json). PTB-XL: Wagner et al., Sci Data 2020 (CC BY 4.0).",
        "", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
    ]
    lines += [f"| {m} | " + " | ".join(format_number(rows[n].get(m)) for n in names) + " |" for m in metrics]
    return "\n".join(lines) + "\n"
