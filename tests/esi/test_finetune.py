"""Fine-tuning (``esi.eval.finetune``) learns: AUC > 0.9 on synthetic ECGs whose classes are clear waveform
features, and chance level when the training labels are shuffled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esi.eval.finetune import FinetuneConfig, finetune_and_baseline
from esi.model.ecg_encoder import ConvNeXtV2ECG, ECGEncoderConfig

CLASSES = ["SLOW_WAVE", "SPIKES"]
ENCODER = ECGEncoderConfig(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], drop_path_rate=0.0)
RECIPE = FinetuneConfig(epochs=10, batch_size=16, lr=3e-3, seed=0)


def _signals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12, 256) noise; class 0 adds a 32-sample-period sine (random phase), class 1 a spike every 16
    samples (random offset). The two labels are independent (multi-label)."""
    y = rng.integers(0, 2, size=(n, len(CLASSES)))
    x = rng.normal(size=(n, 12, 256))
    t = np.arange(256)
    for i in range(n):
        if y[i, 0]:
            x[i] += 1.5 * np.sin(2 * np.pi * t / 32 + rng.uniform(0, 2 * np.pi))
        if y[i, 1]:
            x[i, :, rng.integers(0, 16)::16] += 4.0
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x_train, y_train = _signals(128, rng)
    x_test, y_test = _signals(64, rng)
    assert 10 < y_test.sum(axis=0).min() and y_test.sum(axis=0).max() < 54  # both outcomes in the test set
    return x_train, y_train, x_test, y_test


def test_finetuning_separates_separable_classes(data) -> None:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(1)
    pretrained = ConvNeXtV2ECG(ENCODER)  # stands in for a pretrained ESI encoder
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    results = finetune_and_baseline(ENCODER, pretrained, x_train, y_train, x_test, y_test, CLASSES, RECIPE)
    assert results["n_train_records"] == 128
    for run in ("esi_init", "random_init"):
        report = results[run]
        assert set(report["per_class_auc"]) == set(CLASSES)
        assert min(report["per_class_auc"].values()) > 0.9, (run, report["per_class_auc"])
        assert report["macro_auc"] == pytest.approx(np.mean(list(report["per_class_auc"].values())))
        assert report["macro_f1"] > 0.8, (run, report["per_class_f1"])  # thresholds chosen on training scores
        assert len(report["train_loss"]) == RECIPE.epochs
        assert report["train_loss"][-1] < 0.5 * report["train_loss"][0], report["train_loss"]
    # the ESI-initialised run fine-tunes a copy: the given encoder is untouched
    assert all(torch.equal(before[k], v) for k, v in pretrained.state_dict().items())


def test_finetuning_on_shuffled_labels_stays_at_chance(data) -> None:
    """The same recipe with the training labels permuted cannot transfer to the test labels."""
    x_train, y_train, x_test, y_test = data
    shuffled = y_train[np.random.default_rng(1).permutation(len(y_train))]
    results = finetune_and_baseline(ENCODER, None, x_train, shuffled, x_test, y_test, CLASSES, RECIPE)
    assert "esi_init" not in results
    assert results["random_init"]["macro_auc"] < 0.7, results["random_init"]["per_class_auc"]


def test_the_device_argument_trains_there_and_cpu_is_the_default(data) -> None:
    """``device="cpu"`` is the old behaviour exactly; the classifier (not only the data) moves to the device."""
    x_train, y_train, x_test, y_test = data
    quick = FinetuneConfig(epochs=1, batch_size=32, lr=3e-3, seed=0)
    default = finetune_and_baseline(ENCODER, None, x_train, y_train, x_test, y_test, CLASSES, quick)
    on_cpu = finetune_and_baseline(ENCODER, None, x_train, y_train, x_test, y_test, CLASSES, quick, device="cpu")
    assert on_cpu["random_init"]["train_loss"] == default["random_init"]["train_loss"]
    assert on_cpu["random_init"]["per_class_auc"] == default["random_init"]["per_class_auc"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetuning_on_cuda_learns_as_on_cpu(data) -> None:
    x_train, y_train, x_test, y_test = data
    results = finetune_and_baseline(ENCODER, None, x_train, y_train, x_test, y_test, CLASSES, RECIPE, device="cuda")
    assert min(results["random_init"]["per_class_auc"].values()) > 0.9, results["random_init"]["per_class_auc"]
