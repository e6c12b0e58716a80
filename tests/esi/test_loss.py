"""ESILoss against a direct computation of the symmetric InfoNCE and the pad-masked token cross-entropy."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from esi.model.loss import ESILoss


def test_loss_matches_direct_computation() -> None:
    torch.manual_seed(0)
    ecg = F.normalize(torch.randn(6, 8), dim=-1)
    text = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = torch.randn(6, 5, 11)
    targets = torch.randint(1, 11, (6, 5))
    targets[0, 3:] = 0  # padding is ignored
    targets[4, 1:] = 0
    parts = ESILoss(contrastive_weight=0.5, caption_weight=2.0, pad_id=0)(ecg, text, scale, logits, targets)

    sim = scale * ecg @ text.T
    labels = torch.arange(6)
    contrastive = (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2
    keep = targets != 0
    caption = F.cross_entropy(logits[keep], targets[keep])
    assert parts["contrastive_loss"] == pytest.approx(float(contrastive), rel=1e-5)
    assert parts["caption_loss"] == pytest.approx(float(caption), rel=1e-5)
    assert parts["loss"] == pytest.approx(0.5 * float(contrastive) + 2.0 * float(caption), rel=1e-5)


def test_ablation_weights() -> None:
    ecg = F.normalize(torch.randn(4, 8), dim=-1)
    only_con = ESILoss(1.0, 0.0)(ecg, ecg, torch.tensor(5.0))
    assert set(only_con) == {"contrastive_loss", "loss"}
    logits, targets = torch.randn(4, 3, 7), torch.randint(1, 7, (4, 3))
    only_cap = ESILoss(0.0, 1.0)(None, None, torch.tensor(5.0), logits, targets)
    assert set(only_cap) == {"caption_loss", "loss"}
    with pytest.raises(ValueError, match="not both 0"):
        ESILoss(0.0, 0.0)
