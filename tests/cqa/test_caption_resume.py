"""Resume knows its input: ``cqa caption`` resumed after its input CSV changed recomputes the parts
whose record ids changed, keeps the others, and never duplicates or drops a row. The reference is
always a fresh run over the changed input."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from corpora.ptbxl import PTBXLReader
from cqa.__main__ import main
from cqa.batch import METADATA_KEY, read_output

N_INPUT = 25  # rows in the input CSV at first; the source rows after them are added by the edits
CHUNK = 10
Rows = list[list[str]]


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_CACHE_DIR", str(tmp_path / "esi-cache"))


@pytest.fixture
def source(shared_data: Path) -> Rows:
    """The header and first rows of the real text-only PTB-XL metadata."""
    with (shared_data / "ptbxl-text" / "ptbxl_database_textonly.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))[: N_INPUT + 4]


def _write_csv(path: Path, rows: Rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _caption(csv_path: Path, out: Path, shared_data: Path, *extra: str) -> int:
    return main(["caption", "--dataset", "ptbxl", "--root", str(csv_path),
                 "--scp-statements", str(shared_data / "ptbxl-mini" / "scp_statements.csv"),
                 "--out", str(out), "--llm", "none", "--chunk-size", str(CHUNK), "--no-progress", *extra])


def _parts(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "data").glob("part-*.parquet"))}


def _expected_ids(csv_path: Path, shared_data: Path, limit: int | None = None) -> list[str]:
    ids = PTBXLReader(csv_path, scp_statements=shared_data / "ptbxl-mini" / "scp_statements.csv").record_ids()
    return ids[:limit]


# each edit turns [header, r1..r28] (CSV holding r1..r25) into the changed CSV's rows
EDITS: dict[str, Callable[[Rows], Rows]] = {
    "insert_at_top": lambda rows: [rows[0], rows[N_INPUT + 1], *rows[1:N_INPUT + 1]],
    "replace_in_the_middle": lambda rows: [rows[0], *rows[1:12], rows[N_INPUT + 2], *rows[13:N_INPUT + 1]],
    "remove_the_tail": lambda rows: [rows[0], *rows[1:16]],
}


@pytest.mark.parametrize(("edit", "limit"), [("insert_at_top", None), ("insert_at_top", 20),
                                              ("replace_in_the_middle", None), ("remove_the_tail", None)])
def test_resume_after_the_input_changed_equals_a_fresh_run(source: Rows, shared_data: Path, tmp_path: Path,
                                                           edit: str, limit: int | None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _write_csv(tmp_path / "ptbxl_database.csv", source[: N_INPUT + 1])
    extra = ("--limit", str(limit)) if limit else ()
    out = tmp_path / "out"
    assert _caption(csv_path, out, shared_data, *extra) == 0
    _write_csv(csv_path, EDITS[edit](source))
    assert _caption(csv_path, out, shared_data, *extra) == 0
    fresh = tmp_path / "fresh"
    assert _caption(csv_path, fresh, shared_data, *extra) == 0
    capsys.readouterr()

    resumed = read_output(out)
    ids = resumed.column("record_id").to_pylist()
    assert ids == _expected_ids(csv_path, shared_data, limit)  # every id exactly once, in input order
    assert len(set(ids)) == len(ids) == (limit or len(EDITS[edit](source)) - 1)
    assert resumed.to_pylist() == read_output(fresh).to_pylist()
    assert list(_parts(out)) == list(_parts(fresh))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(ids) and summary["skipped"] == []


def test_parts_whose_ids_still_match_are_kept(source: Rows, shared_data: Path, tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "ptbxl_database.csv", source[: N_INPUT + 1])
    out = tmp_path / "out"
    assert _caption(csv_path, out, shared_data) == 0
    before = _parts(out)
    _write_csv(csv_path, [*source[: 21], source[N_INPUT + 1], *source[21: N_INPUT + 1]])  # insert at row 21
    assert _caption(csv_path, out, shared_data) == 0
    after = _parts(out)
    assert list(after) == ["part-00000000-00000010.parquet", "part-00000010-00000020.parquet",
                           "part-00000020-00000026.parquet"]
    assert [after[name] == before.get(name) for name in after] == [True, True, False]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_rows"] == 20 and summary["computed_chunks"] == 1 and summary["rows"] == N_INPUT + 1
    assert read_output(out).column("record_id").to_pylist() == _expected_ids(csv_path, shared_data)


def test_parts_from_before_fingerprints_are_checked_by_content(source: Rows, shared_data: Path,
                                                               tmp_path: Path) -> None:
    """Parts written by the previous version have no ids_sha256 in their metadata: their rows and skips decide."""
    csv_path = _write_csv(tmp_path / "ptbxl_database.csv", source[: N_INPUT + 1])
    out = tmp_path / "out"
    assert _caption(csv_path, out, shared_data) == 0
    for path in (out / "data").glob("part-*.parquet"):
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[METADATA_KEY])
        assert len(meta.pop("ids_sha256")) == 64
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), path)
    before = _parts(out)
    rows = list(source[: N_INPUT + 1])
    rows[12], rows[13] = rows[13], rows[12]  # positions 11 and 12: the second part only
    _write_csv(csv_path, rows)
    assert _caption(csv_path, out, shared_data) == 0
    after = _parts(out)
    assert [after[name] == before[name] for name in before] == [True, False, True]
    assert read_output(out).column("record_id").to_pylist() == _expected_ids(csv_path, shared_data)
