"""Leak-free caption decoder: causal multimodal transformer over the caption's own token embeddings.

The official ESI code (and open_clip's HF-text CoCa configs) feed the multimodal decoder the
hidden states of the *bidirectional* text encoder; every position has then already seen the token
it must predict, and the caption loss can be driven to ~0 without looking at the ECG. Here the
decoder has its own token + positional embedding and consumes the caption shifted right
(``[BOS] t1 ... t_{n-1}``) under a causal mask, predicting ``t1 ... t_n [EOS]``; the text encoder
is used only for the contrastive embedding. Cross-attention to the projected ECG token sequence
is the decoder's only route to the signal (open_clip's ``MultimodalTransformer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from esi.model._open_clip import MultimodalTransformer
from esi.model.config import checked


@dataclass
class DecoderConfig:
    """Width/depth of the caption decoder; ``context_length`` bounds the decoder input tokens."""

    # ranges are enforced by esi.model.config.from_dict (the loaded config), naming the dotted key
    width: int = checked(512, ge=1)
    layers: int = checked(6, ge=1)
    heads: int = checked(8, ge=1)
    mlp_ratio: float = checked(4.0, gt=0.0)
    context_length: int = checked(256, ge=1)
    restrict_vocab: bool = False

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"decoder.width {self.width} must be divisible by decoder.heads {self.heads}")


class CaptionDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, vocab_size: int, ecg_width: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.ecg_proj = nn.Sequential(nn.LayerNorm(ecg_width), nn.Linear(ecg_width, config.width))
        self.transformer = MultimodalTransformer(
            width=config.width, layers=config.layers, heads=config.heads, context_length=config.context_length,
            mlp_ratio=config.mlp_ratio, output_dim=vocab_size,
        )
        self._init_parameters()

    def _init_parameters(self) -> None:
        """CLIP-style init (open_clip's MultimodalTransformer.init_parameters reads a missing attribute)."""
        width, layers = self.config.width, self.config.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
        for block in list(self.transformer.resblocks) + list(self.transformer.cross_attn):
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.transformer.text_projection, std=width ** -0.5)

    def forward(self, ecg_tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) for the next token at each position of ``input_ids`` (B, L)."""
        length = input_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"decoder input of {length} tokens exceeds decoder.context_length "
                             f"{self.config.context_length}")
        text = self.token_embedding(input_ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        return self.transformer(self.ecg_proj(ecg_tokens), text)


def shift_for_teacher_forcing(caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[BOS] t1..tn [EOS] pad`` -> inputs ``[BOS] t1..tn`` (+pad) and targets ``t1..tn [EOS]`` (+pad)."""
    return caption_ids[:, :-1], caption_ids[:, 1:]
