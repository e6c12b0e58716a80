"""Optimiser and learning-rate schedule of pretraining (the paper's AdamW with warm-up and step decay)."""

from __future__ import annotations

import math

import torch

from esi.model.model import ESIModel
from esi.train.config import TrainConfig


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_epochs``, then x``lr_decay_factor`` every ``lr_decay_every_epochs``."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.lr_decay_every_epochs:
        return config.lr_decay_factor ** math.floor(step / (config.lr_decay_every_epochs * steps_per_epoch))
    return 1.0


def build_optimizer(model: ESIModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings' positions and the temperature (CLIP practice).

    The pretrained text backbone's trainable layers get ``lr * text_lr_scale``: a tower that already
    embeds language well needs small steps, the randomly initialised parts large ones.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "logit_scale" in name or "positional_embedding" in name
        groups.setdefault((name.startswith("text_encoder.backbone."), no_decay), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
          "lr": config.lr * (config.text_lr_scale if backbone else 1.0)}
         for (backbone, no_decay), params in sorted(groups.items())],
        lr=config.lr, betas=tuple(config.betas))
