"""Class-text sources, per-ECG calibration, the ECG-prototype (few-shot) classifier and query embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from esi.cli.main import main
from esi.zeroshot import ZeroShotClassifier, calibrate, prototype_classifier
from esi.zeroshot.labelsets import load_labelset


def test_calibrations() -> None:
    scores = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    centred = calibrate(scores, "centre")
    assert np.allclose(centred, scores - scores.mean(axis=1, keepdims=True))
    z = calibrate(scores, "zscore")
    assert np.allclose(z.std(axis=1), 1.0, atol=1e-4) and np.allclose(z.mean(axis=1), 0.0, atol=1e-5)
    soft = calibrate(scores, "softmax", logit_scale=20.0)
    assert np.allclose(soft.sum(axis=1), 1.0) and (soft.argmax(1) == scores.argmax(1)).all()
    assert calibrate(scores, "raw") is not None and np.array_equal(calibrate(scores, "raw"), scores)
    with pytest.raises(ValueError, match="calibration"):
        calibrate(scores, "platt")


def test_centring_removes_a_per_ecg_offset() -> None:
    """An ECG that resembles every class prompt (a large shared offset) ranks high for all of them under raw
    cosine; centring restores each class's AUC to what the offset-free scores give."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(400, 4))
    clean = y + rng.normal(scale=0.8, size=y.shape)
    offset = rng.normal(scale=3.0, size=(400, 1))
    raw = clean + offset
    auc = lambda s: np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(4)])  # noqa: E731
    assert auc(calibrate(raw, "centre")) > auc(raw) + 0.1
    assert auc(calibrate(raw, "centre")) == pytest.approx(auc(calibrate(clean, "centre")), abs=1e-9)


def test_prototype_classifier_recovers_separable_classes() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 32))
    y = np.eye(3, dtype=int)[rng.integers(0, 3, size=300)]
    embeddings = y @ centres + rng.normal(scale=0.5, size=(300, 32))
    labelset = load_labelset("cinc").resolve().select(["AF", "CRBBB", "NSR"])
    classifier = prototype_classifier(labelset, embeddings[:200], y[:200])
    scores = classifier.scores(embeddings[200:])
    assert min(roc_auc_score(y[200:, j], scores[:, j]) for j in range(3)) > 0.95
    shuffled = prototype_classifier(labelset, embeddings[:200], rng.permutation(y[:200]))
    assert np.mean([roc_auc_score(y[200:, j], shuffled.scores(embeddings[200:])[:, j]) for j in range(3)]) < 0.8


def test_views_class_text_weighs_members_by_the_training_prior(model_dir: Path, ptbxl_root: Path) -> None:
    from esi.serve.inference import load_model

    model = load_model(model_dir)
    labelset = load_labelset("superclass").resolve(ptbxl_root / "scp_statements.csv")
    common = ZeroShotClassifier.build(model, labelset, class_text="views", prior={"CRBBB": 100.0, "CLBBB": 1.0})
    rare = ZeroShotClassifier.build(model, labelset, class_text="views", prior={"CRBBB": 1.0, "CLBBB": 100.0})
    cd = labelset.class_ids.index("CD")
    assert any("right bundle branch block" in t for t in common.prompts["CD"])
    assert not np.allclose(common.class_embeddings[cd], rare.class_embeddings[cd])
    nd = labelset.class_ids.index("NORM")  # the prior of the other classes did not change
    assert np.allclose(common.class_embeddings[nd], rare.class_embeddings[nd], atol=1e-6)
    mean = ZeroShotClassifier.build(model, labelset, class_text="mean")
    assert np.allclose(np.linalg.norm(mean.class_embeddings, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="class text"):
        ZeroShotClassifier.build(model, labelset, class_text="captions")


def test_zeroshot_cli_prototypes_and_class_text(model_dir: Path, ptbxl_root: Path, capsys) -> None:
    args = ["zeroshot", "--model", str(model_dir), "--dataset", "ptbxl", "--root", str(ptbxl_root),
            "--labels", "superclass", "--folds", "9", "--limit", "30", "--json"]
    assert main(args + ["--prototypes"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["class_text"] == "prototypes" and set(result["per_class"]) == {"NORM", "MI", "STTC", "CD", "HYP"}
    assert main(args + ["--class-text", "views", "--calibration", "zscore"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["class_text"], result["calibration"]) == ("views", "zscore")
    assert main(args[:-5] + ["--prototypes", "--json"]) == 2  # no folds: no example ECGs to average
    assert "--prototypes" in capsys.readouterr().err


def test_query_embedding_modes(model_dir: Path) -> None:
    from esi.serve.inference import ESIInference

    inference = ESIInference(model_dir)
    raw = inference.query_embedding("normal ECG", "raw")
    assert np.allclose(raw, inference.embed_texts(["normal ECG"])[0], atol=1e-6)
    views = inference.query_embedding("normal ECG", "views")
    assert np.isclose(np.linalg.norm(views), 1.0, atol=1e-5) and not np.allclose(views, raw)
    free = "wide QRS with M-shaped complex in V1"
    assert np.allclose(inference.query_embedding(free, "views"), inference.query_embedding(free, "raw"), atol=1e-6)


def test_unresolved_ptbxl_set_takes_its_members_from_the_models_label_terms() -> None:
    """The API has no scp_statements.csv: the model's label_prior.json terms place codes in classes."""
    from esi.zeroshot import class_codes, member_names

    labelset = load_labelset("superclass")
    terms = {"CRBBB": {"diagnostic_class": "CD"}, "CLBBB": {"diagnostic_class": "CD"},
             "NORM": {"diagnostic_class": "NORM"}, "SR": {"description": "sinus rhythm"}}
    codes = class_codes(labelset, terms)
    assert codes["CD"] == {"CRBBB", "CLBBB"} and codes["NORM"] == {"NORM"} and codes["HYP"] == set()
    names = member_names(labelset, {"CRBBB": 3.0, "CLBBB": 1.0}, terms)["CD"]
    assert names == {"Complete right bundle branch block": 3.0, "Complete left bundle branch block": 1.0}


def test_query_evaluation_matches_a_recomputation(model_dir: Path, ptbxl_root: Path) -> None:
    from corpora.ptbxl import PTBXLReader
    from esi.eval.data import load_eval_data
    from esi.eval.query import query_evaluation
    from esi.serve.inference import ESIInference

    inference = ESIInference(model_dir)
    data = load_eval_data(PTBXLReader(ptbxl_root, rate=100), inference.input, folds=[9], limit_per_fold_set=40,
                          progress=False)
    result = query_evaluation(inference, data, folds=[9], query_text="raw")
    normal = np.array([("NORM" in labels) for labels in data.labels])
    order = np.argsort(-(data.embeddings(inference) @ inference.query_embedding("normal ECG", "raw")), kind="stable")
    row = result["queries"]["normal ECG"]
    assert row["precision@5"] == pytest.approx(normal[order[:5]].mean())
    assert row["chance"] == pytest.approx(normal.mean()) and row["ceiling@5"] == min(5, normal.sum()) / 5
    assert result["mean_precision@5"] == pytest.approx(np.mean([r["precision@5"] for r in result["queries"].values()]))
    for query in result["skipped_queries"]:  # no relevant record among these 40: left out of the means
        assert query not in result["queries"]


def test_query_evaluation_supervised_reference_matches_a_recomputation(model_dir: Path, ptbxl_root: Path) -> None:
    """The probe reference ranks the query folds by a linear probe fit on the training folds' labels."""
    from corpora.ptbxl import PTBXLReader
    from esi.eval.data import load_eval_data
    from esi.eval.probe import fit_probe
    from esi.eval.query import query_evaluation
    from esi.serve.inference import ESIInference

    inference = ESIInference(model_dir)
    data = load_eval_data(PTBXLReader(ptbxl_root, rate=100), inference.input, folds=[1, 2, 9], limit_per_fold_set=60,
                          progress=False)
    result = query_evaluation(inference, data, folds=[9], query_text="raw", reference_folds=[1, 2])
    embeddings = data.embeddings(inference)
    folds = np.array(data.folds)
    normal = np.array([("NORM" in labels) for labels in data.labels])
    train, test = folds != 9, folds == 9
    probe = fit_probe(embeddings[train], normal[train].astype(int))
    order = np.argsort(-probe.decision_function(embeddings[test]).ravel(), kind="stable")
    row = result["queries"]["normal ECG"]
    assert row["probe_precision@5"] == pytest.approx(normal[test][order[:5]].mean())
    answered = [r for r in result["queries"].values() if "probe_precision@5" in r]
    assert result["probe_queries"] == len(answered) >= 5
    assert result["mean_probe_precision@5"] == pytest.approx(np.mean([r["probe_precision@5"] for r in answered]))
    with pytest.raises(ValueError, match="overlap"):
        query_evaluation(inference, data, folds=[9], reference_folds=[2, 9])


def test_display_temperature_is_the_models_clamped_scale(model_dir: Path, ptbxl_root: Path) -> None:
    """The classifier's temperature is ``ESIModel.scale()``: exp(logit_scale) below the clamp, 100 above it."""
    import math

    import torch

    from esi.serve.inference import load_model

    model = load_model(model_dir)
    labelset = load_labelset("superclass").resolve(ptbxl_root / "scp_statements.csv")
    for logit_scale, expected in ((math.log(50.0), 50.0), (math.log(1000.0), 100.0)):
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
        classifier = ZeroShotClassifier.build(model, labelset, class_text="templates")
        assert classifier.logit_scale == pytest.approx(expected, rel=1e-5)


def test_text_queries_are_embedded_as_typed_by_default(model_dir: Path) -> None:
    """raw is the default query text (it ranked better than the views expansion on held-out records) in the
    library, ``esi search`` and ``esi eval`` alike."""
    from esi.cli.main import build_parser
    from esi.serve.inference import ESIInference

    inference = ESIInference(model_dir)
    typed = inference.embed_texts(["atrial fibrillation"])[0]
    assert np.allclose(inference.query_embedding("atrial fibrillation"), typed / np.linalg.norm(typed), atol=1e-6)
    parser = build_parser()
    assert parser.parse_args(["search", "--model", "m", "--collection", "c", "q"]).query_text == "raw"
    assert parser.parse_args(["eval", "--model", "m", "--root", "r", "--out", "o"]).query_text == "raw"
