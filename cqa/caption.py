"""Compose one enriched caption per ECG: demographics, findings, and a waveform description per finding.

Caption format (stable; sentences separated by single spaces)::

    [DEMOGRAPHICS ]Findings: F1; possible F2. Waveform: F1 — DESCRIPTION1 Possible F2 — DESCRIPTION2

- DEMOGRAPHICS only from what is known: "56-year-old male.", "56-year-old patient." (sex unknown),
  "Female patient." (age unknown), "Male aged 90 or older." (PTB-XL censored ages); nothing when
  both are unknown.
- Findings are knowledge-entry names in caption order (rhythm, conduction, axis, hypertrophy,
  ischaemia/infarction, ST-T, form, technical), except that the baseline findings most records share
  (sinus rhythm) come last, so the text that tells records apart is never cut off by a short context;
  uncertain ones are prefixed "possible".
- Each waveform DESCRIPTION is either the validated LLM text ("llm") or the grounded text built
  from the entry's "Waveform features" bullets ("grounded"); ``sources`` records which, and why.
- A record with no recognised finding reads "Findings: none recognised." and has no Waveform part.

``label_text`` (the dataset's own label descriptions, joined with "; ") is kept as a separate field
for the no-CQA ablation. ``finding_codes`` (the sorted finding ids) and ``label_terms`` (each label's
names at every level of its vocabulary's hierarchy, e.g. PTB-XL statement description, diagnostic
subclass and superclass) feed ESI's label-aware loss and its caption views.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

from corpora.knowledge import KnowledgeEntry, knowledge_version, load_entries

from .cache import CachedDescription, DescriptionCache, cache_key
from .llm import Describer, features_from_passages
from .normalize import Finding, Normalized, Normalizer, cpsc_classes, default_normalizer
from .validate import MAX_BULLETS, grounded_description, validate_description
from .vocab import default_vocabulary

log = logging.getLogger(__name__)

DEFAULT_K = 3
# Variants tried per finding before the grounded fallback (each one validated and cached on its own).
DEFAULT_ATTEMPTS = 2
# Findings most records share go last in a caption (PTB-XL: ~80 % sinus rhythm).
BASELINE_FINDINGS = ("sinus_rhythm",)
# label_info keys that name a label at some level of its vocabulary's hierarchy (PTB-XL, SNOMED, MIMIC).
LABEL_TERM_KEYS = ("description", "name", "abbreviation", "statement", "diagnostic_subclass", "diagnostic_class")
RETRIEVAL_QUERY = "{name}: waveform features on the 12-lead ECG"


class PassageStore(Protocol):
    """What the captioner needs from ``retrieval.KnowledgeStore``."""

    def search(self, query: str, k: int = 5, where: Mapping[str, Any] | None = None) -> list[Any]: ...


@dataclass
class Description:
    """The waveform description of one finding and where it came from."""

    text: str
    source: str  # "llm" | "grounded"
    reason: str | None = None
    passages: list[Any] = field(default_factory=list)
    cached: bool = False


@dataclass
class Caption:
    record_id: str | None
    subject_id: str | None
    fold: int | None
    age: float | None
    sex: str | None
    labels: dict[str, float]
    findings: list[Finding]
    caption: str
    label_text: str
    sources: dict[str, dict[str, Any]]
    unknown_labels: list[dict[str, str]]
    negated: list[Finding] = field(default_factory=list)
    passages: dict[str, list[Any]] = field(default_factory=dict)
    label_terms: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def finding_codes(self) -> list[str]:
        """The record's finding set (sorted entry ids): what the label-aware contrastive loss compares."""
        return sorted({f.id for f in self.findings})

    def to_row(self) -> dict[str, Any]:
        """One table row; nested values as JSON strings so every column has a flat Arrow type."""
        return {
            "record_id": self.record_id, "subject_id": self.subject_id, "fold": self.fold,
            "age": self.age, "sex": self.sex,
            "labels": json.dumps(self.labels, ensure_ascii=False),
            "findings": json.dumps([f.to_dict() for f in self.findings], ensure_ascii=False),
            "negated": json.dumps([f.id for f in self.negated]),
            "caption": self.caption, "label_text": self.label_text,
            "sources": json.dumps(self.sources, ensure_ascii=False),
            "unknown_labels": json.dumps(self.unknown_labels, ensure_ascii=False),
            "finding_codes": self.finding_codes,
            "label_terms": json.dumps(self.label_terms, ensure_ascii=False),
        }


def demographics(age: float | None, sex: str | None, age_censored: bool = False) -> str:
    """The demographic sentence, saying nothing about what is unknown."""
    if age is not None and (not isinstance(age, int | float) or math.isnan(age) or age < 0 or age > 130):
        age = None
    sex = sex if sex in ("male", "female") else None
    if age is not None and (age_censored or age >= 90):
        return f"{(sex or 'patient').capitalize()} aged 90 or older."
    if age is not None and age < 1:
        return f"{(sex or 'patient').capitalize()} infant under 1 year old."
    if age is not None:
        return f"{int(age)}-year-old {sex or 'patient'}."
    if sex:
        return f"{sex.capitalize()} patient."
    return ""


def _label_for(finding: Finding) -> str:
    return f"possible {finding.name}" if finding.certainty == "possible" else finding.name


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def caption_order(findings: Sequence[Finding]) -> list[Finding]:
    """Findings in caption order: the normaliser's order, with the shared baseline findings moved last."""
    return sorted(findings, key=lambda f: f.id in BASELINE_FINDINGS)


def label_terms(labels: Mapping[str, float], label_info: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, str]]:
    """Per label, its names at every level its vocabulary defines (only those the dataset gives)."""
    label_info = label_info or {}
    out: dict[str, dict[str, str]] = {}
    for label in labels:
        info = label_info.get(label) or {}
        out[str(label)] = {k: str(info[k]).strip() for k in LABEL_TERM_KEYS if info.get(k) and str(info[k]).strip()}
    return out


def compose_caption(findings: Sequence[Finding], descriptions: Mapping[str, Description],
                    age: float | None = None, sex: str | None = None, age_censored: bool = False) -> str:
    """Assemble the caption string in the documented format (deterministic)."""
    findings = caption_order(findings)
    parts = [demographics(age, sex, age_censored)]
    if not findings:
        parts.append("Findings: none recognised.")
        return " ".join(p for p in parts if p)
    parts.append("Findings: " + "; ".join(_label_for(f) for f in findings) + ".")
    waveform = []
    for finding in findings:
        description = descriptions.get(finding.id)
        if description is None:
            continue
        text = description.text.strip()
        if text and text[-1] not in ".!?":
            text += "."
        waveform.append(f"{_capitalise(_label_for(finding))} — {text}")
    if waveform:
        parts.append("Waveform: " + " ".join(waveform))
    return " ".join(p for p in parts if p)


def label_text(labels: Mapping[str, float], vocabulary: str,
               label_info: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The dataset's own label wording, joined: SCP descriptions, SNOMED names, statements, class names."""
    label_info = label_info or {}
    texts = []
    for label in labels:
        info = label_info.get(label) or {}
        text = info.get("description") or info.get("name")
        if not text and vocabulary == "cpsc2018":
            text = (cpsc_classes().get(label) or {}).get("name")
        texts.append(str(text or label).strip())
    return "; ".join(t for t in texts if t)


class Captioner:
    """Normalise -> retrieve -> describe (LLM, validated, cached; else grounded) -> compose.

    ``describer`` None means grounded-only (``--llm none``); then no retrieval is needed for the
    descriptions, and ``store`` is only used when passages are requested (``explain``).
    """

    def __init__(self, *, describer: Describer | None = None, store: PassageStore | None = None,
                 cache: DescriptionCache | None = None, normalizer: Normalizer | None = None,
                 k: int = DEFAULT_K, max_bullets: int = MAX_BULLETS, knowledge_dir: str | None = None,
                 attempts: int = DEFAULT_ATTEMPTS):
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.describer = describer
        self.attempts = attempts
        self.store = store
        self.cache = cache
        self.normalizer = normalizer or default_normalizer(knowledge_dir)
        self.entries: dict[str, KnowledgeEntry] = {e.id: e for e in load_entries(knowledge_dir)}
        self.knowledge_version = knowledge_version(knowledge_dir)
        self.vocab = default_vocabulary(knowledge_dir)
        self.k = k
        self.max_bullets = max_bullets
        self.stats = {"llm_calls": 0, "llm_accepted": 0, "llm_rejected": 0, "llm_errors": 0, "cache_hits": 0,
                      "cache_invalidated": 0, "grounded": 0, "retrievals": 0}
        self._memo: dict[str, Description] = {}
        self._variants: dict[tuple[str, int], Description] = {}
        self._passages: dict[str, list[Any]] = {}

    @property
    def model_id(self) -> str:
        return self.describer.model_id if self.describer else "none"

    def passages_for(self, entry_id: str) -> list[Any]:
        """Retrieved passages of one finding (filtered by its entry id), memoised per process."""
        if entry_id not in self._passages:
            if self.store is None:
                self._passages[entry_id] = []
            else:
                entry = self.entries[entry_id]
                self.stats["retrievals"] += 1
                self._passages[entry_id] = list(self.store.search(
                    RETRIEVAL_QUERY.format(name=entry.name), k=self.k, where={"entry": entry_id}))
        return self._passages[entry_id]

    def grounded(self, entry_id: str, reason: str | None, passages: list[Any] | None = None) -> Description:
        return Description(grounded_description(self.entries[entry_id], self.max_bullets), "grounded", reason,
                           passages or [])

    def describe(self, entry_id: str) -> Description:
        """One finding's description: memo -> persistent cache -> LLM (validated) -> grounded fallback.

        Up to ``attempts`` variants (few-shot examples rotated, see :meth:`variant`) are tried in order and
        the first one the validator accepts is used; each is cached, so a re-run repeats no call. Every
        candidate passes the same validation: retrying changes how often the model is used, not how strictly
        its text is checked.
        """
        if entry_id in self._memo:
            return self._memo[entry_id]
        if self.describer is None:
            description = self.grounded(entry_id, "grounded-only run (--llm none)")
        else:
            description = self._generate(entry_id)
            for variant in range(1, self.attempts):
                if description.source == "llm" or description.reason is None \
                        or not description.reason.startswith("LLM output rejected"):
                    break  # accepted, or a timeout/backend error: not worth another call
                retry = self._generate(entry_id, variant)
                if retry.source == "llm":
                    description = retry
        if description.source == "grounded":
            self.stats["grounded"] += 1
        self._memo[entry_id] = description
        return description

    def grounding_for(self, entry_id: str) -> tuple[list[str], list[Any]]:
        """The feature bullets the LLM rewrites and the passages its output is checked against.

        The bullets are the first ``max_bullets`` of the retrieved "Waveform features" passage (the ones the
        grounded fallback joins). When retrieval did not return that passage, the entry's own section is
        added to the grounding, so every bullet the model saw is also in the passages that check it.
        """
        passages = self.passages_for(entry_id)
        features = features_from_passages(passages)[:self.max_bullets]
        if features:
            return features, passages
        entry = self.entries[entry_id]
        section = f"{entry.name} — Waveform features:\n{entry.sections.get('waveform features', '')}"
        return entry.waveform_features[:self.max_bullets], [*passages, section]

    def variant(self, entry_id: str, variant: int, *, generate: bool = True) -> Description | None:
        """Description ``variant`` of a finding (variant N rewrites the same bullets after few-shot examples
        rotated N places), through the same validation and cache; the caption uses the first accepted of
        variants ``0 .. attempts - 1``. ``generate=False``: cache only (None if absent). Needs a describer;
        see :mod:`cqa.paraphrase`."""
        if self.describer is None:
            return None
        return self._generate(entry_id, variant, generate=generate)

    def _cache_key(self, entry_id: str, texts: list[str], variant: int) -> tuple[str, str]:
        assert self.describer is not None
        prompt_hash = self.describer.prompt_hash if variant == 0 else f"{self.describer.prompt_hash}:v{variant}"
        return cache_key(entry_id, texts, self.knowledge_version, self.describer.model_id, prompt_hash), prompt_hash

    @overload
    def _generate(self, entry_id: str, variant: int = 0) -> Description: ...

    @overload
    def _generate(self, entry_id: str, variant: int = 0, *, generate: bool) -> Description | None: ...

    def _generate(self, entry_id: str, variant: int = 0, *, generate: bool = True) -> Description | None:
        if (entry_id, variant) in self._variants:
            return self._variants[(entry_id, variant)]
        description = self._lookup_or_generate(entry_id, variant, generate)
        if description is not None and (description.source == "llm" or description.cached
                                        or (description.reason or "").startswith("LLM output rejected")):
            self._variants[(entry_id, variant)] = description  # timeouts are not memoised: transient
        return description

    def _lookup_or_generate(self, entry_id: str, variant: int, generate: bool) -> Description | None:
        assert self.describer is not None
        entry = self.entries[entry_id]
        features, passages = self.grounding_for(entry_id)
        texts = [str(getattr(p, "text", p)) for p in passages]
        key, prompt_hash = self._cache_key(entry_id, texts, variant)
        cached = self.cache.get(key) if self.cache else None
        if cached is not None:
            self.stats["cache_hits"] += 1
            if cached.source != "llm":
                return Description(grounded_description(entry, self.max_bullets), "grounded", cached.reason,
                                   passages, cached=True)
            # a text accepted by an older validator is checked again: a stricter rule must not be bypassed
            recheck = validate_description(cached.text, entry_id, passages, vocab=self.vocab, features=features)
            if recheck.ok:
                return Description(recheck.text, "llm", None, passages, cached=True)
            self.stats["cache_invalidated"] += 1
            reason = "LLM output rejected: " + "; ".join(recheck.reasons)
            if self.cache is not None:
                self.cache.put(key, finding=entry_id, knowledge_version=self.knowledge_version,
                               model_id=self.describer.model_id, prompt_hash=prompt_hash,
                               value=CachedDescription("", "grounded", reason, cached.raw))
            return Description(grounded_description(entry, self.max_bullets), "grounded", reason, passages,
                               cached=True)
        if not generate:
            return None
        self.stats["llm_calls"] += 1
        generation = self.describer.generate(entry.name, passages, features=features, entry_id=entry_id,
                                             variant=variant)
        if generation.error is not None:  # timeout / backend failure: transient, so not cached
            self.stats["llm_errors"] += 1
            log.warning("finding %s: grounded fallback (%s)", entry_id, generation.error)
            return self.grounded(entry_id, generation.error, passages)
        check = validate_description(generation.text or "", entry_id, passages, vocab=self.vocab, features=features)
        if check.ok:
            self.stats["llm_accepted"] += 1
            value = CachedDescription(check.text, "llm", None, generation.text)
            description = Description(check.text, "llm", None, passages)
        else:
            self.stats["llm_rejected"] += 1
            reason = "LLM output rejected: " + "; ".join(check.reasons)
            log.info("finding %s: grounded fallback (%s); output was %r", entry_id, reason, generation.text)
            value = CachedDescription("", "grounded", reason, generation.text)
            description = self.grounded(entry_id, reason, passages)
        if self.cache is not None:
            self.cache.put(key, finding=entry_id, knowledge_version=self.knowledge_version,
                           model_id=self.describer.model_id, prompt_hash=prompt_hash, value=value)
        return description

    def caption(self, normalized: Normalized, *, age: float | None = None, sex: str | None = None,
                labels: Mapping[str, float] | None = None, text_of_labels: str = "",
                record_id: str | None = None, subject_id: str | None = None, fold: int | None = None,
                age_censored: bool = False, with_passages: bool = False,
                terms: Mapping[str, Mapping[str, str]] | None = None) -> Caption:
        """Caption already-normalised findings (the CLI's ``explain`` and tests use this directly)."""
        descriptions = {f.id: self.describe(f.id) for f in normalized.findings}
        passages: dict[str, list[Any]] = {}
        if with_passages:
            passages = {f.id: descriptions[f.id].passages or self.passages_for(f.id) for f in normalized.findings}
        sources = {
            fid: {"source": d.source, "reason": d.reason, "model": self.model_id if d.source == "llm" else None,
                  "text": d.text}
            for fid, d in descriptions.items()
        }
        return Caption(
            record_id=record_id, subject_id=subject_id, fold=fold, age=age, sex=sex,
            labels=dict(labels or {}), findings=caption_order(normalized.findings),
            caption=compose_caption(normalized.findings, descriptions, age, sex, age_censored),
            label_text=text_of_labels, sources=sources,
            unknown_labels=[u.to_dict() for u in normalized.unknown], negated=list(normalized.negated),
            passages=passages, label_terms={k: dict(v) for k, v in (terms or {}).items()},
        )

    def caption_record(self, record: Any, *, with_passages: bool = False) -> Caption:
        """Caption a ``corpora.base.ECGRecord`` (labels, demographics and label descriptions)."""
        normalized = self.normalizer.normalize_record(record)
        extra = getattr(record, "extra", None) or {}
        return self.caption(
            normalized, age=record.age, sex=record.sex, labels=record.labels,
            text_of_labels=label_text(record.labels, record.label_vocabulary, record.label_info),
            record_id=record.record_id, subject_id=None if record.subject_id is None else str(record.subject_id),
            fold=record.fold, age_censored=bool(extra.get("age_censored")), with_passages=with_passages,
            terms=label_terms(record.labels, record.label_info),
        )
