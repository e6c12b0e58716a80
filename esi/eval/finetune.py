"""Full fine-tuning of the ESI ECG encoder with a classification head, and its supervised baseline.

Both runs use the same architecture (the model's 1-D ConvNeXt-V2 config), data, seed and schedule
(AdamW, cosine decay, BCE on multi-hot targets); only the encoder's initial weights differ: the
pretrained ESI encoder vs random init. F1 thresholds are chosen on the training records' scores
after training (no test label is used); AUC on the test records.

Training runs on ``device`` (CUDA when the suite runs with ``--device cuda``/``auto`` on a GPU); the
signals stay in host memory and each batch moves to the device, so a large training set never has to
fit in GPU memory. Random weights are drawn on the CPU before the classifier moves, so a seed gives the
same start on every device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from esi.eval.data import EvalData, labelset_targets
from esi.eval.metrics import classification_report
from esi.model.ecg_encoder import ConvNeXtV2ECG, ECGEncoderConfig
from esi.serve.inference import ESIInference


@dataclass
class FinetuneConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    seed: int = 0


class ECGClassifier(nn.Module):
    """ConvNeXt encoder -> pooled features -> linear head (one logit per class)."""

    def __init__(self, encoder: ConvNeXtV2ECG, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.width, n_classes)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.encoder(signals)
        return self.head(pooled)


def build_classifier(ecg_config: ECGEncoderConfig, n_classes: int, init_encoder: nn.Module | None,
                     seed: int) -> ECGClassifier:
    torch.manual_seed(seed)
    encoder = copy.deepcopy(init_encoder) if init_encoder is not None else ConvNeXtV2ECG(ecg_config)
    return ECGClassifier(encoder, n_classes)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def predict(classifier: nn.Module, signals: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Sigmoid class scores (N, C) as numpy, computed on the classifier's device in batches."""
    classifier.eval()
    device = _device_of(classifier)
    out = [torch.sigmoid(classifier(torch.from_numpy(signals[i:i + batch_size]).to(device))).cpu().numpy()
           for i in range(0, len(signals), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def train_classifier(classifier: ECGClassifier, signals: np.ndarray, targets: np.ndarray, config: FinetuneConfig,
                     progress: bool = False, desc: str = "fine-tune") -> list[float]:
    """BCE training on the classifier's device; returns the mean loss of each epoch."""
    device = _device_of(classifier)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(signals) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
    loss_fn = nn.BCEWithLogitsLoss()
    x_all = torch.from_numpy(np.ascontiguousarray(signals, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    losses = []
    for epoch in tqdm(range(config.epochs), disable=not progress, desc=desc):
        classifier.train()
        order = torch.randperm(len(x_all), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            x = x_all[index].to(device, non_blocking=True)
            loss = loss_fn(classifier(x), y_all[index].to(device, non_blocking=True))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{desc}: loss became {losses[-1]} in epoch {epoch + 1}")
    return losses


def finetune_and_baseline(
    ecg_config: ECGEncoderConfig, pretrained_encoder: nn.Module | None, train_signals: np.ndarray,
    y_train: np.ndarray, test_signals: np.ndarray, y_test: np.ndarray, class_ids: Sequence[str],
    config: FinetuneConfig | None = None, progress: bool = False, device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fine-tune from ESI weights and from random init with the same recipe on ``device``; both reports."""
    config = config or FinetuneConfig()
    results: dict[str, Any] = {"config": vars(config).copy(), "n_train_records": int(len(train_signals))}
    runs = [("esi_init", pretrained_encoder), ("random_init", None)]
    threads = torch.get_num_threads()
    for name, init in runs:
        if name == "esi_init" and init is None:
            continue
        classifier = build_classifier(ecg_config, len(class_ids), init, config.seed).to(device)
        losses = train_classifier(classifier, train_signals, y_train, config, progress, desc=f"fine-tune {name}")
        report = classification_report(
            class_ids, y_test, predict(classifier, test_signals), y_train, predict(classifier, train_signals)
        )
        report["train_loss"] = losses
        results[name] = report
    torch.set_num_threads(threads)
    return results


def finetune_evaluation(
    inference: ESIInference, data: EvalData, labelset: str, *, train_folds: Sequence[int], test_folds: Sequence[int],
    epochs: int = 5, seed: int = 0, progress: bool = True, device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fine-tune the model's ECG encoder and a random-init twin on the train folds; both scored on the test folds."""
    resolved, y = labelset_targets(data, labelset)
    train, test = data.fold_mask(train_folds), data.fold_mask(test_folds)
    result = finetune_and_baseline(
        inference.model.config.ecg, inference.model.ecg_encoder, data.signals[train], y[train],
        data.signals[test], y[test], resolved.class_ids, FinetuneConfig(epochs=epochs, seed=seed), progress=progress,
        device=device,
    )
    result["labelset"] = resolved.name
    return result
