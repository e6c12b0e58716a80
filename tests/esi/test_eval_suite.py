"""The ``eval`` suite end to end on a few real PTB-XL records per fold, with a tiny random model.

Chance-level numbers; the test checks that every task runs, the JSON/Markdown outputs have one
column per compared model, finished tasks are reused on a rerun, and bad options are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esi.cli.main import main
from esi.eval.suite import EvalOptions, run_evaluation


@pytest.mark.slow
def test_eval_suite_runs_every_task_and_resumes(model_dir: Path, ptbxl_root: Path, cinc_root: Path,
                                                tmp_path: Path, recompute_zeroshot_auc) -> None:
    options = EvalOptions(
        root=ptbxl_root, out=tmp_path / "eval", train_folds=[1, 2, 3, 4, 5, 6, 7, 8], test_folds=[9],
        cinc_root=cinc_root, zeroshot_sets=("superclass",), probe_sets=("superclass",), finetune_epochs=1,
        limit=4, progress=False,
    )
    results = run_evaluation([("cqa", model_dir), ("label_text", model_dir)], options)
    cqa = results["models"]["cqa"]
    assert set(cqa) >= {"zeroshot", "probe", "finetune", "patient_id", "retrieval"}
    superclass = cqa["zeroshot"]["superclass"]
    assert superclass["n_records"] == 4 and superclass["n_train_records"] == 32
    expected = recompute_zeroshot_auc(model_dir, ptbxl_root, "superclass", fold=9, limit=4)  # sklearn, by hand
    assert expected and superclass["per_class_auc"] == pytest.approx(expected, abs=1e-6)
    assert superclass["macro_auc"] == pytest.approx(sum(expected.values()) / len(expected), abs=1e-6)
    assert set(cqa["probe"]["superclass"]["fractions"]) == {"0.01", "0.1", "1"}
    assert {"esi_init", "random_init"} <= set(cqa["finetune"]["superclass"])
    patients = cqa["patient_id"]["all_folds"]
    # 36 records: one enrolment per distinct patient, every further record of a patient is a query.
    assert patients["records"]["n_enrolled"] == patients["segments"]["n_queries"]
    assert patients["records"]["n_queries"] == 36 - patients["records"]["n_enrolled"]
    retrieval = cqa["retrieval"]["cqa"]
    assert retrieval["n_pairs"] == 4 and set(retrieval["ecg_to_text"]) == {"recall@1", "recall@5", "recall@10"}
    # The CinC sample's first 4 records have an empty #Dx: unlabelled, so the task records why it has no result.
    assert "no labelled cinc records" in cqa["zeroshot"]["cinc_scored"]["error"]
    # Both models are columns of the table, and identical models give identical numbers.
    table = (tmp_path / "eval" / "results.md").read_text(encoding="utf-8")
    assert "| metric | cqa | label_text |" in table
    assert "| zero-shot superclass: macro AUC |" in table and "| patient id (segments): top-1 accuracy |" in table
    assert results["models"]["label_text"]["zeroshot"]["superclass"]["macro_auc"] == superclass["macro_auc"]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    assert saved["models"]["cqa"]["zeroshot"]["superclass"]["macro_auc"] == pytest.approx(superclass["macro_auc"])

    partial = tmp_path / "eval" / "partial" / "cqa" / "finetune-superclass.json"
    stamp = partial.stat().st_mtime_ns
    rerun = run_evaluation([("cqa", model_dir)], EvalOptions(**{**vars(options), "what": ("finetune",)}))
    assert partial.stat().st_mtime_ns == stamp  # reused, not recomputed
    assert rerun["models"]["cqa"]["finetune"] == cqa["finetune"]


def test_eval_cli_refuses_bad_options(model_dir: Path, ptbxl_root: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    base = ["eval", "--model", str(model_dir), "--root", str(ptbxl_root), "--out", str(tmp_path)]
    assert main(base + ["--train-folds", "1-9", "--test-folds", "9"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(base + ["--what", "zeroshot,bogus"]) == 2
    assert "unknown eval task 'bogus'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--root", str(ptbxl_root), "--out", str(tmp_path)]) == 2
    assert "not an ESI model directory" in capsys.readouterr().err
    assert main(base + ["--model", str(model_dir)]) == 2
    assert "two models named" in capsys.readouterr().err


def test_ptbxl_rate_scores_every_model_on_the_500hz_records(model_dir: Path, ptbxl_root: Path,
                                                           tmp_path: Path) -> None:
    """--ptbxl-rate 500: a 100 Hz model is scored on exactly the records that have 500 Hz files."""
    import pandas as pd

    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    has_500 = table["filename_hr"].fillna("").astype(str).str.len() > 0
    expected = int((has_500 & (table["strat_fold"] == 9)).sum())
    assert 0 < expected < int((table["strat_fold"] == 9).sum())  # a strict subset, so the option matters
    options = EvalOptions(root=ptbxl_root, out=tmp_path / "eval", train_folds=[8], test_folds=[9],
                          what=("zeroshot",), zeroshot_sets=("superclass",), progress=False, ptbxl_rate=500)
    result = run_evaluation([("nano", model_dir)], options)["models"]["nano"]["zeroshot"]["superclass"]
    assert result["n_records"] == expected
    n_loaded = result["n_records"] + result["n_train_records"]
    assert result["input_notes"] == {"resampled from 500 Hz to 100 Hz": n_loaded}


def test_eval_device_cpu_runs_and_missing_cuda_is_a_one_line_error(model_dir: Path, ptbxl_root: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    out = tmp_path / "eval"
    base = ["eval", "--model", f"nano={model_dir}", "--root", str(ptbxl_root), "--out", str(out), "--what", "finetune",
            "--epochs", "1", "--limit", "2", "--quiet"]
    assert main(base + ["--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["options"]["device"] == "cpu"
    finetune = results["models"]["nano"]["finetune"]["superclass"]
    assert {"esi_init", "random_init"} <= set(finetune) and finetune["n_train_records"] == 16
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(base + ["--device", "cuda", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda: CUDA is not available") and "Traceback" not in err
