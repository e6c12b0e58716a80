"""Cardio Query Assistant: native ECG labels + age/sex -> enriched captions, by retrieval-augmented
generation over the ECG knowledge corpus with a local LLM, validated, with a grounded fallback.

Public API::

    from cqa import Captioner, Describer, DescriptionCache, load_llm, normalize_labels, check_caption
    from retrieval import KnowledgeStore

    captioner = Captioner(describer=Describer(load_llm("smollm2")), store=KnowledgeStore.open("runs/kb"),
                          cache=DescriptionCache("runs/cqa.sqlite"))          # or Captioner() = grounded-only
    row = captioner.caption_record(record).to_row()                         # record: corpora.base.ECGRecord
    report = check_caption(row["caption"], normalize_labels(record.labels, "scp").findings)

CLI: ``python -m cqa caption ...`` and ``python -m cqa explain ...`` (see ``cqa.__main__``).
"""

from cqa.batch import BatchError, read_output, run_batch
from cqa.cache import DescriptionCache
from cqa.caption import Caption, Captioner, compose_caption, demographics, label_text
from cqa.explain import Explanation, explain_labels
from cqa.llm import Describer, LLMBackend, LLMError, load_llm
from cqa.normalize import Finding, Normalized, Normalizer, UnknownLabel, normalize_labels, statement_coverage
from cqa.validate import CaptionCheck, check_caption, grounded_description, validate_description

__all__ = [
    "BatchError", "Caption", "CaptionCheck", "Captioner", "Describer", "DescriptionCache", "Explanation", "Finding",
    "LLMBackend", "LLMError", "Normalized", "Normalizer", "UnknownLabel", "check_caption", "compose_caption",
    "demographics", "explain_labels", "grounded_description", "label_text", "load_llm", "normalize_labels",
    "read_output", "run_batch", "statement_coverage", "validate_description",
]
