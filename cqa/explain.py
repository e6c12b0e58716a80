"""One grounded caption for given labels, with the passages behind it: ``python -m cqa explain`` and the
ESI API's ``/api/explain`` both call :func:`explain_labels`, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .caption import Caption, Captioner, label_text

# The vocabulary name that means "read the labels as plain names/abbreviations" (the normaliser's "").
PLAIN = "plain"


@dataclass
class Explanation:
    """The caption and the passages that grounded it, each passage tagged with its ``finding`` id."""

    caption: Caption
    passages: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields both callers print or return (the CLI adds its model id and LLM stats)."""
        caption = self.caption
        return {
            "caption": caption.caption,
            "findings": [f.to_dict() for f in caption.findings],
            "negated": [f.to_dict() for f in caption.negated],
            "sources": caption.sources,
            "passages": self.passages,
            "label_text": caption.label_text,
            "unknown_labels": caption.unknown_labels,
        }


def explain_labels(captioner: Captioner, codes: Sequence[str], *, statements: Sequence[str] = (),
                   vocabulary: str = PLAIN, age: float | None = None, sex: str | None = None) -> Explanation:
    """Caption ``codes`` (read in ``vocabulary``) and machine ``statements`` (read as MIMIC statements).

    Raises ``ValueError`` when both are empty or the labels cannot be normalised.
    """
    if not codes and not statements:
        raise ValueError("give at least one code or statement")
    vocab = "" if vocabulary == PLAIN else vocabulary
    normalizer = captioner.normalizer
    labels = {code: 100.0 for code in codes}
    normalized = normalizer.normalize(labels, vocab)
    if statements:
        normalized = normalizer.merge(normalized, normalizer.normalize({s: 100.0 for s in statements},
                                                                       "mimic_statement"))
        labels.update({s: 100.0 for s in statements})
    caption = captioner.caption(normalized, age=age, sex=sex, labels=labels,
                                text_of_labels=label_text(labels, vocab), with_passages=True)
    passages = [dict(p.to_dict() if hasattr(p, "to_dict") else {"text": str(p)}, finding=finding_id)
                for finding_id, items in caption.passages.items() for p in items]
    return Explanation(caption, passages)
