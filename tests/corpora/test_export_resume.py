"""Resume knows its input: an export resumed after its input changed (a row inserted, replaced,
appended or removed) redoes the shards whose record ids changed, keeps the others, and never
duplicates or drops a record. The reference is always a fresh export of the changed input."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpora.__main__ import main
from corpora.ptbxl import PTBXLReader

N_INPUT = 7  # rows in the input CSV at first; two more real records are on disk to be added
SHARD = 3
Rows = list[list[str]]


@pytest.fixture
def dataset(ptbxl_subset) -> tuple[Path, Rows]:
    """A PTB-XL folder with the 100 Hz files of ptbxl-mini's first 9 records, the CSV listing 7 of them;
    returns (folder, [header, 9 rows])."""
    return ptbxl_subset(N_INPUT + 2, n_csv=N_INPUT)


def _write_csv(root: Path, rows: Rows) -> None:
    with (root / "ptbxl_database.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def _export(root: Path, out: Path) -> int:
    return main(["export", "--dataset", "ptbxl", "--root", str(root), "--out", str(out), "--shard-size",
                 str(SHARD), "--no-progress"])


def _table(out: Path) -> pa.Table:
    manifest = json.loads((out / "manifest.json").read_text())
    return pa.concat_tables([pq.read_table(out / name) for name in manifest["shards"]])


def _shards(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.parquet"))}


# each edit turns [header, r1..r9] (CSV holding r1..r7) into the changed CSV's rows
EDITS: dict[str, Callable[[Rows], Rows]] = {
    "insert_at_top": lambda rows: [rows[0], rows[8], *rows[1:8]],
    "replace_in_the_middle": lambda rows: [rows[0], *rows[1:5], rows[9], *rows[6:8]],  # same count, ends
    "reorder": lambda rows: [rows[0], rows[2], rows[1], *rows[3:8]],
    "remove_the_tail": lambda rows: [rows[0], *rows[1:4]],
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_resume_after_the_input_changed_equals_a_fresh_export(dataset: tuple[Path, Rows], tmp_path: Path,
                                                              edit: str, capsys: pytest.CaptureFixture[str]) -> None:
    root, rows = dataset
    out = tmp_path / "out"
    assert _export(root, out) == 0
    changed = EDITS[edit](rows)
    _write_csv(root, changed)
    assert _export(root, out) == 0
    fresh = tmp_path / "fresh"
    assert _export(root, fresh) == 0
    capsys.readouterr()

    ids = _table(out).column("record_id").to_pylist()
    assert ids == [row[0] for row in changed[1:]] == PTBXLReader(root).record_ids()  # each once, in order
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_records"] == len(changed) - 1 and manifest["n_skipped"] == 0
    assert _table(out).to_pylist() == _table(fresh).to_pylist()
    assert list(_shards(out)) == manifest["shards"] == json.loads((fresh / "manifest.json").read_text())["shards"]
    assert sorted(p.name for p in out.glob("shard-*.done.json")) == sorted(
        p.name for p in fresh.glob("shard-*.done.json"))


def test_shards_whose_ids_still_match_are_kept(dataset: tuple[Path, Rows], tmp_path: Path) -> None:
    root, rows = dataset
    out = tmp_path / "out"
    assert _export(root, out) == 0
    before = _shards(out)
    _write_csv(root, [*rows[: N_INPUT + 1], rows[8]])  # one row appended: only the last shard changes
    assert _export(root, out) == 0
    after = _shards(out)
    assert [after[name] == before[name] for name in before] == [True, True, False]
    assert _table(out).column("record_id").to_pylist() == [row[0] for row in rows[1:N_INPUT + 2]]


def test_shards_from_before_fingerprints_are_checked_by_content(dataset: tuple[Path, Rows], tmp_path: Path) -> None:
    """Markers written by the previous version have no ids_sha256: their rows and skips decide."""
    root, rows = dataset
    out = tmp_path / "out"
    assert _export(root, out) == 0
    for marker in out.glob("shard-*.done.json"):
        done = json.loads(marker.read_text())
        assert done["ids_sha256"] and done["n_ids"] in (SHARD, N_INPUT % SHARD)
        del done["ids_sha256"], done["n_ids"]
        marker.write_text(json.dumps(done))
    before = _shards(out)
    _write_csv(root, [rows[0], *rows[1:4], rows[5], rows[4], *rows[6:8]])  # swap rows 4 and 5: shard 1 only
    assert _export(root, out) == 0
    after = _shards(out)
    assert [after[name] == before[name] for name in before] == [True, False, True]
    assert _table(out).column("record_id").to_pylist() == PTBXLReader(root).record_ids()


def test_other_settings_are_still_refused(dataset: tuple[Path, Rows], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = dataset
    out = tmp_path / "out"
    assert _export(root, out) == 0
    assert main(["export", "--dataset", "ptbxl", "--root", str(root), "--out", str(out), "--shard-size", "2",
                 "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
