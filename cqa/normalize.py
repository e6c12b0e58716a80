"""Native ECG labels -> canonical findings (knowledge-entry ids) with a certainty qualifier.

Handles every label vocabulary our readers emit:

- ``scp`` (PTB-XL): SCP codes via the entries' ``scp_codes``; the likelihood is kept as
  ``confidence``. For diagnostic statements likelihood 0 means "present, likelihood unknown" and below
  ``present_threshold`` (default 50) the statement is hedged, so both become ``possible``, never dropped.
  Rhythm and form statements are never graded in PTB-XL (always 0), so they are ``present``.
- ``snomed`` (CinC 2020/2021, Chapman, Ningbo, Georgia): SNOMED CT codes via ``snomed_codes``, then
  the dx-mapping name/abbreviation from ``label_info`` as a plain name.
- ``mimic_statement`` (MIMIC-IV-ECG machine statements): free text. Lines matching
  ``corpora/knowledge/ignored_statements.yaml`` are technical and skipped (counted). Findings come
  from the entries' ``mimic_patterns`` (then, if none match, from entry names/aliases in the line).
  Qualifiers are read per clause: "possible/probable/consider/cannot rule out/borderline/may be/or"
  -> ``possible``; "no longer present/now absent/resolved" -> negated (reported, not a finding).
- ``cpsc2018``: the nine class names (or their 1-9 numbers) via ``cqa/data/cpsc2018_classes.yaml``.
- anything else (``explain --codes``): plain condition names, abbreviations, codes (case-insensitive).

Labels that map to nothing are returned in ``unknown`` with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from corpora.knowledge import CATEGORIES, KnowledgeEntry, code_index, load_entries

from .vocab import Vocabulary, clause_bounds, default_vocabulary, display_name, qualify

CERTAINTY_RANK = {"present": 2, "possible": 1}
PRESENT_THRESHOLD = 50.0
_CATEGORY_ORDER = {c: i for i, c in enumerate(("rhythm", "conduction", "axis", "hypertrophy",
                                               "ischaemia-infarction", "st-t", "form", "technical"))}


@dataclass
class Finding:
    """One canonical finding of a record: a knowledge entry, how certain, and which labels said so."""

    id: str
    name: str
    category: str
    certainty: str  # "present" | "possible" | "negated"
    labels: list[str] = field(default_factory=list)
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UnknownLabel:
    label: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Normalized:
    """The result for one record: findings in caption order, plus what was negated/ignored/unknown."""

    findings: list[Finding] = field(default_factory=list)
    negated: list[Finding] = field(default_factory=list)
    unknown: list[UnknownLabel] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [f.id for f in self.findings]


@lru_cache(maxsize=1)
def cpsc_classes() -> dict[str, dict[str, Any]]:
    path = resources.files("cqa").joinpath("data", "cpsc2018_classes.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {str(k): v for k, v in data.items()}


@lru_cache(maxsize=4)
def _ignore_patterns(path: str | None = None) -> tuple[re.Pattern[str], ...]:
    """The corpus' technical-statement regexes, or none if the corpus does not ship the file yet."""
    try:
        from corpora.knowledge import coverage
    except ImportError:
        return ()
    source = Path(path) if path else coverage.ignore_file_path()
    if not source.is_file():
        return ()
    return tuple(coverage.load_ignore_patterns(str(source)))


@lru_cache(maxsize=4)
def _statement_patterns(directory: str | None) -> tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]:
    return tuple((e.id, tuple(re.compile(p, re.I) for p in e.mimic_patterns)) for e in load_entries(directory))


class Normalizer:
    """Maps native labels to findings against one knowledge corpus (the built-in one by default)."""

    def __init__(self, directory: str | None = None, *, present_threshold: float = PRESENT_THRESHOLD,
                 ignore_file: str | None = None):
        self.directory = directory
        self.entries: dict[str, KnowledgeEntry] = {e.id: e for e in load_entries(directory)}
        self.codes = code_index(directory)
        self.vocab: Vocabulary = default_vocabulary(directory)
        self.present_threshold = present_threshold
        self.ignore = _ignore_patterns(ignore_file)
        self.patterns = _statement_patterns(directory)

    # -- per vocabulary -------------------------------------------------------------------------
    def normalize(self, labels: Mapping[str, float] | Iterable[str], vocabulary: str = "",
                  label_info: Mapping[str, Mapping[str, Any]] | None = None) -> Normalized:
        """Normalise one record's labels (dict label -> confidence, or a plain list of labels)."""
        if not isinstance(labels, Mapping):
            labels = {str(label): 100.0 for label in labels}
        label_info = label_info or {}
        result = Normalized()
        collected: dict[str, Finding] = {}
        negated: dict[str, Finding] = {}
        for label, confidence in labels.items():
            label = str(label)
            info = label_info.get(label) or {}
            if vocabulary == "mimic_statement":
                hits, reason = self._statement(label, result)
            elif vocabulary == "scp":
                hits, reason = self._coded(label, confidence, info, "SCP statement")
            elif vocabulary == "snomed":
                hits, reason = self._coded(label, confidence, info, "SNOMED CT code")
            elif vocabulary == "cpsc2018":
                hits, reason = self._cpsc(label)
            else:
                hits, reason = self._plain(label, confidence)
            if reason is not None:
                result.unknown.append(UnknownLabel(label, reason))
            for entry_id, certainty in hits:
                target = negated if certainty == "negated" else collected
                self._merge(target, entry_id, certainty, label,
                            float(confidence) if vocabulary == "scp" and confidence is not None else None)
        result.findings = self._ordered(collected)
        # a finding both present (in one line) and negated (in another) stays present
        result.negated = [f for f in self._ordered(negated) if f.id not in collected]
        return result

    def normalize_record(self, record: Any) -> Normalized:
        """Normalise a ``corpora.base.ECGRecord`` (uses its labels, label_vocabulary and label_info)."""
        return self.normalize(record.labels, record.label_vocabulary, record.label_info)

    def _certainty(self, confidence: float | None) -> str:
        if confidence is None:
            return "present"
        return "present" if float(confidence) >= self.present_threshold else "possible"

    def _coded(self, label: str, confidence: float | None, info: Mapping[str, Any],
               kind: str) -> tuple[list[tuple[str, str]], str | None]:
        certainty = self._certainty(confidence)
        if kind == "SCP statement" and info.get("known") and not info.get("diagnostic"):
            # PTB-XL grades likelihood for diagnostic statements only; pure rhythm and form
            # statements always carry 0 ("not graded"), so they are stated findings, not hedged ones.
            certainty = "present"
        ids = self.codes.get(label.strip())
        if ids:
            return [(i, certainty) for i in ids], None
        # fall back on the human-readable name the dataset gives for the code
        for key in ("abbreviation", "name", "description"):
            value = info.get(key)
            if value:
                ids = self.vocab.lookup(str(value))
                if ids:
                    return [(i, certainty) for i in ids], None
        described = info.get("name") or info.get("description")
        suffix = f" ({described})" if described else ""
        return [], f"{kind} {label!r}{suffix} is not listed by any knowledge entry"

    def _cpsc(self, label: str) -> tuple[list[tuple[str, str]], str | None]:
        classes = cpsc_classes()
        spec = classes.get(label.strip()) or next(
            (v for v in classes.values() if str(v.get("number")) == label.strip()), None)
        if spec is None:
            lookup = {k.lower(): v for k, v in classes.items()}
            spec = lookup.get(label.strip().lower())
        if spec is None:
            return [], f"{label!r} is not one of the nine CPSC2018 classes {sorted(classes)}"
        ids = [i for code in spec.get("snomed", []) for i in self.codes.get(str(code), [])]
        if not ids:
            ids = self.vocab.lookup(spec["name"])
        if not ids:
            return [], f"CPSC2018 class {label!r} ({spec['name']}) has no knowledge entry"
        return [(i, "present") for i in dict.fromkeys(ids)], None

    def _plain(self, label: str, confidence: float | None) -> tuple[list[tuple[str, str]], str | None]:
        text = label.strip()
        certainty = self._certainty(confidence)
        hedge = re.match(r"(?i)^(?:possible|probable|possibly|probably|\?)\s*(.+)$", text)
        if hedge:
            text, certainty = hedge.group(1).strip(), "possible"
        ids = self.vocab.lookup(text) or self.codes.get(text) or self.codes.get(text.upper())
        if ids:
            return [(i, certainty) for i in ids], None
        if not text:
            return [], "empty label"
        return [], f"{label!r} is not a knowledge-entry name, alias or code"

    def statement_is_ignored(self, line: str) -> bool:
        return any(p.search(line) for p in self.ignore)

    def _statement(self, line: str, result: Normalized) -> tuple[list[tuple[str, str]], str | None]:
        text = line.strip()
        if not text:
            return [], "empty statement"
        if self.statement_is_ignored(text):
            result.ignored.append(line)
            return [], None
        hits = self.statement_findings(text)
        if hits:
            return hits, None
        return [], "no knowledge entry's mimic_patterns, name or alias matches the statement"

    def statement_findings(self, text: str) -> list[tuple[str, str]]:
        """(entry id, certainty) for one machine statement line, qualifiers read per clause."""
        continuation_hedge = bool(re.match(r"(?i)^\W*or\b", text))
        spans: list[tuple[str, int, int]] = []
        for entry_id, patterns in self.patterns:
            for pattern in patterns:
                match = pattern.search(text)
                if match:
                    spans.append((entry_id, match.start(), match.end()))
                    break
        if not spans:  # no pattern: fall back on entry names / aliases in the line
            spans = [(i, m.start, m.end) for m in self.vocab.mentions(text) for i in m.entry_ids]
        hits: dict[str, str] = {}
        for entry_id, start, end in spans:
            certainty = qualify(text, start, end) if end > start else "present"
            if certainty == "present" and continuation_hedge:
                certainty = "possible"
            if certainty == "present" and _hedged_clause(text, start, end):
                certainty = "possible"
            previous = hits.get(entry_id)
            if previous is None or _rank(certainty) > _rank(previous):
                hits[entry_id] = certainty
        return list(hits.items())

    # -- merging ---------------------------------------------------------------------------------
    def _merge(self, target: dict[str, Finding], entry_id: str, certainty: str, label: str,
               confidence: float | None) -> None:
        entry = self.entries.get(entry_id)
        if entry is None:
            return
        finding = target.get(entry_id)
        if finding is None:
            target[entry_id] = Finding(entry_id, display_name(entry), entry.category, certainty, [label],
                                       confidence)
            return
        if label not in finding.labels:
            finding.labels.append(label)
        if _rank(certainty) > _rank(finding.certainty):
            finding.certainty = certainty
        if confidence is not None:
            finding.confidence = max(confidence, finding.confidence or 0.0)

    def merge(self, *results: Normalized) -> Normalized:
        """Combine normalisations of one record's label groups (the strongest certainty wins)."""
        findings: dict[str, Finding] = {}
        negated: dict[str, Finding] = {}
        merged = Normalized()
        for result in results:
            for target, items in ((findings, result.findings), (negated, result.negated)):
                for finding in items:
                    for label in finding.labels:
                        self._merge(target, finding.id, finding.certainty, label, finding.confidence)
            merged.unknown += result.unknown
            merged.ignored += result.ignored
        merged.findings = self._ordered(findings)
        merged.negated = [f for f in self._ordered(negated) if f.id not in findings]
        return merged

    def _ordered(self, findings: dict[str, Finding]) -> list[Finding]:
        """Caption order: rhythm first, then conduction, axis, ... (stable, by id within a category)."""
        return sorted(findings.values(),
                      key=lambda f: (_CATEGORY_ORDER.get(f.category, len(CATEGORIES)), f.id))


def _rank(certainty: str) -> int:
    return CERTAINTY_RANK.get(certainty, 0)


def _hedged_clause(text: str, start: int, end: int) -> bool:
    """A pattern may swallow its own hedge ("possible acute infarct"): look inside the match too."""
    left, _ = clause_bounds(text, start, end)
    return bool(re.search(r"(?i)\b(?:possible|probable|consider|cannot rule out|borderline)\b",
                          text[min(left, start):end]))


@lru_cache(maxsize=4)
def default_normalizer(directory: str | None = None) -> Normalizer:
    return Normalizer(directory)


def normalize_labels(labels: Mapping[str, float] | Iterable[str], vocabulary: str = "",
                     label_info: Mapping[str, Mapping[str, Any]] | None = None) -> Normalized:
    """Normalise labels against the built-in knowledge corpus (see :class:`Normalizer`)."""
    return default_normalizer().normalize(labels, vocabulary, label_info)


def statement_coverage(lines: Iterable[str], normalizer: Normalizer | None = None) -> dict[str, Any]:
    """Fraction of non-technical MIMIC statement lines that yield >= 1 finding (present/possible/negated)."""
    normalizer = normalizer or default_normalizer()
    total = ignored = covered = 0
    uncovered: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        total += 1
        result = normalizer.normalize({line: 100.0}, "mimic_statement")
        if result.ignored:
            ignored += 1
        elif result.findings or result.negated:
            covered += 1
        else:
            uncovered.append(line)
    considered = total - ignored
    return {"lines": total, "ignored": ignored, "non_technical": considered, "covered": covered,
            "coverage": covered / considered if considered else 0.0, "uncovered": uncovered}
