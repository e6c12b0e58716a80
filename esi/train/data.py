"""Training pairs: ECG signals (corpora export Parquet) joined by ``record_id`` with captions (CQA Parquet).

Signal schema: :data:`corpora.export.SCHEMA` (written by ``corpora export``);
training reads :data:`SIGNAL_COLUMNS` of it. Each row goes through the model-input stage of the one
signal transform (:func:`corpora.preprocess.model_input`), as a served record does after its export
stage. Caption schema: record_id, caption, label_text (no_cqa ablation), fold.

Both inputs may be one Parquet file or a directory of them. The join is reported, never silent:
caption rows without a signal and signals without a caption (within the selected folds) are
counted in :class:`JoinStats`. Two sources share one interface (``steps_per_epoch``,
``batches(epoch, start_batch)``), and both derive the order from ``(seed, epoch)`` only, so a
resumed run replays exactly the batches an uninterrupted run would see:

* :class:`InMemoryPairs` holds the matched, preprocessed signals as one array (PTB-XL-sized data).
* :class:`StreamingPairs` reads row groups in a seeded order through a seeded shuffle buffer in
  bounded memory (MIMIC-IV-ECG-sized data); row groups are sharded over DDP ranks.

Captions are held in memory (text only, ~1 KB each: under 1 GB even for 800k records).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from corpora.base import RecordError
from corpora.export import SCHEMA as SIGNAL_SCHEMA
from corpora.preprocess import model_input
from corpora.preprocessors import Pipeline

log = logging.getLogger(__name__)

SIGNAL_COLUMNS = ("record_id", "fold", "sampling_rate", "n_leads", "n_samples", "signal")
assert set(SIGNAL_COLUMNS) <= set(SIGNAL_SCHEMA.names)
N_LEADS = 12


class DataError(ValueError):
    """Unusable training input (missing file/column, malformed record), naming the file or record."""


@dataclass
class JoinStats:
    signals_in_folds: int = 0
    captions_in_folds: int = 0
    pairs: int = 0
    captions_without_signal: int = 0
    signals_without_caption: int = 0
    empty_captions: int = 0
    skipped_records: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"signals_in_folds": self.signals_in_folds, "captions_in_folds": self.captions_in_folds,
                "pairs": self.pairs, "captions_without_signal": self.captions_without_signal,
                "signals_without_caption": self.signals_without_caption, "empty_captions": self.empty_captions,
                "skipped_records": len(self.skipped_records),
                "skipped_examples": [f"{r}: {why}" for r, why in self.skipped_records[:10]]}


@dataclass
class Batch:
    signals: torch.Tensor  # (B, 12, T) float32
    texts: list[str]
    record_ids: list[str]
    finding_sets: list[tuple[str, ...]] | None = None  # per row, for the label-aware contrastive loss
    captions: list[str] | None = None  # the full captions (the decoder's targets) when texts are views


@dataclass
class CaptionTable:
    """record_id -> (text, fold) for the chosen text column, plus finding sets and view material."""

    texts: dict[str, str]
    folds: dict[str, int | None]
    empty: int
    finding_sets: dict[str, tuple[str, ...]] | None = None  # None: the Parquet has no finding codes
    records: dict[str, Any] = field(default_factory=dict)  # record_id -> esi.train.views.RecordText (with_views)
    views: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # record_id -> kind -> texts
    labels: dict[str, list[str]] = field(default_factory=dict)  # record_id -> native label codes
    terms: dict[str, dict[str, str]] = field(default_factory=dict)  # code -> its hierarchy names
    generator: Any = None  # the esi.train.views.ViewGenerator that draws from ``views`` (set by use_views)

    def label_prior(self, folds: Sequence[int] | None, exclude: Sequence[int] = ()) -> dict[str, Any]:
        """How often each native label code occurs in the selected folds (saved with a model as
        ``label_prior.json``; the ``views`` zero-shot class text weighs a class's members by it)."""
        counts: dict[str, int] = {}
        n = 0
        for record_id, codes in self.labels.items():
            if not fold_selected(self.folds.get(record_id), folds, exclude):
                continue
            n += 1
            for code in codes:
                counts[code] = counts.get(code, 0) + 1
        return {"n_records": n, "folds": None if folds is None else list(folds), "labels": dict(sorted(counts.items())),
                "terms": {code: self.terms[code] for code in sorted(counts) if code in self.terms}}

    def use_views(self, generator: Any) -> None:
        """Build every record's fixed view set (needs ``read_captions(..., with_views=True)``)."""
        if not self.records:
            raise DataError("caption views need the caption rows' findings; read_captions(with_views=True)")
        self.views = {rid: generator.views(record) for rid, record in self.records.items() if rid in self.texts}
        self.generator = generator

    def text(self, record_id: str, key: tuple[Any, ...]) -> str:
        """The record's text for one draw: its caption, or a seeded view when views are on."""
        views = self.views.get(record_id)
        return self.generator.draw(views, key) if views else self.texts[record_id]

    def all_texts(self) -> list[str]:
        """Every text a step can draw (the frozen text tower's cache is filled with these)."""
        out = list(self.texts.values())
        for views in self.views.values():
            for texts in views.values():
                out.extend(texts)
        return list(dict.fromkeys(out))


def parquet_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if files:
            return files
        raise DataError(f"{path}: directory holds no .parquet files")
    raise DataError(f"{path}: no such file or directory")


def export_preprocess(path: str | Path) -> dict[str, Any] | None:
    """The ``Preprocess`` parameters a signal export was made with (``corpora export`` writes them to
    ``export_config.json`` beside its shards), so a trained model can re-apply them to raw records.

    None when no export config is found (a hand-made Parquet file); several exports with different
    preprocessing in one data directory are an error, since no single transform would match them.
    """
    found: dict[str, dict[str, Any]] = {}
    for folder in sorted({file.parent for file in parquet_files(path)}):
        config_file = folder / "export_config.json"
        if config_file.is_file():
            try:
                params = json.loads(config_file.read_text(encoding="utf-8"))["preprocess"]
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{config_file}: unreadable export config ({err})") from err
            found[str(folder)] = params
    distinct = {json.dumps(p, sort_keys=True) for p in found.values()}
    if len(distinct) > 1:
        raise DataError(f"{path}: exports with different preprocessing in one data set ({', '.join(found)}); "
                        "train on one export, or re-export them with the same options")
    return next(iter(found.values())) if found else None


def _require_columns(file: Path, schema: pa.Schema, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}; has {schema.names}")


VIEW_COLUMNS = ("findings", "label_terms", "sources", "age", "sex")


def _finding_codes(row: dict[str, Any]) -> tuple[str, ...] | None:
    if row.get("finding_codes") is not None:
        return tuple(sorted(set(row["finding_codes"])))
    if row.get("findings") is not None:
        return tuple(sorted({f["id"] for f in json.loads(row["findings"])}))
    return None


def read_captions(path: str | Path, text_column: str = "caption", with_views: bool = False) -> CaptionTable:
    """Load the caption column (``caption``, or ``label_text`` for the no_cqa ablation).

    Also reads each row's finding set (``finding_codes``, else the ``findings`` JSON) for the
    label-aware loss; a table without either keeps ``finding_sets`` None and says so in a warning.
    ``with_views`` keeps the rows' findings, label terms and descriptions for the caption views.
    """
    from esi.train.views import record_text

    texts: dict[str, str] = {}
    folds: dict[str, int | None] = {}
    finding_sets: dict[str, tuple[str, ...]] = {}
    records: dict[str, Any] = {}
    labels: dict[str, list[str]] = {}
    terms: dict[str, dict[str, str]] = {}
    have_findings = True
    empty = 0
    for file in parquet_files(path):
        schema = pq.read_schema(file)
        _require_columns(file, schema, ["record_id", text_column])
        optional = ["fold", "finding_codes", "findings", "labels", "label_terms"] + (list(VIEW_COLUMNS) + ["caption"] if with_views else [])
        columns = list(dict.fromkeys(["record_id", text_column] + [c for c in optional if c in schema.names]))
        if "finding_codes" not in schema.names and "findings" not in schema.names:
            have_findings = False
            log.warning("%s has no finding_codes (nor findings) column: the label-aware contrastive loss and "
                        "caption views are off for it; re-caption with `cqa caption` to add them", file)
        table = pq.read_table(file, columns=columns)
        ids = table.column("record_id").to_pylist()
        values = table.column(text_column).to_pylist()
        fold_values = table.column("fold").to_pylist() if "fold" in columns else [None] * len(ids)
        rows = table.to_pylist()
        for record_id, text, fold, row in zip(ids, values, fold_values, rows):
            if record_id is None:
                raise DataError(f"{file}: a caption row has a null record_id")
            record_id = str(record_id)
            if text is None or not str(text).strip():
                empty += 1
                continue
            if record_id in texts:
                raise DataError(f"{file}: duplicate caption for record {record_id!r}")
            texts[record_id] = str(text)
            folds[record_id] = None if fold is None else int(fold)
            if row.get("labels"):
                try:
                    labels[record_id] = [str(code) for code in json.loads(row["labels"])]
                except (ValueError, TypeError) as err:
                    raise DataError(f"{file}: record {record_id!r} has unreadable labels JSON ({err})") from err
            if row.get("label_terms"):
                terms.update(json.loads(row["label_terms"]))
            codes = _finding_codes(row)
            if codes is not None:
                finding_sets[record_id] = codes
            if with_views and "findings" in row:
                # the view's "caption" is the trained text column (label_text for the no-CQA ablation), and
                # that ablation gets no CQA waveform descriptions either
                record = {**row, "caption": texts[record_id]}
                if text_column != "caption":
                    record["sources"] = None
                records[record_id] = record_text(record)
    return CaptionTable(texts, folds, empty, finding_sets if have_findings else None, records, labels=labels, terms=terms)


def fold_selected(fold: int | None, folds: Sequence[int] | None, exclude: Sequence[int] = ()) -> bool:
    """``folds=None`` selects every record whose fold is not in ``exclude`` (e.g. MIMIC, fold null)."""
    if folds is None:
        return fold is None or fold not in exclude
    return fold is not None and fold in folds


def preprocess_signal(flat: np.ndarray, record_id: str, n_leads: int, n_samples: int, sampling_rate: float,
                      target_rate: float, target_samples: int, pipeline: Pipeline | None = None) -> np.ndarray:
    """(12, target_samples) float32: one exported row checked, reshaped and run through the model-input
    stage (:func:`corpora.preprocess.model_input`: NaN repair, resample, crop/pad, z-score over the record).

    ``pipeline`` is that stage prebuilt for ``(target_rate, target_samples)``, so a loader builds it once.
    """
    if n_leads != N_LEADS:
        raise DataError(f"record {record_id}: has {n_leads} leads, ESI needs {N_LEADS}")
    if flat.size != n_leads * n_samples:
        raise DataError(f"record {record_id}: signal has {flat.size} values, expected n_leads*n_samples = "
                        f"{n_leads}*{n_samples}")
    if not np.isfinite(sampling_rate) or sampling_rate <= 0:
        raise DataError(f"record {record_id}: invalid sampling_rate {sampling_rate}")
    signal = flat.reshape(n_leads, n_samples)
    if not np.isfinite(signal).any():
        raise DataError(f"record {record_id}: signal has no finite values")
    try:
        return (pipeline or model_input(target_rate, target_samples))(signal, sampling_rate, record_id)
    except RecordError as err:
        raise DataError(f"record {err}") from err


def _signal_rows(batch: pa.RecordBatch) -> Iterator[tuple[str, int | None, float, int, int, np.ndarray]]:
    column = batch.column("signal")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    ids = batch.column("record_id").to_pylist()
    folds = batch.column("fold").to_pylist()
    rates = batch.column("sampling_rate").to_pylist()
    leads = batch.column("n_leads").to_pylist()
    samples = batch.column("n_samples").to_pylist()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    for i, record_id in enumerate(ids):
        if not valid[i]:
            yield str(record_id), folds[i], rates[i], leads[i], samples[i], np.empty(0, np.float32)
            continue
        yield str(record_id), folds[i], rates[i], leads[i], samples[i], values[offsets[i]:offsets[i + 1]]


class _PairSourceBase:
    """Shared join bookkeeping: scan ids/folds of every signal file without reading signals."""

    def __init__(self, signals_path: str | Path, captions: CaptionTable, folds: Sequence[int] | None,
                 exclude_folds: Sequence[int], target_rate: float, target_samples: int, seed: int):
        self.files = parquet_files(signals_path)
        self.captions = captions
        self.folds = None if folds is None else list(folds)
        self.exclude = list(exclude_folds)
        self.target_rate = target_rate
        self.target_samples = target_samples
        self.pipeline = model_input(target_rate, target_samples)
        self.seed = seed
        self.stats = JoinStats(empty_captions=captions.empty)
        # units = (file, row group, number of joinable rows in it)
        self.units: list[tuple[Path, int, int]] = []
        signal_ids: set[str] = set()
        for file in self.files:
            parquet = pq.ParquetFile(file)
            _require_columns(file, parquet.schema_arrow, SIGNAL_COLUMNS)
            for group in range(parquet.num_row_groups):
                meta = parquet.read_row_group(group, columns=["record_id", "fold"])
                joinable = 0
                for record_id, fold in zip(meta.column("record_id").to_pylist(), meta.column("fold").to_pylist()):
                    record_id = str(record_id)
                    signal_ids.add(record_id)
                    if not fold_selected(fold, self.folds, self.exclude):
                        continue
                    self.stats.signals_in_folds += 1
                    if record_id in captions.texts:
                        joinable += 1
                    else:
                        self.stats.signals_without_caption += 1
                self.units.append((file, group, joinable))
        for record_id, fold in captions.folds.items():
            if fold is not None and not fold_selected(fold, self.folds, self.exclude):
                continue
            self.stats.captions_in_folds += 1
            if record_id not in signal_ids:
                self.stats.captions_without_signal += 1

    def _rows(self, units: Sequence[tuple[Path, int, int]]) -> Iterator[tuple[str, np.ndarray, str]]:
        """Preprocessed (record_id, signal, text) for joinable rows; bad records are skipped and recorded."""
        for file, group, joinable in units:
            if joinable == 0:
                continue
            parquet = pq.ParquetFile(file)
            table = parquet.read_row_group(group, columns=list(SIGNAL_COLUMNS))
            for batch in table.to_batches():
                for record_id, fold, rate, leads, samples, flat in _signal_rows(batch):
                    if not fold_selected(fold, self.folds, self.exclude) or record_id not in self.captions.texts:
                        continue
                    try:
                        signal = preprocess_signal(np.asarray(flat), record_id, int(leads), int(samples),
                                                   float(rate), self.target_rate, self.target_samples,
                                                   self.pipeline)
                    except (DataError, TypeError) as error:
                        self.stats.skipped_records.append((record_id, f"{file.name}: {error}"))
                        log.warning("skipping %s (%s): %s", record_id, file, error)
                        continue
                    yield record_id, signal, self.captions.texts[record_id]


class InMemoryPairs(_PairSourceBase):
    """All matched pairs preprocessed into one (N, 12, T) float32 array."""

    def __init__(self, signals_path: str | Path, captions: CaptionTable, folds: Sequence[int] | None,
                 target_rate: float, target_samples: int, seed: int = 0, exclude_folds: Sequence[int] = (),
                 max_records: int | None = None):
        super().__init__(signals_path, captions, folds, exclude_folds, target_rate, target_samples, seed)
        ids, signals, texts = [], [], []
        for record_id, signal, text in self._rows(self.units):
            ids.append(record_id)
            signals.append(signal)
            texts.append(text)
            if max_records is not None and len(ids) >= max_records:
                break
        self.record_ids = ids
        self.texts = texts
        self.signals = (np.stack(signals) if signals
                        else np.zeros((0, N_LEADS, target_samples), np.float32))
        self.stats.pairs = len(ids)

    def __len__(self) -> int:
        return len(self.record_ids)

    def steps_per_epoch(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        global_batch = batch_size * world_size
        return len(self) // global_batch if drop_last else -(-len(self) // global_batch)

    def batches(self, epoch: int, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                shuffle: bool = True, drop_last: bool = True) -> Iterator[Batch]:
        """Global batches of ``batch_size * world_size`` in a (seed, epoch) permutation; rank r gets slice r."""
        order = (torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
                 if shuffle else torch.arange(len(self)))
        global_batch = batch_size * world_size
        for step in range(start_batch, self.steps_per_epoch(batch_size, world_size, drop_last)):
            chunk = order[step * global_batch:(step + 1) * global_batch]
            local = chunk[rank * batch_size:(rank + 1) * batch_size].tolist()
            ids = [self.record_ids[i] for i in local]
            yield _batch(torch.from_numpy(self.signals[local]), ids, self.captions, epoch)


class StreamingPairs(_PairSourceBase):
    """Bounded-memory pairs: seeded row-group order, row groups sharded over ranks, seeded shuffle buffer.

    Every rank yields the same number of batches per epoch (the minimum over ranks, from the
    joinable-row counts taken in the id scan) so DDP ranks never wait on each other at epoch end.
    """

    def __init__(self, signals_path: str | Path, captions: CaptionTable, folds: Sequence[int] | None,
                 target_rate: float, target_samples: int, seed: int = 0, exclude_folds: Sequence[int] = (),
                 shuffle_buffer: int = 2048):
        super().__init__(signals_path, captions, folds, exclude_folds, target_rate, target_samples, seed)
        self.shuffle_buffer = shuffle_buffer
        self.stats.pairs = sum(u[2] for u in self.units)

    def __len__(self) -> int:
        return self.stats.pairs

    def _rank_units(self, epoch: int, rank: int, world_size: int) -> list[tuple[Path, int, int]]:
        order = list(range(len(self.units)))
        random.Random(self.seed * 100003 + epoch).shuffle(order)
        return [self.units[i] for i in order[rank::world_size]]

    def steps_per_epoch(self, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
        # row-group assignment changes per epoch; take a bound that holds for every epoch and rank
        counts = sorted(u[2] for u in self.units)
        per_rank_worst = sum(counts[: len(counts) // world_size]) if world_size > 1 else sum(counts)
        return per_rank_worst // batch_size

    def batches(self, epoch: int, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                shuffle: bool = True, drop_last: bool = True) -> Iterator[Batch]:
        """Skipping ``start_batch`` batches re-reads them (exact resume costs one partial epoch of I/O)."""
        rng = random.Random((self.seed * 100003 + epoch) * 997 + rank)
        steps = self.steps_per_epoch(batch_size, world_size)
        buffer: list[tuple[str, np.ndarray, str]] = []
        pending: list[tuple[str, np.ndarray, str]] = []
        produced = 0

        def drain(item):
            nonlocal produced
            pending.append(item)
            if len(pending) == batch_size:
                batch, pending[:] = list(pending), []
                produced += 1
                return batch
            return None

        units = self._rank_units(epoch, rank, world_size) if shuffle else self.units[rank::world_size]
        for row in self._rows(units):
            if not shuffle:
                out = drain(row)
            else:
                buffer.append(row)
                if len(buffer) < self.shuffle_buffer:
                    continue
                out = drain(buffer.pop(rng.randrange(len(buffer))))
            if out is not None:
                if produced > start_batch:
                    yield _to_batch(out, self.captions, epoch)
                if produced >= steps:
                    return
        while buffer and produced < steps:
            out = drain(buffer.pop(rng.randrange(len(buffer))))
            if out is not None and produced > start_batch:
                yield _to_batch(out, self.captions, epoch)


def _batch(signals: torch.Tensor, record_ids: list[str], captions: CaptionTable, epoch: int) -> Batch:
    """A batch whose texts are drawn per (epoch, record) (the caption itself when views are off)."""
    texts = [captions.text(rid, (epoch, rid)) for rid in record_ids]
    sets = None if captions.finding_sets is None else [captions.finding_sets.get(rid, ()) for rid in record_ids]
    return Batch(signals, texts, record_ids, sets, [captions.texts[rid] for rid in record_ids])


def _to_batch(rows: list[tuple[str, np.ndarray, str]], captions: CaptionTable, epoch: int) -> Batch:
    return _batch(torch.from_numpy(np.stack([r[1] for r in rows])), [r[0] for r in rows], captions, epoch)


@dataclass(frozen=True)
class SignalAugmentation:
    """Training-time signal augmentation; the defaults are the official ESI recipe (tiny jitter and scaling).

    Signals are z-scored per record, so ``jitter`` and ``scaling`` are in units of the record's standard
    deviation. ``time_out`` > 0 zeroes, in every lead at once, one contiguous stretch of up to that fraction
    of the record (uniform length), in half of the records: the "time out" of Mehari & Strodthoff (2022),
    which keeps rate and morphology intact where a resized crop would change the heart rate.
    """

    jitter: float = 0.003  # sd of additive Gaussian noise
    scaling: float = 0.003  # sd of the per-lead Gaussian gain around 1
    time_out: float = 0.0  # longest zeroed stretch, as a fraction of the record; 0: off

    def __post_init__(self) -> None:
        for name in ("jitter", "scaling", "time_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"augmentation.{name} must be a finite number >= 0, got {value!r}")
        if self.time_out >= 1:
            raise ValueError(f"augmentation.time_out must be < 1 (a fraction of the record), got {self.time_out!r}")

    def __call__(self, signals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(signals.shape, generator=generator) * self.jitter
        scale = 1.0 + torch.randn(signals.shape[:2] + (1,), generator=generator) * self.scaling
        out = (signals + noise.to(signals.device)) * scale.to(signals.device)
        if self.time_out > 0:
            n_records, _, n_samples = signals.shape
            draws = torch.rand((n_records, 3), generator=generator)
            lengths = (draws[:, 0] * self.time_out * n_samples).long()
            starts = (draws[:, 1] * (n_samples - lengths + 1)).long().clamp(max=n_samples - 1)
            positions = torch.arange(n_samples)
            masked = ((positions >= starts[:, None]) & (positions < (starts + lengths)[:, None])
                      & (draws[:, 2:] < 0.5))
            out = out.masked_fill(masked[:, None, :].to(out.device), 0.0)
        return out
