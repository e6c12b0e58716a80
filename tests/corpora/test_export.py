"""Parquet export: exact round trip, schema, resumability, skips and manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpora.base import ECGRecord
from corpora.cinc import CincReader
from corpora.export import SCHEMA, export_reader, iter_export, load_export
from corpora.preprocess import Preprocess
from corpora.ptbxl import PTBXLReader

REQUIRED_COLUMNS = ["record_id", "dataset", "subject_id", "fold", "age", "sex", "sampling_rate", "n_leads",
                    "n_samples", "signal", "labels", "label_vocabulary", "report"]


def _expected(reader, preprocess: Preprocess, ids: list[str]) -> dict[str, ECGRecord]:
    return {record_id: preprocess(reader.read(record_id)) for record_id in ids}


@pytest.fixture(scope="module")
def ptbxl_export(tmp_path_factory, ptbxl_root) -> tuple[Path, PTBXLReader, Preprocess]:
    out = tmp_path_factory.mktemp("ptbxl_export")
    reader = PTBXLReader(ptbxl_root, rate=100)
    preprocess = Preprocess(bandpass=(0.5, 40.0), normalise="zscore")
    export_reader(reader, out, preprocess=preprocess, shard_size=10, limit=25, progress=False)
    return out, reader, preprocess


def test_schema_and_manifest(ptbxl_export) -> None:
    out, reader, preprocess = ptbxl_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "ptbxl" and manifest["n_records"] == 25 and manifest["n_skipped"] == 0
    assert manifest["shape"] == [12, 1000] and manifest["sampling_rate"] == 100.0
    assert manifest["preprocess"] == preprocess.params()
    assert manifest["shards"] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    schema = pq.read_schema(out / manifest["shards"][0])
    assert schema.names[: len(REQUIRED_COLUMNS)] == REQUIRED_COLUMNS
    assert schema.equals(SCHEMA)
    assert schema.field("signal").type.value_type == pa.float32()
    assert (out / "skipped.jsonl").read_text() == ""


def test_round_trip_through_datasets_is_bit_exact(ptbxl_export) -> None:
    out, reader, preprocess = ptbxl_export
    dataset = load_export(out, cache_dir=out.parent / "hf_cache")
    ids = reader.record_ids()[:25]
    expected = _expected(reader, preprocess, ids)
    assert dataset.num_rows == 25 and dataset["record_id"] == ids
    for row in dataset:
        record = expected[row["record_id"]]
        assert row["signal"].dtype == np.float32 and row["signal"].shape == (12, 1000)
        assert np.array_equal(row["signal"], record.signal)
        assert json.loads(row["labels"]) == record.labels
        assert list(json.loads(row["labels"])) == list(record.labels)  # order kept too
        assert (row["subject_id"], row["fold"], row["age"], row["sex"], row["report"]) == (
            record.subject_id, record.fold, record.age, record.sex, record.report)
        assert (row["n_leads"], row["n_samples"], row["sampling_rate"]) == (12, 1000, 100.0)
        assert row["label_vocabulary"] == "scp" and row["dataset"] == "ptbxl"


def test_streaming_iterator_matches_and_respects_batch_size(ptbxl_export) -> None:
    out, reader, preprocess = ptbxl_export
    batches = list(iter_export(out, batch_size=4))
    assert max(len(b) for b in batches) == 4
    rows = [row for batch in batches for row in batch]
    expected = _expected(reader, preprocess, [row["record_id"] for row in rows[:5]])
    assert len(rows) == 25
    for row in rows[:5]:
        assert np.array_equal(row["signal"], expected[row["record_id"]].signal)
        assert json.loads(row["labels"]) == expected[row["record_id"]].labels


def test_export_resumes_only_unfinished_shards(tmp_path, ptbxl_root) -> None:
    reader = PTBXLReader(ptbxl_root, rate=100)
    preprocess = Preprocess()
    export_reader(reader, tmp_path, preprocess=preprocess, shard_size=5, limit=15, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.parquet")}
    first_bytes = (tmp_path / "shard-00000.parquet").read_bytes()
    # Simulate an interruption during shard 1: its marker and parquet never got written.
    (tmp_path / "shard-00001.done.json").unlink()
    (tmp_path / "shard-00001.parquet").unlink()
    manifest = export_reader(reader, tmp_path, preprocess=preprocess, shard_size=5, limit=15, progress=False)
    assert manifest["n_records"] == 15
    assert (tmp_path / "shard-00000.parquet").stat().st_mtime_ns == before["shard-00000.parquet"]
    assert (tmp_path / "shard-00000.parquet").read_bytes() == first_bytes
    assert (tmp_path / "shard-00001.parquet").is_file()
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="other settings"):
        export_reader(reader, tmp_path, preprocess=Preprocess(target_rate=250), shard_size=5, limit=15, progress=False)


def test_skips_are_written_and_mixed_shapes_reported(tmp_path, ptbxl_root, cinc_root) -> None:
    high = PTBXLReader(ptbxl_root, rate=500)
    ids = high.record_ids()
    window = ids[495:510]  # straddles rows with and without a 500 Hz file
    manifest = export_reader(high, tmp_path / "p500", preprocess=None, shard_size=100, limit=510, progress=False)
    skipped = [json.loads(line) for line in (tmp_path / "p500" / "skipped.jsonl").read_text().splitlines()]
    assert manifest["n_records"] + len(skipped) == 510 and len(skipped) == manifest["n_skipped"] > 0
    assert {s["record"] for s in skipped} & set(window)
    assert all("500 Hz" in s["reason"] for s in skipped)

    cinc = CincReader(cinc_root)
    manifest = export_reader(cinc, tmp_path / "cinc", preprocess=Preprocess(duration_s=None, bandpass=None),
                             shard_size=50, progress=False)
    assert manifest["n_records"] == 73 and manifest["n_skipped"] == 10
    assert manifest["shape"] is None and len(manifest["shapes"]) > 1 and manifest["sampling_rate"] is None
    row = next(r for batch in iter_export(tmp_path / "cinc", 8) for r in batch if r["record_id"] == "S0001")
    assert row["signal"].shape == (12, 38400) and row["sampling_rate"] == 1000.0
    np.testing.assert_array_equal(row["signal"], cinc.read("S0001").signal)
