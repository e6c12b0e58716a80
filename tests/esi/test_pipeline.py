"""The main job end to end on the real PTB-XL subset (grounded captions, one epoch), then a no-op re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esi.__main__ import main


@pytest.mark.slow
def test_main_job_runs_every_step_then_skips_them(shared_data: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["run", "--run-dir", str(run_dir), "--data", str(shared_data), "--llm", "none", "--epochs", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out

    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "zero-shot superclass macro AUC (fold 9)" in report
    assert "## Text→ECG" in report and "## ECG→text" in report
    zeroshot = json.loads((run_dir / "zeroshot_superclass.json").read_text(encoding="utf-8"))
    assert zeroshot["n_records"] == 158  # fold 9 of ptbxl-mini
    assert 0.0 <= zeroshot["macro_auc"] <= 1.0
    summary = json.loads((run_dir / "captions" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rows"] == 1025 and summary["finding_sources"].get("llm", 0) == 0
    assert (run_dir / "model" / "final" / "model.safetensors").exists()
    assert first.count("up to date, skipped") == 0

    assert main(argv) == 0
    second = capsys.readouterr().out
    assert second.count("up to date, skipped") == 6  # every step but the examples


def test_missing_data_root_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["run", "--run-dir", str(tmp_path / "run"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "PTB-XL data not found" in capsys.readouterr().err
