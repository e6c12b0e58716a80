"""Decode-time constraints for local (transformers) models: rephrase the features, do not invent.

Why: asked to rewrite three feature bullets, SmolLM2-135M drifts into words and abbreviations the bullets
do not contain ("QT complex" for a normal ECG, "QS complexes" for LAFB) and fills sentences by repeating a
bullet ("a curved downward contour ... with a curved downward contour"). The validator rejects those
outputs; these logits processors keep the model from writing them in the first place:

- :class:`VocabularyConstraint` lets the model emit only tokens that spell the finding name, the feature
  bullets, a short list of connectives (``CONNECTIVES``) and punctuation (plus the end-of-turn token);
- :class:`NoRepeatInOutput` forbids repeating any ``n``-token sequence *of its own output* (the prompt is
  not counted, unlike transformers' ``no_repeat_ngram_size`` and ``repetition_penalty``, which would stop
  the model from copying the features at all).

Tokens are sub-words, so the constraint narrows rather than closes the vocabulary; the validator
(:func:`cqa.validate.validate_description`) still checks every word, lead, width and number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

CONNECTIVES = (
    "a", "an", "the", "of", "in", "on", "and", "or", "with", "by", "is", "are", "as", "at", "for", "from", "to",
    "than", "that", "which", "while", "its", "their", "it", "there", "each", "every", "both", "also", "often",
    "usually", "may", "can", "without", "no", "not", "but", "when", "where", "during", "after", "before", "this",
    "these", "has", "have", "shows", "show", "leads", "lead", "seen", "present", "gives", "into",
)
PUNCTUATION = (",", ".", ";", "(", ")", "–", "-", "′", "'")
_WORD = re.compile(r"[\w′']+|[^\w\s]")
DEFAULT_NO_REPEAT = 4
LEAD_PIECES = ("I", "II", "III", "aVR", "aVL", "aVF", *(f"V{i}" for i in range(1, 10)), "V1–V3", "V3R", "V4R")


def allowed_token_ids(tokenizer: Any, texts: Iterable[str], words: Iterable[str] = CONNECTIVES) -> list[int]:
    """Ids of every token that spells a word of ``texts`` or ``words`` (as is, lower-cased and capitalised,
    with and without a leading space), the texts themselves, punctuation and the end tokens."""
    texts = [t for t in texts if t]
    vocabulary = {w for text in texts for w in _WORD.findall(text)} | set(words) | set(PUNCTUATION)
    ids: set[int] = set()
    for word in vocabulary:
        for form in {word, word.lower(), word[:1].upper() + word[1:]}:
            for spaced in (form, " " + form):
                ids.update(tokenizer.encode(spaced, add_special_tokens=False))
    for text in texts:
        ids.update(tokenizer.encode(text, add_special_tokens=False))
        ids.update(tokenizer.encode(" " + text, add_special_tokens=False))
    for special in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
        if isinstance(special, int) and special >= 0:
            ids.add(special)
    return sorted(ids)


class VocabularyConstraint(LogitsProcessor):
    """Only the allowed token ids may be generated (the rest get -inf)."""

    def __init__(self, allowed: Sequence[int], vocab_size: int):
        self.mask = torch.full((vocab_size,), float("-inf"))
        self.mask[torch.tensor([i for i in allowed if 0 <= i < vocab_size], dtype=torch.long)] = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        width = min(scores.shape[-1], self.mask.shape[0])
        out = scores.clone()
        out[..., :width] = out[..., :width] + self.mask[:width].to(scores.dtype)
        if scores.shape[-1] > width:
            out[..., width:] = float("-inf")
        return out


class NoRepeatInOutput(LogitsProcessor):
    """No ``n``-token sequence twice in the generated text (the prompt is not counted). Sequences that touch a
    lead list are exempt: "ST elevation in V1–V3 and T-wave inversion in V1–V3" repeats leads legitimately."""

    def __init__(self, n: int = DEFAULT_NO_REPEAT, exempt: Iterable[int] = ()):
        self.n = n
        self.exempt = frozenset(exempt)
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = int(input_ids.shape[1])
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_length:].tolist()
            if len(generated) < self.n:
                continue
            prefix = tuple(generated[-(self.n - 1):])
            if self.exempt.intersection(prefix):
                continue
            banned = {generated[i + self.n - 1] for i in range(len(generated) - self.n + 1)
                      if tuple(generated[i:i + self.n - 1]) == prefix}
            if banned:
                scores[row, list(banned)] = float("-inf")
        return scores


def feature_constraints(tokenizer: Any, finding: str, features: Sequence[str],
                        no_repeat: int = DEFAULT_NO_REPEAT) -> LogitsProcessorList:
    """The processors for one description: the finding's and features' vocabulary, no self-repetition."""
    allowed = allowed_token_ids(tokenizer, [finding, *features])
    return LogitsProcessorList([VocabularyConstraint(allowed, len(tokenizer)),
                                NoRepeatInOutput(no_repeat, lead_token_ids(tokenizer))])


def lead_token_ids(tokenizer: Any) -> set[int]:
    """Token ids that spell lead names (with and without a leading space), digits and range dashes."""
    ids: set[int] = set()
    for piece in (*LEAD_PIECES, *"0123456789", "–", "-"):
        for spaced in (piece, " " + piece):
            ids.update(tokenizer.encode(spaced, add_special_tokens=False))
    for word in ("a", " a"):  # " aVF" starts with the article's token; articles must not be exempt
        ids.difference_update(tokenizer.encode(word, add_special_tokens=False))
    return ids
