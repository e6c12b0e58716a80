"""ESI objective: λ_con · L_con + λ_cap · L_cap (paper default 1:1).

L_con is open_clip's ``ClipLoss`` (symmetric InfoNCE) over the *global* batch: under DDP it
all-gathers the features with gradient (``local_loss=False, gather_with_grad=True``), so every rank
computes the same N×N loss and DDP's gradient averaging reproduces the single-process gradient.

L_cap is token-level cross-entropy over non-pad targets. open_clip's ``CoCaLoss`` takes the mean
over each rank's own tokens, which under DDP weights ranks with shorter captions more than a
single process would; here the token sum is divided by the token count all-reduced over ranks
(times world size, undoing DDP's averaging), so the gradient equals the single-process one on the
same global batch.

L_con can instead be label-aware (``loss.contrastive_targets``): ClipLoss's one-hot targets push
apart pairs that say the same thing (~40 % of PTB-XL records are NORM + SR), so
:class:`FindingAwareClipLoss` gives target mass to every pair in the global batch whose finding
sets match, either exactly (``same_findings``, UniCL/SupCon style) or in proportion to their
Jaccard overlap (``finding_overlap``). With all finding sets distinct (disjoint for the overlap
form) its targets are the identity and it equals ClipLoss.
"""

from __future__ import annotations

import torch
import torch.distributed.nn  # noqa: F401  (all_gather with gradient)
from torch import distributed as dist
from torch.nn import functional as F

from esi.model._open_clip import ClipLoss

CONTRASTIVE_TARGETS = ("one_hot", "same_findings", "finding_overlap")


def finding_targets(findings: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, N) row-stochastic targets from (N, V) multi-hot finding sets.

    Two empty sets count as the same set (an unannotated record is its own set, never dropped);
    an empty set overlaps nothing else.
    """
    findings = findings.float()
    inter = findings @ findings.T
    size = findings.sum(1)
    union = size[:, None] + size[None, :] - inter
    same = (inter == size[:, None]) & (inter == size[None, :])
    if mode == "same_findings":
        weights = same.float()
    elif mode == "finding_overlap":
        weights = torch.where(union > 0, inter / union.clamp(min=1.0), same.float())
    else:
        raise ValueError(f"contrastive_targets must be one of {CONTRASTIVE_TARGETS}, got {mode!r}")
    return weights / weights.sum(1, keepdim=True)


class FindingAwareClipLoss(torch.nn.Module):
    """Symmetric InfoNCE with soft targets over the global batch (features all-gathered with grad)."""

    def __init__(self, mode: str, rank: int = 0, world_size: int = 1):
        super().__init__()
        if mode not in CONTRASTIVE_TARGETS[1:]:
            raise ValueError(f"label-aware targets must be one of {CONTRASTIVE_TARGETS[1:]}, got {mode!r}")
        self.mode = mode
        self.rank = rank
        self.world_size = world_size

    def forward(self, ecg_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                findings: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            ecg_features = torch.cat(torch.distributed.nn.all_gather(ecg_features), dim=0)
            text_features = torch.cat(torch.distributed.nn.all_gather(text_features), dim=0)
            gathered = [torch.zeros_like(findings) for _ in range(self.world_size)]
            dist.all_gather(gathered, findings.contiguous())
            findings = torch.cat(gathered, dim=0)
        logits = logit_scale * ecg_features @ text_features.T
        targets = finding_targets(findings.to(logits.device), self.mode)
        # the weights are symmetric, so the text->ECG targets are the same row-normalised matrix
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ESILoss(torch.nn.Module):
    def __init__(self, contrastive_weight: float = 1.0, caption_weight: float = 1.0, pad_id: int = 0,
                 rank: int = 0, world_size: int = 1, contrastive_targets: str = "one_hot",
                 finding_vocab: list[str] | None = None):
        super().__init__()
        if contrastive_weight < 0 or caption_weight < 0 or contrastive_weight + caption_weight == 0:
            raise ValueError("loss weights must be >= 0 and not both 0")
        self.contrastive_weight = contrastive_weight
        self.caption_weight = caption_weight
        self.pad_id = pad_id
        self.world_size = world_size
        self.clip_loss = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=False,
                                  rank=rank, world_size=world_size)
        if contrastive_targets not in CONTRASTIVE_TARGETS:
            raise ValueError(f"contrastive_targets must be one of {CONTRASTIVE_TARGETS}, got {contrastive_targets!r}")
        self.contrastive_targets = contrastive_targets
        self.finding_loss = (FindingAwareClipLoss(contrastive_targets, rank, world_size)
                             if contrastive_targets != "one_hot" else None)
        self.finding_index = {code: i for i, code in enumerate(finding_vocab or [])}

    def multi_hot(self, finding_sets: list[tuple[str, ...]], device: torch.device) -> torch.Tensor:
        """(B, V + 1) multi-hot; a code outside the vocabulary maps to one shared extra column."""
        out = torch.zeros(len(finding_sets), len(self.finding_index) + 1, device=device)
        for row, codes in enumerate(finding_sets):
            for code in codes:
                out[row, self.finding_index.get(code, len(self.finding_index))] = 1.0
        return out

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
                caption_targets: torch.Tensor | None = None,
                finding_sets: list[tuple[str, ...]] | None = None) -> dict[str, torch.Tensor]:
        """Return ``loss`` plus its weighted-off parts (unweighted, for logging).

        ``finding_sets`` (one tuple of finding codes per row) switch on the label-aware targets;
        without them, or with ``contrastive_targets: one_hot``, L_con is open_clip's ClipLoss.
        """
        parts: dict[str, torch.Tensor] = {}
        total = None
        if self.contrastive_weight > 0:
            if ecg_features is None or text_features is None:
                raise ValueError("contrastive loss needs ECG and text features")
            if self.finding_loss is not None and finding_sets is not None:
                con = self.finding_loss(ecg_features.float(), text_features.float(), logit_scale.float(),
                                        self.multi_hot(finding_sets, ecg_features.device))
            else:
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
