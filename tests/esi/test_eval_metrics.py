"""Metric code on synthetic scores with known answers; thresholds never look at test labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from esi.eval.metrics import (
    best_f1_thresholds,
    classification_report,
    f1_at_thresholds,
    multilabel_auc,
    recall_at_k,
)
from esi.eval.patient_id import identify, records_protocol
from esi.eval.probe import linear_probe, subset_indices
from esi.model.io import to_json


def test_auc_known_values_and_skipped_classes() -> None:
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    # class A: positives score 0.9, 0.8 vs negatives 0.1, 0.85 -> 3 of 4 pairs ordered = 0.75
    scores = np.array([[0.9, 0.3, 0.1], [0.8, 0.2, 0.2], [0.1, 0.5, 0.3], [0.85, 0.1, 0.4]])
    result = multilabel_auc(y, scores, ["A", "B", "C"])
    assert result["per_class_auc"]["A"] == pytest.approx(0.75)
    # class C: positives 0.1, 0.3 vs negatives 0.2, 0.4 -> pairs (0.1<0.2, 0.1<0.4, 0.3>0.2, 0.3<0.4) = 0.25
    assert result["per_class_auc"]["C"] == pytest.approx(0.25)
    assert "B" not in result["per_class_auc"]
    assert result["skipped"] == [{"class": "B", "reason": "no positive test record"}]
    assert result["macro_auc"] == pytest.approx(0.5)


def test_auc_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        multilabel_auc(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"])


def test_thresholds_use_only_training_data() -> None:
    rng = np.random.default_rng(0)
    y_train = np.array([[1], [1], [0], [0], [0]])
    train_scores = np.array([[0.7], [0.6], [0.5], [0.2], [0.1]])
    thresholds = best_f1_thresholds(y_train, train_scores)
    assert thresholds[0] == pytest.approx(0.6)  # the cut that gives F1 = 1 on the training data
    # The same training data gives the same thresholds whatever the test labels are.
    test_scores = rng.random((20, 1))
    for _ in range(3):
        y_test = rng.integers(0, 2, size=(20, 1))
        y_test[0, 0], y_test[1, 0] = 1, 0
        report = classification_report(["X"], y_test, test_scores, y_train, train_scores)
        assert report["thresholds"]["X"] == pytest.approx(0.6)
        expected_f1 = f1_at_thresholds(y_test, test_scores, thresholds, ["X"])["macro_f1"]
        assert report["macro_f1"] == pytest.approx(expected_f1)


def test_threshold_for_class_without_training_positive_never_fires() -> None:
    thresholds = best_f1_thresholds(np.array([[0], [0]]), np.array([[0.9], [0.1]]))
    assert math.isinf(thresholds[0]) and thresholds[0] > 0
    f1 = f1_at_thresholds(np.array([[1], [0]]), np.array([[5.0], [0.0]]), thresholds, ["X"])
    assert f1["per_class_f1"]["X"] == 0.0


def test_recall_at_k_identity_and_duplicates() -> None:
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.6, 0.5, 0.1]])
    result = recall_at_k(sim, ks=(1, 2, 3))
    assert result == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(2 / 3), "recall@3": 1.0}
    relevant = np.eye(3, dtype=bool)
    relevant[1, 0] = True  # item 0 has the same caption as item 1
    assert recall_at_k(sim, ks=(1,), relevant=relevant)["recall@1"] == pytest.approx(2 / 3)


def test_to_json_writes_nan_as_null() -> None:
    assert to_json({"a": math.nan, "b": np.float32(0.5), "c": np.int64(3)}) == (
        '{\n  "a": null,\n  "b": 0.5,\n  "c": 3\n}'
    )


def test_linear_probe_learns_separable_classes() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(300, 2))
    x = rng.normal(size=(300, 8)) + 3.0 * np.c_[y, np.zeros((300, 6))]
    results = linear_probe(x[:200], y[:200], x[200:], y[200:], ["a", "b"], fractions=(0.1, 1.0), seeds=(0, 1))
    assert results["1"]["macro_auc"] > 0.95
    assert results["0.1"]["n_train_records"] == 20
    assert len(results["0.1"]["runs"]) == 2
    assert not np.array_equal(subset_indices(200, 0.1, 0), subset_indices(200, 0.1, 1))
    assert np.array_equal(subset_indices(200, 0.1, 3), subset_indices(200, 0.1, 3))


def test_patient_identification_protocol() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 16))
    patients = ["p0", "p0", "p1", "p1", "p2", "p3", "p4", "p4"]
    embeddings = np.stack([centres[int(p[1])] + 0.05 * rng.normal(size=16) for p in patients])
    ids = [str(i) for i in range(1, 9)]
    result = records_protocol(embeddings, patients, ids)
    assert result["n_queries"] == 3  # second records of p0, p1, p4
    assert result["n_enrolled"] == 5  # one per patient, single-record patients as distractors
    assert result["top1_accuracy"] == 1.0 and result["pair_auc"] == 1.0
    shuffled = identify(embeddings[[1]], ["p0"], embeddings[[2, 0]], ["p1", "p0"])
    assert shuffled["top1_accuracy"] == 1.0
    with pytest.raises(ValueError, match="enrolled"):
        identify(embeddings[[1]], ["p9"], embeddings[[0]], ["p0"])
