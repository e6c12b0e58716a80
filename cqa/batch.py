"""Resumable batch captioning into numbered Parquet parts (a Hugging Face-loadable dataset).

Layout of an output folder ``OUT``::

    OUT/run.json                              the settings that decide the content (checked on resume)
    OUT/data/part-SSSSSSSS-EEEEEEEE.parquet   captions of record positions [S, E) in reader order
    OUT/summary.json                          written when the run completes: counts, skips, LLM calls

Each part is written to a hidden temporary file and renamed into place, so after a kill at any
moment a part is either complete or absent. The done-set is the set of parts present: a re-run skips
them and recomputes only the rest, so no row is lost or duplicated. Each part's Parquet metadata
(key ``cqa``) holds the fingerprint of the record ids it was made from (``ids_sha256``): when the
input changed since (a row inserted, removed or reordered), a part whose ids no longer match the
input's ids at its positions is recomputed, and the parts that still match are kept. Unreadable
records are recorded in that metadata with the reason, never dropped silently.

Load the result with ``datasets.load_dataset("parquet", data_files=f"{OUT}/data/*.parquet")`` or
:func:`read_output`.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from corpora.atomic import atomic_write, atomic_write_text
from corpora.base import DatasetReader, RecordError
from corpora.export import ids_fingerprint, made_from

from .caption import Captioner

log = logging.getLogger(__name__)

PART_RE = re.compile(r"^part-(\d{8})-(\d{8})\.parquet$")
METADATA_KEY = b"cqa"
SCHEMA = pa.schema([
    ("record_id", pa.string()), ("subject_id", pa.string()), ("fold", pa.int64()), ("age", pa.float64()),
    ("sex", pa.string()), ("labels", pa.string()), ("findings", pa.string()), ("negated", pa.string()),
    ("caption", pa.string()), ("label_text", pa.string()), ("sources", pa.string()),
    ("unknown_labels", pa.string()), ("finding_codes", pa.list_(pa.string())), ("label_terms", pa.string()),
])
# Bumped when the row schema changes, so an old output folder is never resumed into a mixed table.
SCHEMA_VERSION = 2
CONTENT_KEYS = ("dataset", "root", "scp_statements", "model_id", "prompt_hash", "knowledge_version",
                "chunk_size", "k", "max_bullets", "schema_version")


class BatchError(ValueError):
    """The output folder cannot be resumed with these settings; the message says why and what to do."""


def _write_part(path: Path, rows: list[dict[str, Any]], meta: Mapping[str, Any]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def existing_parts(data_dir: Path) -> dict[tuple[int, int], Path]:
    """The done-set: (start, stop) -> part file, for every complete part in the folder."""
    parts = {}
    for path in sorted(data_dir.glob("part-*.parquet")):
        match = PART_RE.match(path.name)
        if match:
            parts[(int(match.group(1)), int(match.group(2)))] = path
    return parts


def _part_made_from(path: Path, record_ids: list[str]) -> bool:
    """Whether a finished part was made from exactly ``record_ids`` (the input may have changed since)."""
    meta = json.loads((pq.read_schema(path).metadata or {}).get(METADATA_KEY, b"{}"))
    if "ids_sha256" in meta:
        return meta["ids_sha256"] == ids_fingerprint(record_ids)
    rows = pq.read_table(path, columns=["record_id"]).column("record_id").to_pylist()  # a part from before
    return made_from(record_ids, rows, [skip["record"] for skip in meta.get("skipped", [])])


def _check_run(out: Path, config: Mapping[str, Any]) -> None:
    run_file = out / "run.json"
    content = {k: config.get(k) for k in CONTENT_KEYS}
    if run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), content[k]) for k in CONTENT_KEYS if previous.get(k) != content[k]}
        if changed:
            detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise BatchError(f"{out}: holds captions made with other settings ({detail}); "
                             f"use a new --out folder (or delete {out})")
        return
    atomic_write_text(run_file, json.dumps(content, indent=1, sort_keys=True))


def run_batch(reader: DatasetReader, captioner: Captioner, out: str | Path, *, config: Mapping[str, Any],
              limit: int | None = None, chunk_size: int = 500, progress: bool = True) -> dict[str, Any]:
    """Caption the reader's records into ``out`` (resuming a previous run); return the summary."""
    if chunk_size < 1:
        raise BatchError(f"chunk size must be >= 1, got {chunk_size}")
    out = Path(out)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _check_run(out, {**config, "chunk_size": chunk_size, "schema_version": SCHEMA_VERSION})
    for stale in data_dir.glob(".part-*.tmp"):  # a kill mid-write leaves only hidden temporaries
        stale.unlink()
    record_ids = reader.record_ids()
    if limit is not None:
        record_ids = record_ids[:limit]
    chunks = [(start, min(start + chunk_size, len(record_ids))) for start in range(0, len(record_ids), chunk_size)]
    wanted = set(chunks)
    changed = 0
    # Before any new part is written, so that the parts present never overlap or mix two inputs:
    for (start, stop), path in existing_parts(data_dir).items():
        if (start, stop) not in wanted:  # a part of an earlier, shorter --limit or other input
            path.unlink()
        elif not _part_made_from(path, record_ids[start:stop]):
            log.warning("%s was made from other records than the input now holds at positions [%d, %d); "
                        "recomputing it", path.name, start, stop)
            path.unlink()
            changed += 1
    done = existing_parts(data_dir)
    todo = [c for c in chunks if c not in done]
    resumed_rows = sum(stop - start for start, stop in chunks if (start, stop) in done)
    with tqdm(total=len(record_ids), initial=resumed_rows, desc=f"caption {reader.name}", unit="rec",
              disable=not progress) as bar:
        for start, stop in todo:
            rows, skipped = [], []
            for record_id in record_ids[start:stop]:
                try:
                    record = reader.read_metadata(record_id)
                except RecordError as err:
                    skipped.append({"record": err.record_id, "reason": err.reason})
                else:
                    rows.append(captioner.caption_record(record).to_row())
                bar.update(1)
            meta = {"start": start, "stop": stop, "record_ids": [record_ids[start], record_ids[stop - 1]],
                    "ids_sha256": ids_fingerprint(record_ids[start:stop]), "skipped": skipped}
            _write_part(data_dir / f"part-{start:08d}-{stop:08d}.parquet", rows, meta)
    summary = summarise(out)
    summary.update(resumed_rows=resumed_rows, computed_chunks=len(todo), changed_input_chunks=changed,
                   stats=dict(captioner.stats), model_id=captioner.model_id)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    return summary


def summarise(out: str | Path) -> dict[str, Any]:
    """Counts over the parts present: rows, skipped records (with reasons), caption sources."""
    data_dir = Path(out) / "data"
    rows = 0
    skipped: list[dict[str, str]] = []
    sources = {"llm": 0, "grounded": 0}
    unknown = 0
    for _, path in sorted(existing_parts(data_dir).items()):
        table = pq.read_table(path, columns=["sources", "unknown_labels"])
        meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
        skipped += meta.get("skipped", [])
        rows += table.num_rows
        for value in table.column("sources").to_pylist():
            for entry in json.loads(value).values():
                sources[entry["source"]] = sources.get(entry["source"], 0) + 1
        unknown += sum(bool(json.loads(v)) for v in table.column("unknown_labels").to_pylist())
    return {"rows": rows, "skipped": skipped, "finding_sources": sources, "rows_with_unknown_labels": unknown}


def read_output(out: str | Path) -> pa.Table:
    """All parts of an output folder as one Arrow table, in record order (ESI's training loader reads
    caption Parquet with :func:`esi.data.read_captions`)."""
    parts = [p for _, p in sorted(existing_parts(Path(out) / "data").items())]
    if not parts:
        raise FileNotFoundError(f"{out}: no caption parts under data/")
    return pa.concat_tables([pq.read_table(p).replace_schema_metadata(None) for p in parts])


def __getattr__(name: str) -> Any:
    """``read_captions``, this function's old name, for one release (``esi.data.read_captions`` is the loader)."""
    if name == "read_captions":
        warnings.warn("cqa.batch.read_captions is now cqa.batch.read_output", DeprecationWarning, stacklevel=2)
        return read_output
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
