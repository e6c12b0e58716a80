"""``python -m corpora`` summary / export / synthetic on the real data and the fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corpora.__main__ import main
from corpora.export import iter_export

REPO_ROOT = Path(__file__).resolve().parents[2]


def _summary(capsys, *args: str) -> dict:
    assert main(["summary", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_ptbxl_100hz_via_the_module_entry_point(ptbxl_root) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "corpora", "summary", "--dataset", "ptbxl", "--root", str(ptbxl_root), "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"}, check=True,
    )
    summary = json.loads(result.stdout)
    assert set(summary) >= {"dataset", "records", "readable", "skipped", "sampling_rate", "shape", "labels"}
    assert summary["dataset"] == "ptbxl"
    assert summary["records"] == summary["readable"] == 1025 and summary["skipped"] == []
    assert summary["sampling_rate"] == 100 and summary["shape"] == [12, 1000]
    # label counts are records per code (every PTB-XL record has at least one code)
    assert max(summary["labels"].values()) <= 1025 and sum(summary["labels"].values()) >= 1025


def test_summary_ptbxl_500hz(capsys, ptbxl_root) -> None:
    summary = _summary(capsys, "--dataset", "ptbxl", "--root", str(ptbxl_root), "--rate", "500")
    assert summary["readable"] == 422 and summary["records"] == 1025
    assert summary["sampling_rate"] == 500 and summary["shape"] == [12, 5000]
    assert len(summary["skipped"]) == 603
    assert all(set(s) == {"record", "reason"} for s in summary["skipped"])


def test_summary_cinc_reports_mixed_rates_and_shapes(capsys, cinc_root) -> None:
    summary = _summary(capsys, "--dataset", "cinc", "--root", str(cinc_root))
    assert summary["readable"] == 73 and len(summary["skipped"]) == 10
    assert summary["sampling_rate"] == [500.0, 1000.0] and summary["shape"] is None
    assert sum(item["count"] for item in summary["shapes"]) == 73


def test_summary_metadata_only_csv(capsys, shared_data, ptbxl_root) -> None:
    summary = _summary(capsys, "--dataset", "ptbxl", "--root",
                       str(shared_data / "ptbxl-text" / "ptbxl_database_textonly.csv"),
                       "--scp-statements", str(ptbxl_root / "scp_statements.csv"), "--metadata-only")
    assert summary["readable"] == 8647 and summary["shape"] is None and summary["sampling_rate"] is None


def test_synthetic_then_summary_and_export(capsys, tmp_path, shared_data) -> None:
    statements = shared_data / "mimic-statements" / "statements.txt"
    assert main(["synthetic", "--kind", "mimic", "--out", str(tmp_path / "mimic"),
                 "--statements", str(statements), "--n-records", "4"]) == 0
    assert main(["synthetic", "--kind", "cpsc2018", "--out", str(tmp_path / "cpsc")]) == 0
    capsys.readouterr()
    mimic = _summary(capsys, "--dataset", "mimic", "--root", str(tmp_path / "mimic"))
    assert mimic["readable"] == 4 and mimic["shape"] == [12, 5000] and mimic["sampling_rate"] == 500
    cpsc = _summary(capsys, "--dataset", "cpsc2018", "--root", str(tmp_path / "cpsc"))
    assert cpsc["readable"] == 6 and cpsc["shape"] is None and cpsc["labels"]["AF"] == 1

    assert main(["export", "--dataset", "cpsc2018", "--root", str(tmp_path / "cpsc"), "--out", str(tmp_path / "out"),
                 "--target-rate", "100", "--duration", "10", "--shard-size", "4", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_records"] == 6 and printed["shape"] == [12, 1000] and len(printed["shards"]) == 2
    rows = [row for batch in iter_export(tmp_path / "out", 3) for row in batch]
    assert [row["record_id"] for row in rows] == [f"A{i:04d}" for i in range(1, 7)]
    assert all(row["signal"].shape == (12, 1000) and np.isfinite(row["signal"]).all() for row in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["summary", "--dataset", "cinc", "--rate", "500"], "--rate"),
        (["summary", "--dataset", "ptbxl", "--root", "does/not/exist"], "neither"),
        (["synthetic", "--kind", "mimic"], "--statements"),
    ],
)
def test_bad_arguments_give_a_clear_error(capsys, cinc_root, tmp_path, args, message) -> None:
    if "--root" not in args and args[0] == "summary":
        args = [*args, "--root", str(cinc_root)]
    if args[0] == "synthetic":
        args = [*args, "--out", str(tmp_path)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
