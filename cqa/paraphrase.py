"""Validated LLM paraphrases of a finding's waveform description: extra caption views (issue 11).

Why: a caption that always describes a finding with the same sentence lets a text encoder memorise that
sentence; a few alternative wordings of the same grounded features make better training views. Each
variant goes through exactly the path the caption's own description takes (few-shot rewrite of the
grounded bullets -> :func:`cqa.validate.validate_description` -> :class:`cqa.cache.DescriptionCache`), so a
paraphrase is never less checked than a caption. Variant N uses the few-shot examples rotated N places
(see ``prompts/describe.yaml``), so decoding stays greedy and every variant is reproducible and cached
under its own key (the prompt hash with a ``:vN`` suffix). The caption's own description is the first
accepted of variants ``0 .. Captioner.attempts - 1``, so it is always among the paraphrases returned.

    from cqa.paraphrase import finding_paraphrases
    texts = finding_paraphrases(captioner, "imi", n=3)                  # generates missing variants
    texts = finding_paraphrases(captioner, "imi", n=3, generate=False)  # cache only (never loads the model)
"""

from __future__ import annotations

from collections.abc import Iterable

from .caption import Captioner

DEFAULT_VARIANTS = 3


def finding_paraphrases(captioner: Captioner, entry_id: str, n: int = DEFAULT_VARIANTS, *,
                        generate: bool = True) -> list[str]:
    """Up to ``n`` distinct validated LLM descriptions of ``entry_id`` (variants 0..n-1, in that order).

    Rejected variants, timeouts and, with ``generate=False``, variants not yet cached are left out, so
    the list may be shorter than ``n`` or empty (grounded-only captioner, or every variant rejected);
    the grounded text is never included: it is the caption's own view already.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if entry_id not in captioner.entries:
        raise KeyError(f"unknown finding {entry_id!r}")
    texts: list[str] = []
    for variant in range(n):
        description = captioner.variant(entry_id, variant, generate=generate)
        if description is not None and description.source == "llm" and description.text not in texts:
            texts.append(description.text)
    return texts


def paraphrase_table(captioner: Captioner, entry_ids: Iterable[str], n: int = DEFAULT_VARIANTS, *,
                     generate: bool = True) -> dict[str, list[str]]:
    """:func:`finding_paraphrases` for many findings (e.g. every finding of a captioned dataset)."""
    return {entry_id: finding_paraphrases(captioner, entry_id, n, generate=generate)
            for entry_id in dict.fromkeys(entry_ids)}
