"""Zero-shot classifier and ``python -m esi zeroshot`` with a tiny random ESI model on real PTB-XL fold 9.

The model is untrained, so the numbers are chance level: these tests check behaviour (shapes, keys,
thresholds from training folds only, errors), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from esi.cli.main import main
from esi.zeroshot import ZeroShotClassifier, load_templates
from esi.zeroshot.labelsets import load_labelset


def test_classifier_scores_are_cosine_similarities(model_dir: Path) -> None:
    from esi.serve.inference import load_model

    model = load_model(model_dir)
    labelset = load_labelset("cinc").resolve().select(["AF", "CRBBB", "NSR"])
    classifier = ZeroShotClassifier.build(model, labelset, "ecg", use_knowledge=True)
    assert classifier.class_embeddings.shape == (3, model.config.embed_dim)
    assert np.allclose(np.linalg.norm(classifier.class_embeddings, axis=1), 1.0, atol=1e-5)
    assert len(classifier.prompts["CRBBB"]) > len(load_templates("ecg"))  # templates + knowledge description
    ecg = np.random.default_rng(0).normal(size=(4, model.config.embed_dim))
    scores = classifier.scores(ecg)
    unit = ecg / np.linalg.norm(ecg, axis=1, keepdims=True)
    assert np.allclose(scores, unit @ classifier.class_embeddings.T, atol=1e-5)
    assert classifier.top_classes(scores[0], k=2)[0]["score"] == pytest.approx(scores[0].max())
    with pytest.raises(ValueError, match="do not match"):
        classifier.scores(np.ones((2, 3)))


def test_zeroshot_cli_json_on_real_fold9(model_dir: Path, ptbxl_root: Path, capsys: pytest.CaptureFixture,
                                        recompute_zeroshot_auc) -> None:
    code = main(["zeroshot", "--model", str(model_dir), "--dataset", "ptbxl", "--root", str(ptbxl_root),
                 "--labels", "superclass", "--folds", "9", "--limit", "30", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {"macro_auc", "macro_f1", "per_class", "n_records", "skipped_classes"} <= set(result)
    assert result["n_records"] == 30
    assert result["threshold_folds"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert result["n_train_records"] == 30  # --limit caps the threshold set too
    assert set(result["per_class"]) == {"NORM", "MI", "STTC", "CD", "HYP"}
    evaluated = [c for c, row in result["per_class"].items() if row["auc"] is not None]
    # the AUCs are those of the scores, recomputed here with sklearn
    expected = recompute_zeroshot_auc(model_dir, ptbxl_root, "superclass", fold=9, limit=30)
    assert len(expected) >= 3 and set(evaluated) == set(expected)
    assert {c: result["per_class"][c]["auc"] for c in evaluated} == pytest.approx(expected, abs=1e-6)
    assert result["macro_auc"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    skipped = {s["class"] for s in result["skipped_classes"]}
    assert skipped == set(result["per_class"]) - set(evaluated)
    assert all(result["per_class"][c]["n_positive"] == 0 for c in skipped)


def test_zeroshot_thresholds_do_not_depend_on_test_labels(model_dir: Path, ptbxl_root: Path) -> None:
    from corpora.ptbxl import PTBXLReader
    from esi.eval.data import load_eval_data, merge_eval_data
    from esi.eval.zeroshot import zeroshot_evaluation
    from esi.serve.inference import ESIInference, ModelInput

    inference = ESIInference(model_dir)
    reader = PTBXLReader(ptbxl_root)
    parts = [load_eval_data(reader, ModelInput(100.0, 1000), folds=[f], limit_per_fold_set=12, progress=False) for f in (8, 9)]
    data = merge_eval_data(parts)
    first = zeroshot_evaluation(inference, data, "superclass", test_folds=[9], threshold_folds=[8])
    # Flip every test label: AUCs change, the thresholds (chosen on fold 8) must not.
    for i, fold in enumerate(data.folds):
        if fold == 9:
            data.labels[i] = {"NORM": 100.0} if "NORM" not in data.labels[i] else {"IMI": 100.0}
    second = zeroshot_evaluation(inference, data, "superclass", test_folds=[9], threshold_folds=[8])
    assert first["thresholds"] == second["thresholds"]
    assert first["per_class_auc"] != second["per_class_auc"]


def test_zeroshot_cli_errors(model_dir: Path, ptbxl_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["zeroshot", "--model", str(model_dir), "--dataset", "ptbxl", "--root", str(ptbxl_root),
                 "--labels", "nonsense", "--folds", "9"]) == 2
    err = capsys.readouterr().err
    assert "unknown label set 'nonsense'" in err and "ptbxl_superclass" in err
    assert main(["zeroshot", "--model", str(model_dir), "--dataset", "ptbxl", "--root", str(ptbxl_root),
                 "--labels", "superclass", "--classes", "NORM,XYZ"]) == 2
    assert "no class 'XYZ'" in capsys.readouterr().err
