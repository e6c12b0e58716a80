"""Training-time signal augmentation on real PTB-XL signals: the official recipe by default, and time out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corpora.ptbxl import PTBXLReader
from esi.train.data import SignalAugmentation


@pytest.fixture(scope="module")
def real_signals(ptbxl_root) -> torch.Tensor:
    """64 real 12-lead records, z-scored per record as the model input is."""
    reader = PTBXLReader(ptbxl_root, rate=100)
    records = [reader.read(rid) for rid in reader.record_ids()[:64]]
    x = np.stack([r.signal for r in records]).astype(np.float32)  # (records, leads, samples)
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    return torch.from_numpy(x)


def test_default_is_the_official_recipe(real_signals) -> None:
    """Defaults: additive jitter then per-lead scaling, both sd 0.003, drawn in that order (the ESI code)."""
    out = SignalAugmentation()(real_signals, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(real_signals.shape, generator=generator) * 0.003
    gain = 1.0 + torch.randn(real_signals.shape[:2] + (1,), generator=generator) * 0.003
    assert torch.equal(out, (real_signals + noise) * gain)
    assert 0 < (out - real_signals).abs().max() < 0.1


def test_time_out_zeroes_one_stretch_in_every_lead_of_about_half_the_records(real_signals) -> None:
    signals = real_signals.repeat(8, 1, 1)  # 512 records
    n_samples = signals.shape[-1]
    plain = SignalAugmentation(jitter=0.1, scaling=0.1)(signals, torch.Generator().manual_seed(3))
    out = SignalAugmentation(jitter=0.1, scaling=0.1, time_out=0.2)(signals, torch.Generator().manual_seed(3))
    masked_records = 0
    for before, after in zip(plain, out):
        zero = (after == 0).all(dim=0)  # a sample zeroed in every lead
        changed = (after != before).any(dim=0)
        assert torch.equal(changed, zero & (before != 0).any(dim=0))  # nothing else moved
        if zero.any():
            where = torch.nonzero(zero).flatten()
            assert where[-1] - where[0] + 1 == len(where)  # one contiguous stretch
            assert len(where) <= 0.2 * n_samples
            masked_records += 1
    assert 0.4 < masked_records / len(signals) < 0.6
    # the same seed gives the same draws: resume replays a step's augmentation exactly
    again = SignalAugmentation(jitter=0.1, scaling=0.1, time_out=0.2)(signals, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


@pytest.mark.parametrize("settings", [{"jitter": float("nan")}, {"scaling": -0.1}, {"time_out": 1.0}, {"jitter": True}])
def test_unusable_settings_are_refused_by_name(settings) -> None:
    with pytest.raises(ValueError, match=f"augmentation.{next(iter(settings))}"):
        SignalAugmentation(**settings)
