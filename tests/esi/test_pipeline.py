"""The main job end to end on the real PTB-XL subset (grounded captions, one epoch), then a no-op re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esi.cli.main import main


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
    per_class = [row["auc"] for row in zeroshot["per_class"].values() if row["auc"] is not None]
    assert zeroshot["macro_auc"] == pytest.approx(sum(per_class) / len(per_class))
    assert (zeroshot["class_text"], zeroshot["calibration"]) == ("views", "raw")
    assert "## Text→ECG: fold-9 records matching “normal ECG”" in report
    assert report.count("| precision@5 | chance | supervised reference |") == 1 and "| normal ECG | " in report
    reference = next(line for line in report.splitlines() if "linear probe on folds 1-8 labels" in line)
    assert float(reference.rstrip(" |").rsplit("| ", 1)[1]) > 0  # answered, not the "–" of a missing value
    val = [json.loads(line) for line in (run_dir / "model" / "metrics.jsonl").read_text().splitlines()
           if '"event": "val"' in line]
    assert {"val_zeroshot_superclass_auc", "val_ref_caption_centroid_auc", "val_ref_ecg_prototype_auc"} <= set(val[-1])
    assert (run_dir / "model" / "best" / "checkpoint.json").exists()
    summary = json.loads((run_dir / "captions" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rows"] == 1025 and summary["finding_sources"].get("llm", 0) == 0
    assert (run_dir / "model" / "final" / "model.safetensors").exists()
    assert first.count("up to date, skipped") == 0

    assert main(argv) == 0
    second = capsys.readouterr().out
    assert second.count("up to date, skipped") == 6  # every step but the examples

    # re-training reruns every step after it from scratch: no resume, a new index, a fresh zero-shot result
    before = (run_dir / "zeroshot_superclass.json").stat().st_mtime_ns
    assert main(argv + ["--force", "pretrain"]) == 0
    third = capsys.readouterr().out
    assert third.count("up to date, skipped") == 3  # store, captions, signals
    events = [json.loads(line)["event"] for line in (run_dir / "model" / "metrics.jsonl").read_text().splitlines()]
    assert "resume" not in events and events.count("end") == 1
    assert (run_dir / "zeroshot_superclass.json").stat().st_mtime_ns > before
    assert "158 ECGs added, 0 already indexed" in third  # the collection was rebuilt, not topped up


def test_missing_data_root_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["run", "--run-dir", str(tmp_path / "run"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "PTB-XL data not found" in capsys.readouterr().err
