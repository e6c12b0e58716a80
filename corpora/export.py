"""Export any reader (after a :class:`Preprocess`) to Parquet shards loadable by ``datasets``.

Layout of an export folder::

    export_config.json        what was asked (dataset, reader, preprocess, shard size, limit)
    shard-00000.parquet       rows of records [0, shard_size) of reader.record_ids()
    shard-00000.done.json     written after its shard: rows, skips, shapes (the resume marker)
    ...
    skipped.jsonl             {"record", "reason"} per record left out
    manifest.json             dataset, preprocess params, n_records, shape, sampling_rate, shards

Shards cover fixed slices of ``record_ids()`` (not fixed row counts), so an interrupted export
resumes by skipping every shard whose ``.done.json`` exists and redoing the rest. Each marker holds
the fingerprint of its slice's ids (:func:`ids_fingerprint`): when the input changed since (a row
inserted, removed or reordered), a shard whose ids no longer match is redone, so a resume never
duplicates or drops a record. Each shard is built in memory (one shard at a time) and written to a
temp file, then renamed.

Schema (one row per record; other parts of the project depend on it):
``record_id`` str, ``dataset`` str, ``subject_id`` str|null, ``fold`` int|null, ``age``
float|null, ``sex`` str|null, ``sampling_rate`` float, ``n_leads`` int, ``n_samples`` int,
``signal`` list<float32> (row-major ``n_leads * n_samples``), ``labels`` str (JSON object
label -> confidence), ``label_vocabulary`` str, ``report`` str|null; plus ``missing_leads``
list<str> (leads zero-filled by the reader or preprocessing; empty for complete records).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .atomic import atomic_write, atomic_write_json, atomic_write_text
from .base import DatasetReader, ECGRecord, RecordError, Skip
from .preprocess import Preprocess

SCHEMA = pa.schema([
    ("record_id", pa.string()),
    ("dataset", pa.string()),
    ("subject_id", pa.string()),
    ("fold", pa.int64()),
    ("age", pa.float64()),
    ("sex", pa.string()),
    ("sampling_rate", pa.float64()),
    ("n_leads", pa.int64()),
    ("n_samples", pa.int64()),
    ("signal", pa.list_(pa.float32())),
    ("labels", pa.string()),
    ("label_vocabulary", pa.string()),
    ("report", pa.string()),
    ("missing_leads", pa.list_(pa.string())),
])
SCHEMA_VERSION = 1
# export_config.json keys that describe the input rather than the settings: they may change on resume
_INPUT_KEYS = ("n_ids", "first_id", "last_id")
_SHARD_FILE = re.compile(r"^shard-(\d{5,})\.(?:parquet|done\.json)$")


def ids_fingerprint(record_ids: Sequence[str]) -> str:
    """sha256 of an ordered id list: stored with each finished shard/part, so that a resume can tell
    whether the input still holds the same records at those positions."""
    return hashlib.sha256(json.dumps(list(record_ids), ensure_ascii=False).encode("utf-8")).hexdigest()


def made_from(record_ids: Sequence[str], rows: Sequence[str], skipped: Sequence[str]) -> bool:
    """Whether output holding ``rows`` (in order) plus ``skipped`` was made from exactly ``record_ids``.

    For shards/parts written before fingerprints were stored: their content still says which
    records they cover, which is enough to keep the ones that match and redo the rest.
    """
    left_out = set(skipped)
    return (sorted([*rows, *skipped]) == sorted(record_ids)
            and list(rows) == [record_id for record_id in record_ids if record_id not in left_out])


def records_to_table(records: list[ECGRecord]) -> pa.Table:
    """Build one Arrow table in :data:`SCHEMA` from records with signals (no per-sample Python)."""
    lengths = [int(r.signal.size) for r in records]  # type: ignore[union-attr]
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = (np.concatenate([np.ascontiguousarray(r.signal, dtype=np.float32).ravel() for r in records])
              if records else np.zeros(0, dtype=np.float32))
    if offsets[-1] >= 2**31:
        raise ValueError("shard too large for one Arrow list column; lower shard_size")
    signal = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.float32()))
    columns = {
        "record_id": [r.record_id for r in records],
        "dataset": [r.dataset for r in records],
        "subject_id": [r.subject_id for r in records],
        "fold": [r.fold for r in records],
        "age": [None if r.age is None else float(r.age) for r in records],
        "sex": [r.sex for r in records],
        "sampling_rate": [float(r.sampling_rate) for r in records],  # type: ignore[arg-type]
        "n_leads": [int(r.signal.shape[0]) for r in records],  # type: ignore[union-attr]
        "n_samples": [int(r.signal.shape[1]) for r in records],  # type: ignore[union-attr]
        "signal": signal,
        "labels": [json.dumps(r.labels, ensure_ascii=False) for r in records],
        "label_vocabulary": [r.label_vocabulary for r in records],
        "report": [r.report for r in records],
        "missing_leads": [list(r.missing_leads) for r in records],
    }
    arrays = [columns[f.name] if isinstance(columns[f.name], pa.Array) else pa.array(columns[f.name], type=f.type)
              for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def export_reader(
    reader: DatasetReader,
    out_dir: str | Path,
    *,
    preprocess: Preprocess | None = None,
    shard_size: int = 1000,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``reader``'s records (first ``limit`` ids) to ``out_dir``; return the manifest.

    Resumable: re-running with the same settings redoes only unfinished shards and shards whose
    record ids changed in the input since; running with different settings into a folder that
    holds another export raises ``ValueError``.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_ids = reader.record_ids()
    if limit is not None:
        record_ids = record_ids[:limit]
    config = {
        "schema_version": SCHEMA_VERSION,
        "dataset": reader.name,
        "reader": reader.describe(),
        "preprocess": preprocess.params() if preprocess else None,
        "shard_size": shard_size,
        "limit": limit,
        "n_ids": len(record_ids),
        "first_id": record_ids[0] if record_ids else None,
        "last_id": record_ids[-1] if record_ids else None,
    }
    config_path = out / "export_config.json"
    config = json.loads(json.dumps(config))
    previous = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    if previous is not None and _settings(previous) != _settings(config):
        raise ValueError(f"{out} holds an export with other settings ({config_path}); use an empty folder")
    if previous != config:  # new, or the input changed since: each shard checks its own ids below
        atomic_write_json(config_path, config)

    slices = [record_ids[start:start + shard_size] for start in range(0, len(record_ids), shard_size)]
    n_shards = len(slices)
    kept = {shard for shard, ids in enumerate(slices) if _shard_made_from(out, shard, ids)}
    if len(kept) < n_shards:  # a manifest of an earlier run would name shards about to change
        (out / "manifest.json").unlink(missing_ok=True)
    _remove_shards_from(out, n_shards)  # an earlier, longer input's tail
    bar = tqdm(total=len(record_ids), desc=f"export {reader.name}", unit="rec", disable=not progress)
    for shard, ids in enumerate(slices):
        marker = out / _shard_name(shard).replace(".parquet", ".done.json")
        if shard in kept:
            bar.update(len(ids))
            continue
        marker.unlink(missing_ok=True)  # unfinished, or made from other records than the input now holds
        records: list[ECGRecord] = []
        skipped: list[Skip] = []
        for record_id in ids:
            try:
                record = reader.read(record_id)
                records.append(preprocess(record) if preprocess else record)
            except RecordError as err:
                skipped.append(Skip(err.record_id, err.reason))
            bar.update(1)
        parquet = out / _shard_name(shard)
        if records:
            table = records_to_table(records)
            atomic_write(parquet, lambda tmp, table=table: pq.write_table(table, tmp))
        else:
            parquet.unlink(missing_ok=True)
        atomic_write_json(marker, {
            "shard": parquet.name if records else None,
            "n_ids": len(ids),
            "ids_sha256": ids_fingerprint(ids),
            "n_rows": len(records),
            "skipped": [{"record": s.record, "reason": s.reason} for s in skipped],
            "shapes": sorted({tuple(r.signal.shape) for r in records}),  # type: ignore[union-attr]
            "sampling_rates": sorted({float(r.sampling_rate) for r in records}),  # type: ignore[arg-type]
        })
    bar.close()
    return _finish(out, config, n_shards)


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The part of export_config.json that must match to resume (not the input's size or ends)."""
    return {key: value for key, value in config.items() if key not in _INPUT_KEYS}


def _shard_made_from(out: Path, shard: int, record_ids: list[str]) -> bool:
    """Whether shard ``shard`` is finished and covers exactly ``record_ids`` (the input may have changed)."""
    marker = out / _shard_name(shard).replace(".parquet", ".done.json")
    if not marker.is_file():
        return False
    done = json.loads(marker.read_text(encoding="utf-8"))
    if done["shard"] and not (out / done["shard"]).is_file():
        return False
    if "ids_sha256" in done:
        return done["ids_sha256"] == ids_fingerprint(record_ids)
    rows = pq.read_table(out / done["shard"], columns=["record_id"]).column("record_id").to_pylist() \
        if done["shard"] else []
    return made_from(record_ids, rows, [skip["record"] for skip in done["skipped"]])


def _remove_shards_from(out: Path, first: int) -> None:
    """Delete shard files numbered ``first`` and above, so no stale shard outlives a shorter input."""
    for path in out.glob("shard-*"):
        match = _SHARD_FILE.match(path.name)
        if match and int(match.group(1)) >= first:
            path.unlink()


def _common(values: list[Any]) -> Any:
    """The single common value, or None when there are none or several."""
    unique = {json.dumps(v) for v in values}
    return json.loads(unique.pop()) if len(unique) == 1 else None


def _finish(out: Path, config: dict[str, Any], n_shards: int) -> dict[str, Any]:
    shards: list[str] = []
    skipped: list[dict[str, str]] = []
    shapes: list[Any] = []
    rates: list[float] = []
    n_records = 0
    for shard in range(n_shards):
        marker = json.loads((out / _shard_name(shard).replace(".parquet", ".done.json")).read_text(encoding="utf-8"))
        if marker["shard"]:
            shards.append(marker["shard"])
        n_records += marker["n_rows"]
        skipped.extend(marker["skipped"])
        shapes.extend(list(shape) for shape in marker["shapes"])
        rates.extend(marker["sampling_rates"])
    atomic_write_text(out / "skipped.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "dataset": config["dataset"],
        "reader": config["reader"],
        "preprocess": config["preprocess"],
        "n_records": n_records,
        "n_skipped": len(skipped),
        "shape": _common(shapes),
        "shapes": sorted({tuple(s) for s in shapes}) if _common(shapes) is None else None,
        "sampling_rate": _common(rates),
        "shards": shards,
        "columns": [field.name for field in SCHEMA],
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a finished export (run export again to resume)")
    return json.loads(path.read_text(encoding="utf-8"))


def _reshape_batch(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    batch["signal"] = [
        np.asarray(values, dtype=np.float32).reshape(n_leads, n_samples)
        for values, n_leads, n_samples in zip(batch["signal"], batch["n_leads"], batch["n_samples"])
    ]
    return batch


def load_export(export_dir: str | Path, *, cache_dir: str | Path | None = None):
    """The export as a ``datasets.Dataset`` whose ``signal`` comes back float32 ``(n_leads, n_samples)``.

    Uses ``datasets.load_dataset("parquet", data_files=...)``; ``labels`` stays a JSON string
    (``json.loads`` it).
    """
    import datasets

    manifest = read_manifest(export_dir)
    files = [str(Path(export_dir) / name) for name in manifest["shards"]]
    if not files:
        raise ValueError(f"export {export_dir} has no rows (see skipped.jsonl)")
    dataset = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(cache_dir) if cache_dir else None
    )
    return dataset.with_transform(_reshape_batch)


def iter_export(export_dir: str | Path, batch_size: int = 64) -> Iterator[list[dict[str, Any]]]:
    """Stream an export shard by shard in batches of up to ``batch_size`` row dicts.

    Each row has every schema column; ``signal`` is float32 ``(n_leads, n_samples)`` (a view
    into the Arrow buffer, copied per batch) and ``labels`` stays a JSON string.
    """
    manifest = read_manifest(export_dir)
    for name in manifest["shards"]:
        parquet = pq.ParquetFile(Path(export_dir) / name)
        for batch in parquet.iter_batches(batch_size=batch_size):
            signal_column = batch.column("signal")
            values = signal_column.values.to_numpy(zero_copy_only=False)
            offsets = signal_column.offsets.to_numpy()
            columns = {field: batch.column(field).to_pylist() for field in batch.schema.names if field != "signal"}
            rows: list[dict[str, Any]] = []
            for index in range(batch.num_rows):
                row = {field: columns[field][index] for field in columns}
                row["signal"] = (
                    values[offsets[index]:offsets[index + 1]]
                    .astype(np.float32, copy=True)
                    .reshape(row["n_leads"], row["n_samples"])
                )
                rows.append(row)
            yield rows
