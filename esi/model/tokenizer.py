"""Caption tokenisation for the decoder: the text tower's tokenizer, optionally over a restricted vocabulary.

The decoder predicts the same word pieces the text tokenizer produces. With ``restrict_vocab`` the
output layer only covers the special tokens plus the pieces that occur in the training captions
(a few thousand instead of ~30k), which makes the CPU default much cheaper; the table mapping the
compact ids back to tokenizer ids is saved with the model (``caption_vocab.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase


class CaptionTokenizer:
    """Encodes captions to decoder ids ``[BOS] tokens [EOS] [PAD]...`` and decodes generated ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab: Sequence[int] | None = None):
        self.tokenizer = tokenizer
        bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if bos is None or eos is None or tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} needs CLS/BOS, SEP/EOS and PAD tokens for captions")
        self._full = {"pad": tokenizer.pad_token_id, "bos": bos, "eos": eos,
                      "unk": tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id}
        full_size = len(tokenizer)
        if vocab is None:
            self.vocab: list[int] | None = None
            self.to_compact = None
            self.size = full_size
            self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self._full[k] for k in ("pad", "bos", "eos", "unk"))
        else:
            vocab = [int(v) for v in vocab]
            if vocab[0] != self._full["pad"]:
                raise ValueError("restricted caption vocabulary must start with the pad token id")
            if len(set(vocab)) != len(vocab) or max(vocab) >= full_size or min(vocab) < 0:
                raise ValueError("restricted caption vocabulary has duplicate or out-of-range token ids")
            self.vocab = vocab
            self.to_compact = torch.full((full_size,), -1, dtype=torch.long)
            self.to_compact[torch.tensor(vocab)] = torch.arange(len(vocab))
            for key in ("pad", "bos", "eos", "unk"):
                if self.to_compact[self._full[key]] < 0:
                    raise ValueError(f"restricted caption vocabulary lacks the {key} token")
            self.size = len(vocab)
            self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
                int(self.to_compact[self._full[k]]) for k in ("pad", "bos", "eos", "unk"))

    @staticmethod
    def build_vocab(tokenizer: PreTrainedTokenizerBase, captions: Iterable[str], max_length: int) -> list[int]:
        """Special tokens (pad first) + every token id occurring in ``captions``, sorted."""
        special = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
                   tokenizer.bos_token_id, tokenizer.eos_token_id]
        ordered = list(dict.fromkeys(s for s in special if s is not None))
        seen: set[int] = set()
        captions = list(dict.fromkeys(captions))
        for start in range(0, len(captions), 512):
            encoded = tokenizer(captions[start:start + 512], truncation=True, max_length=max_length)["input_ids"]
            for ids in encoded:
                seen.update(ids)
        return ordered + sorted(seen - set(ordered))

    def encode(self, captions: Sequence[str], max_length: int) -> torch.Tensor:
        """(B, L<=max_length) caption ids in decoder space; unknown pieces map to UNK."""
        batch = self.tokenizer(list(captions), padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
        ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, self._full["pad"])
        if self.to_compact is None:
            return ids
        compact = self.to_compact[ids]
        return compact.masked_fill(compact < 0, self.unk_id)

    def decode(self, ids: Sequence[int]) -> str:
        full = [int(i) for i in ids] if self.vocab is None else [self.vocab[int(i)] for i in ids]
        return self.tokenizer.decode(full, skip_special_tokens=True).strip()

    def save(self, path: Path) -> None:
        if self.vocab is not None:
            from esi.model.io import atomic_write_text

            atomic_write_text(path, json.dumps({"token_ids": self.vocab}))

    @staticmethod
    def load_vocab(path: Path) -> list[int] | None:
        if not path.exists():
            return None
        return [int(v) for v in json.loads(path.read_text(encoding="utf-8"))["token_ids"]]
