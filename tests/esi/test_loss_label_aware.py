"""Label-aware contrastive targets: exact reduction to CLIP, hand-checked targets, empty sets, config."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from esi.model.loss import ESILoss, finding_targets


def _features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ecg = F.normalize(torch.randn(n, 16, generator=generator), dim=-1)
    text = F.normalize(torch.randn(n, 16, generator=generator), dim=-1)
    return ecg, text


@pytest.mark.parametrize("targets", ["same_findings", "finding_overlap"])
def test_distinct_finding_sets_reduce_exactly_to_clip(targets: str) -> None:
    ecg, text = _features(6)
    scale = torch.tensor(14.3)
    sets = [("a",), ("b",), ("c", "d"), ("e",), ("f",), ()]  # pairwise disjoint, one empty
    plain = ESILoss(caption_weight=0.0)(ecg, text, scale)["contrastive_loss"]
    aware = ESILoss(caption_weight=0.0, contrastive_targets=targets, finding_vocab=list("abcdef"))(
        ecg, text, scale, finding_sets=sets)["contrastive_loss"]
    assert torch.allclose(aware, plain, rtol=0, atol=1e-6)


def test_exact_set_targets_by_hand() -> None:
    loss = ESILoss(caption_weight=0.0, contrastive_targets="same_findings", finding_vocab=["a", "b"])
    sets = [("a",), ("a",), ("a", "b"), (), ()]
    targets = finding_targets(loss.multi_hot(sets, torch.device("cpu")), "same_findings")
    expected = torch.tensor([[.5, .5, 0, 0, 0], [.5, .5, 0, 0, 0], [0, 0, 1, 0, 0],
                             [0, 0, 0, .5, .5], [0, 0, 0, .5, .5]])
    assert torch.equal(targets, expected)  # the two empty sets are one set of their own, never dropped


def test_overlap_targets_are_jaccard_weights() -> None:
    multi_hot = torch.tensor([[1., 0., 0.], [1., 1., 0.], [0., 0., 1.]])
    targets = finding_targets(multi_hot, "finding_overlap")
    # row 0: J(a, a)=1, J(a, ab)=1/2, J(a, c)=0 -> normalised 2/3, 1/3, 0
    assert torch.allclose(targets[0], torch.tensor([2 / 3, 1 / 3, 0.]))
    assert torch.allclose(targets[1], torch.tensor([1 / 3, 2 / 3, 0.]))
    assert torch.equal(targets[2], torch.tensor([0., 0., 1.]))


def test_shared_findings_lower_the_loss_of_matching_pairs() -> None:
    """Two records with the same findings and swapped texts: one-hot CLIP penalises the swap,
    the label-aware loss does not (both texts are correct for both ECGs)."""
    ecg, _ = _features(4, seed=1)
    text = ecg[[1, 0, 2, 3]]  # records 0 and 1 have each other's text
    scale = torch.tensor(20.0)
    sets = [("norm", "sr"), ("norm", "sr"), ("lbbb",), ("afib",)]
    plain = ESILoss(caption_weight=0.0)(ecg, text, scale)["contrastive_loss"]
    aware = ESILoss(caption_weight=0.0, contrastive_targets="same_findings", finding_vocab=["afib", "lbbb", "norm", "sr"])(
        ecg, text, scale, finding_sets=sets)["contrastive_loss"]
    assert float(aware) < float(plain) - 1.0


def test_unknown_target_mode_is_named() -> None:
    from esi.model.config import ConfigError
    from esi.model.factory import create_model

    with pytest.raises(ValueError, match="contrastive_targets"):
        ESILoss(contrastive_targets="soft")
    with pytest.raises(ConfigError, match="contrastive_targets"):
        create_model("micro", loss={"contrastive_targets": "soft"})
