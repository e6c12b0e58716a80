"""The records every evaluation task reads: one dataset fitted to a model's input, with labels, folds,
subjects and reports, and the ECG embeddings cached per model.

Loading goes through :meth:`esi.serve.inference.ModelInput.fit`, the serving path, so an evaluated
record is exactly what a served record would be.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from corpora.base import DatasetReader, ECGRecord, RecordError, Skip
from esi.serve.inference import ESIInference, InputError, ModelInput, ResampledWarning
from esi.zeroshot.labelsets import LabelSet, load_labelset


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


def resolve_labelset(data: EvalData, labelset: str | LabelSet) -> LabelSet:
    """A label set (name, alias, JSON path or object) resolved against the data (PTB-XL needs its
    ``scp_statements.csv`` to know which statements form a class)."""
    labelset = load_labelset(labelset) if isinstance(labelset, str) else labelset
    return labelset.resolve(data.scp_statements) if labelset.needs_scp_statements else labelset.resolve()


def labelset_targets(data: EvalData, labelset: str) -> tuple[LabelSet, np.ndarray]:
    """The resolved label set and the (records, classes) multi-hot targets of the data under it."""
    resolved = resolve_labelset(data, labelset)
    return resolved, resolved.targets(data.labels, data.vocabulary)
