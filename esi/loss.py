"""ESI objective: λ_con · L_con + λ_cap · L_cap (paper default 1:1).

L_con is open_clip's ``ClipLoss`` (symmetric InfoNCE) over the *global* batch: under DDP it
all-gathers the features with gradient (``local_loss=False, gather_with_grad=True``), so every rank
computes the same N×N loss and DDP's gradient averaging reproduces the single-process gradient.

L_cap is token-level cross-entropy over non-pad targets. open_clip's ``CoCaLoss`` takes the mean
over each rank's own tokens, which under DDP weights ranks with shorter captions more than a
single process would; here the token sum is divided by the token count all-reduced over ranks
(times world size, undoing DDP's averaging), so the gradient equals the single-process one on the
same global batch.
"""

from __future__ import annotations

import torch
from torch import distributed as dist
from torch.nn import functional as F

from esi._open_clip import ClipLoss


class ESILoss(torch.nn.Module):
    def __init__(self, contrastive_weight: float = 1.0, caption_weight: float = 1.0, pad_id: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        if contrastive_weight < 0 or caption_weight < 0 or contrastive_weight + caption_weight == 0:
            raise ValueError("loss weights must be >= 0 and not both 0")
        self.contrastive_weight = contrastive_weight
        self.caption_weight = caption_weight
        self.pad_id = pad_id
        self.world_size = world_size
        self.clip_loss = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=False,
                                  rank=rank, world_size=world_size)

    def caption_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        token_losses = F.cross_entropy(logits.float().permute(0, 2, 1), targets, ignore_index=self.pad_id,
                                       reduction="sum")
        count = (targets != self.pad_id).sum().to(torch.float32)
        if self.world_size > 1:
            count = count.detach().clone()
            dist.all_reduce(count)
            return token_losses * self.world_size / count.clamp(min=1.0)
        return token_losses / count.clamp(min=1.0)

    def forward(self, ecg_features: torch.Tensor | None, text_features: torch.Tensor | None,
                logit_scale: torch.Tensor, caption_logits: torch.Tensor | None = None,
                caption_targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return ``loss`` plus its weighted-off parts (unweighted, for logging)."""
        parts: dict[str, torch.Tensor] = {}
        total = None
        if self.contrastive_weight > 0:
            if ecg_features is None or text_features is None:
                raise ValueError("contrastive loss needs ECG and text features")
            con = self.clip_loss(ecg_features.float(), text_features.float(), logit_scale.float())
            parts["contrastive_loss"] = con
            total = self.contrastive_weight * con
        if self.caption_weight > 0:
            if caption_logits is None or caption_targets is None:
                raise ValueError("caption loss needs decoder logits and targets")
            cap = self.caption_loss(caption_logits, caption_targets)
            # under DDP the value is world_size x this rank's share; report the share-free form
            parts["caption_loss"] = cap
            total = self.caption_weight * cap if total is None else total + self.caption_weight * cap
        parts["loss"] = total
        return parts
