"""ESIModel: ECG encoder + text tower (contrastive) + leak-free caption decoder (CoCa-style captioning).

Saved models are a directory: ``config.json`` (the full model config), ``model.safetensors`` (all
weights, text tower included, so no hub access is needed to reload), ``text/`` (the tokenizer and
the text backbone's HF config) and, with a restricted caption vocabulary, ``caption_vocab.json``.
Nothing is pickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from esi.model.config import ConfigError, checked, from_dict, to_dict
from esi.model.decoder import CaptionDecoder, DecoderConfig, shift_for_teacher_forcing
from esi.model.ecg_encoder import ConvNeXtV2ECG, ECGEncoderConfig
from esi.model.io import atomic_save_safetensors, atomic_write_json
from esi.model.loss import ESILoss
from esi.model.text_encoder import TextEncoder, TextEncoderConfig
from esi.model.tokenizer import CaptionTokenizer

FORMAT_VERSION = 1


@dataclass
class LossConfig:
    # ranges are enforced by esi.model.config.from_dict (the loaded config), naming the dotted key
    contrastive_weight: float = checked(1.0, ge=0.0)
    caption_weight: float = checked(1.0, ge=0.0)  # 0 -> no caption decoder is built (no_caption_loss ablation)
    # one_hot (CLIP, the paper) | same_findings | finding_overlap: positives = pairs with matching findings
    contrastive_targets: str = "one_hot"

    def __post_init__(self) -> None:
        from esi.model.loss import CONTRASTIVE_TARGETS

        if self.contrastive_targets not in CONTRASTIVE_TARGETS:
            raise ValueError(f"loss.contrastive_targets must be one of {CONTRASTIVE_TARGETS}, "
                             f"got {self.contrastive_targets!r}")


@dataclass
class ESIConfig:
    """Whole-model config. ``sampling_rate``/``n_samples`` are the input the encoder was built for."""

    # ranges are enforced by esi.model.config.from_dict (the loaded config), naming the dotted key
    embed_dim: int = checked(512, ge=1)
    sampling_rate: float = checked(100.0, gt=0.0)
    n_samples: int = checked(1000, ge=1)
    ecg: ECGEncoderConfig = field(default_factory=ECGEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # corpora.preprocess.Preprocess parameters of the training signals (their export's
    # export_config.json), re-applied to raw records at inference so the model sees the same band; the
    # model-input stage after it (corpora.preprocess.model_input) takes sampling_rate and n_samples above.
    signal_preprocess: dict[str, Any] | None = None
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = checked(100.0, gt=0.0)

    def __post_init__(self) -> None:
        if self.signal_preprocess is not None:
            from corpora.preprocess import Preprocess

            Preprocess(**self.signal_preprocess)  # unknown or invalid parameters fail here, named

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ESIConfig:
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @property
    def has_decoder(self) -> bool:
        return self.loss.caption_weight > 0


class ESIModel(nn.Module):
    def __init__(self, config: ESIConfig, caption_vocab: Sequence[int] | None = None,
                 text_source: str | None = None, load_text_weights: bool = True):
        super().__init__()
        self.config = config
        self.ecg_encoder = ConvNeXtV2ECG(config.ecg)
        self.ecg_proj = nn.Linear(self.ecg_encoder.width, config.embed_dim, bias=False)
        nn.init.normal_(self.ecg_proj.weight, std=self.ecg_encoder.width ** -0.5)
        self.text_encoder = TextEncoder(config.text, config.embed_dim, source=text_source,
                                        load_weights=load_text_weights)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if caption_vocab is not None and not config.decoder.restrict_vocab:
            raise ConfigError("a caption vocabulary was given but decoder.restrict_vocab is false")
        if config.has_decoder and config.decoder.restrict_vocab and caption_vocab is None:
            raise ConfigError("decoder.restrict_vocab needs the caption vocabulary (build it from the training "
                              "captions with CaptionTokenizer.build_vocab)")
        self.caption_tokenizer = CaptionTokenizer(self.text_encoder.tokenizer, caption_vocab)
        self.decoder = (CaptionDecoder(config.decoder, self.caption_tokenizer.size, self.ecg_encoder.width)
                        if config.has_decoder else None)

    # ---- encoders -------------------------------------------------------------------------------
    def forward_ecg(self, signals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised joint-space ECG features (B, D) and encoder tokens (B, L, C) for the decoder."""
        pooled, tokens = self.ecg_encoder(signals)
        return self.ecg_proj(pooled), tokens

    def encode_ecg(self, signals: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features, _ = self.forward_ecg(signals)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        features = self.text_encoder(list(texts))
        return F.normalize(features, dim=-1) if normalize else features

    def scale(self) -> torch.Tensor:
        """Contrastive temperature, clamped like CLIP (at ``max_logit_scale`` = 100)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def tokenize_captions(self, texts: Sequence[str]) -> torch.Tensor:
        return self.caption_tokenizer.encode(texts, max_length=self.config.decoder.context_length + 1)

    # ---- training forward -------------------------------------------------------------------------
    def forward(self, signals: torch.Tensor, texts: Sequence[str],
                caption_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Features and logits for one batch; ``caption_ids`` defaults to tokenising ``texts``."""
        ecg_features, ecg_tokens = self.forward_ecg(signals)
        out: dict[str, torch.Tensor] = {"logit_scale": self.scale()}
        if self.config.loss.contrastive_weight > 0:
            out["ecg_features"] = F.normalize(ecg_features, dim=-1)
            out["text_features"] = F.normalize(self.text_encoder(list(texts)), dim=-1)
            out["logits_per_ecg"] = out["logit_scale"] * out["ecg_features"] @ out["text_features"].T
        if self.decoder is not None:
            if caption_ids is None:
                caption_ids = self.tokenize_captions(texts)
            inputs, targets = shift_for_teacher_forcing(caption_ids.to(signals.device))
            out["caption_logits"] = self.decoder(ecg_tokens, inputs)
            out["caption_targets"] = targets
        return out

    def default_loss(self) -> ESILoss:
        return ESILoss(self.config.loss.contrastive_weight, self.config.loss.caption_weight,
                       pad_id=self.caption_tokenizer.pad_id)

    def compute_loss(self, signals: torch.Tensor, texts: Sequence[str],
                     loss_fn: ESILoss | None = None) -> dict[str, torch.Tensor]:
        out = self(signals, texts)
        loss_fn = loss_fn or self.default_loss()
        return loss_fn(out.get("ecg_features"), out.get("text_features"), out["logit_scale"],
                       out.get("caption_logits"), out.get("caption_targets"))

    # ---- captioning -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_caption(self, signals: torch.Tensor, max_len: int | None = None, method: str = "greedy",
                         num_beams: int = 3) -> list[str]:
        """Caption each ECG in ``signals`` (B, 12, T): greedy or beam search (length-normalised)."""
        if self.decoder is None:
            raise RuntimeError("this model was trained without a caption decoder (loss.caption_weight = 0)")
        if method not in ("greedy", "beam"):
            raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
        if method == "beam" and num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        was_training = self.training
        self.eval()
        try:
            _, tokens = self.forward_ecg(signals)
            limit = min(max_len or self.config.decoder.context_length, self.config.decoder.context_length)
            if method == "greedy":
                sequences = self._greedy(tokens, limit)
            else:
                sequences = [self._beam(tokens[i:i + 1], limit, num_beams) for i in range(tokens.shape[0])]
        finally:
            self.train(was_training)
        return [self.caption_tokenizer.decode(seq) for seq in sequences]

    def _greedy(self, ecg_tokens: torch.Tensor, limit: int) -> list[list[int]]:
        tok = self.caption_tokenizer
        batch = ecg_tokens.shape[0]
        ids = torch.full((batch, 1), tok.bos_id, dtype=torch.long, device=ecg_tokens.device)
        done = torch.zeros(batch, dtype=torch.bool, device=ecg_tokens.device)
        for _ in range(limit):
            logits = self.decoder(ecg_tokens, ids)[:, -1].float()
            logits[:, tok.pad_id] = -math.inf
            next_ids = logits.argmax(-1).masked_fill(done, tok.pad_id)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            done |= next_ids == tok.eos_id
            if bool(done.all()):
                break
        return [self._strip(row.tolist()) for row in ids]

    def _beam(self, ecg_tokens: torch.Tensor, limit: int, num_beams: int) -> list[int]:
        tok = self.caption_tokenizer
        beams: list[tuple[list[int], float]] = [([tok.bos_id], 0.0)]
        finished: list[tuple[list[int], float]] = []

        def normalised(hypothesis: tuple[list[int], float]) -> float:
            return hypothesis[1] / max(len(hypothesis[0]) - 1, 1)  # mean log-prob per generated token

        for _ in range(limit):
            ids = torch.tensor([b[0] for b in beams], device=ecg_tokens.device)
            logits = self.decoder(ecg_tokens.expand(len(beams), -1, -1), ids)[:, -1].float()
            logits[:, tok.pad_id] = -math.inf
            logprobs = logits.log_softmax(-1)
            top = logprobs.topk(num_beams, dim=-1)
            candidates = [(beams[i][0] + [int(t)], beams[i][1] + float(s))
                          for i in range(len(beams)) for s, t in zip(top.values[i], top.indices[i])]
            candidates.sort(key=lambda c: c[1], reverse=True)
            beams = []
            for seq, score in candidates:
                (finished if seq[-1] == tok.eos_id else beams).append((seq, score))
                if len(beams) == num_beams:
                    break
            if not beams:
                break
            # Stop when a finished caption scores at least as well as every live beam does now (Hugging Face's
            # early_stopping=False rule). Stopping at num_beams finished hypotheses, as before, returned a
            # low-scoring early end while the best beam was still one token from its EOS.
            if finished and max(map(normalised, finished)) >= max(map(normalised, beams)):
                break
        best = max(finished + beams, key=normalised)  # live beams win only when the length limit ended the search
        return self._strip(best[0])

    def _strip(self, ids: list[int]) -> list[int]:
        tok = self.caption_tokenizer
        out = []
        for i in ids[1:]:
            if i in (tok.eos_id, tok.pad_id):
                break
            out.append(i)
        return out

    # ---- persistence ------------------------------------------------------------------------------
    def state_for_saving(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items()}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a self-contained model directory (safetensors + JSON + tokenizer files)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text_dir = directory / "text"
        self.text_encoder.tokenizer.save_pretrained(text_dir)
        self.text_encoder.backbone.config.save_pretrained(text_dir)
        self.caption_tokenizer.save(directory / "caption_vocab.json")
        atomic_save_safetensors(directory / "model.safetensors", self.state_for_saving(),
                                metadata={"format": "esi", "format_version": str(FORMAT_VERSION)})
        atomic_write_json(directory / "config.json", {"format_version": FORMAT_VERSION, "model": self.config.to_dict()})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> ESIModel:
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{directory} is not an ESI model directory (no config.json)")
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        unknown = set(meta) - {"format_version", "model"}
        if unknown:
            raise ConfigError(f"{config_path}: unknown key(s) {sorted(unknown)}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{config_path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        config = ESIConfig.from_dict(meta["model"])
        vocab = CaptionTokenizer.load_vocab(directory / "caption_vocab.json")
        model = cls(config, caption_vocab=vocab, text_source=str(directory / "text"), load_text_weights=False)
        model.load_weights(directory / "model.safetensors", map_location)
        return model

    def load_weights(self, path: Path, map_location: str | torch.device = "cpu") -> None:
        state = load_file(str(path), device=str(map_location))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match the model config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
