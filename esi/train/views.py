"""Caption views: several texts per training record, one drawn per step (text augmentation).

Why: a model trained on one long CQA caption per ECG matches only text shaped like that caption.
Users type short prompts and umbrella names ("conduction disturbance", "hypertrophy") that never occur
in a caption, and those landed near the wrong class (``../shared/notes/zero-shot-diagnosis.md``).
Each record therefore gets a fixed, seeded set of views, built from its own labels only:

* ``caption``  the full CQA caption;
* ``findings`` the findings line alone, in caption or shuffled order, with or without demographics;
* ``finding``  one finding's waveform description ("Complete RBBB — V1: rsR' ...");
* ``names``    the findings named at a level of the vocabulary's hierarchy (PTB-XL statement,
  diagnostic subclass, superclass; knowledge-entry names and abbreviations), in the short,
  prompt-like sentences of ``esi/zeroshot/templates/views.json``.

The set per record is finite and fixed by ``(seed, record_id)``, so a frozen text tower embeds each
view once (``TextEncoder.precompute``) and a resumed run draws exactly the same texts.
The same generator writes the ``views`` zero-shot class text (:func:`class_view_texts`).
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

VIEW_KINDS = ("caption", "findings", "finding", "names")


class ViewError(ValueError):
    """Unknown view kind or impossible view weights."""


@dataclass(frozen=True)
class FindingText:
    """One finding of a record with every name it may be called by, most specific first."""

    id: str
    names: tuple[str, ...]
    umbrella: tuple[str, ...] = ()  # higher hierarchy levels (subclass, superclass display names)
    description: str = ""
    possible: bool = False


@dataclass(frozen=True)
class RecordText:
    """Everything the view generator reads from one caption row."""

    record_id: str
    caption: str
    findings: tuple[FindingText, ...] = ()
    demographics: str = ""


@dataclass
class ViewSettings:
    """Per-kind sampling weights (0 turns a kind off) and how many ``names`` views each record gets."""

    caption: float = 0.4
    findings: float = 0.15
    finding: float = 0.15
    names: float = 0.3
    names_per_record: int = 4
    # JSON {knowledge entry id: [validated LLM paraphrases]} from `python -m cqa paraphrases`: each one joins
    # the ``finding`` views of every record with that finding (None: the caption's own description only)
    paraphrases: str | None = None

    def __post_init__(self) -> None:
        weights = [getattr(self, k) for k in VIEW_KINDS]
        if any(not isinstance(w, int | float) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ViewError(f"view weights must be >= 0 and not all 0, got {dict(zip(VIEW_KINDS, weights))}")
        if not isinstance(self.names_per_record, int) or self.names_per_record < 1:
            raise ViewError(f"names_per_record must be an integer >= 1, got {self.names_per_record!r}")
        if self.paraphrases is not None:
            load_paraphrases(self.paraphrases)  # a missing or malformed file fails when the config is loaded

    def weights(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in VIEW_KINDS}


@lru_cache(maxsize=4)
def view_templates(name: str = "views") -> tuple[str, ...]:
    from esi.zeroshot.templates import load_templates

    return tuple(load_templates(name))


@lru_cache(maxsize=1)
def hierarchy_displays() -> dict[str, dict[str, str]]:
    """PTB-XL subclass and superclass codes -> the display names the shipped label sets use."""
    from esi.zeroshot.labelsets import load_labelset

    out: dict[str, dict[str, str]] = {}
    for level, name in (("diagnostic_subclass", "subclass"), ("diagnostic_class", "superclass")):
        out[level] = {}
        for cls in load_labelset(name).classes:
            for code in cls.id.split("/"):
                out[level][code] = cls.display
            out[level][cls.id] = cls.display
    return out


def load_paraphrases(path: str | Path) -> dict[str, tuple[str, ...]]:
    """The paraphrase table ``python -m cqa paraphrases`` writes, checked: entry id -> its texts."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ViewError(f"views.paraphrases: cannot read {path}: {error}") from error
    if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(t, str) and t.strip() for t in v)
            for k, v in table.items()):
        raise ViewError(f"views.paraphrases: {path} must map finding ids to lists of non-empty texts")
    return {k: tuple(t.strip() for t in v) for k, v in table.items()}


@lru_cache(maxsize=1)
def _entries() -> dict[str, Any]:
    from corpora.knowledge import entry_by_id

    return entry_by_id()


def _short_aliases(entry: Any) -> list[str]:
    """Abbreviations and short synonyms users type (``RBBB``, ``LVH``), at most three."""
    return [a for a in entry.aliases if len(a) <= 24][:3]


def record_text(row: Mapping[str, Any]) -> RecordText:
    """A caption row (``cqa caption`` Parquet) as view-generator input; tolerant of older rows."""
    from cqa.caption import demographics

    findings = json.loads(row.get("findings") or "[]")
    terms = json.loads(row.get("label_terms") or "{}")
    sources = json.loads(row.get("sources") or "{}")
    displays = hierarchy_displays()
    entries = _entries()
    out = []
    for finding in findings:
        entry = entries.get(finding["id"])
        names = [finding["name"]] + (_short_aliases(entry) if entry else [])
        umbrella: list[str] = []
        for label in finding.get("labels", []):
            label_terms = terms.get(str(label), {})
            for key in ("description", "name", "abbreviation"):
                if label_terms.get(key):
                    names.append(label_terms[key])
            for level in ("diagnostic_subclass", "diagnostic_class"):
                display = displays[level].get(label_terms.get(level, ""))
                if display:
                    umbrella.append(display)
        out.append(FindingText(
            id=finding["id"], names=tuple(dict.fromkeys(n.strip() for n in names if n and n.strip())),
            umbrella=tuple(dict.fromkeys(umbrella)), description=str((sources.get(finding["id"]) or {}).get("text") or ""),
            possible=finding.get("certainty") == "possible"))
    age = row.get("age")
    return RecordText(record_id=str(row["record_id"]), caption=str(row.get("caption") or ""),
                      findings=tuple(out), demographics=demographics(age, row.get("sex")))


def _join(names: Sequence[str]) -> str:
    return ", ".join(names)


def _findings_line(record: RecordText, rng: random.Random) -> str:
    findings = list(record.findings)
    if rng.random() < 0.5:
        rng.shuffle(findings)
    line = "Findings: " + "; ".join(("possible " if f.possible else "") + f.names[0] for f in findings) + "."
    if record.demographics and rng.random() < 0.5:
        line = f"{record.demographics} {line}"
    return line


def _names_view(record: RecordText, rng: random.Random, templates: Sequence[str]) -> str:
    """Each finding called by one of its names or an umbrella name; sometimes the umbrella is added."""
    names: list[str] = []
    findings = list(record.findings)
    rng.shuffle(findings)
    for finding in findings:
        choice = rng.choice(finding.names + finding.umbrella)
        names.append(("possible " if finding.possible and rng.random() < 0.5 else "") + choice)
        if finding.umbrella and rng.random() < 0.5:
            names.append(rng.choice(finding.umbrella))
    text = rng.choice(templates).format(_join(list(dict.fromkeys(names))))
    if record.demographics and rng.random() < 0.25:
        text = f"{record.demographics} {text}"
    return text


@dataclass
class ViewGenerator:
    """The fixed view set of every record and a seeded draw of one view per (epoch, record)."""

    settings: ViewSettings = field(default_factory=ViewSettings)
    seed: int = 0
    templates: tuple[str, ...] = field(default_factory=view_templates)
    paraphrases: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.settings.paraphrases is not None and not self.paraphrases:
            self.paraphrases = load_paraphrases(self.settings.paraphrases)

    def views(self, record: RecordText) -> dict[str, list[str]]:
        """Kind -> texts for one record (kinds without material, e.g. no findings, are empty)."""
        rng = random.Random(zlib.crc32(f"{self.seed}:{record.record_id}".encode()))
        out: dict[str, list[str]] = {k: [] for k in VIEW_KINDS}
        out["caption"] = [record.caption] if record.caption else []
        if record.findings:
            out["findings"] = list(dict.fromkeys(_findings_line(record, rng) for _ in range(2)))
            out["finding"] = list(dict.fromkeys(
                f"{f.names[0][:1].upper()}{f.names[0][1:]} — {text}" for f in record.findings
                for text in (f.description, *self.paraphrases.get(f.id, ())) if text))
            out["names"] = list(dict.fromkeys(_names_view(record, rng, self.templates)
                                              for _ in range(self.settings.names_per_record)))
        return {k: v for k, v in out.items() if self.settings.weights()[k] > 0}

    def draw(self, views: Mapping[str, list[str]], key: tuple[Any, ...]) -> str:
        """One view, chosen by kind weight then uniformly, from a generator seeded by ``key`` alone."""
        rng = random.Random(zlib.crc32(":".join(map(str, (self.seed, *key))).encode()))
        kinds = [k for k in VIEW_KINDS if views.get(k)]
        weights = self.settings.weights()
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        return rng.choice(views[kind])


def class_view_texts(display: str, member_names: Mapping[str, float], templates: Sequence[str] | None = None
                     ) -> tuple[list[str], list[float]]:
    """The ``views`` zero-shot class text: prompts naming the class and each member finding.

    Half the weight goes to the class's own name, half to its member findings in proportion to
    ``member_names`` (name -> weight, e.g. how often the member occurs in the training folds), so a
    rare member never dominates. Returns the texts and their weights (summing to 1).
    """
    templates = list(templates or view_templates())
    texts = [t.format(display) for t in templates]
    weights = [0.5 / len(templates)] * len(templates)
    total = sum(member_names.values())
    if total <= 0:
        return texts, [w * 2 for w in weights]
    for name, weight in member_names.items():
        for template in templates:
            texts.append(template.format(f"{name}, {display}" if name.lower() != display.lower() else name))
            weights.append(0.5 * weight / total / len(templates))
    return texts, weights


def _member_name(code: str, terms: Mapping[str, str]) -> str:
    from corpora.knowledge import code_index

    entry_ids = code_index().get(code, [])
    return _entries()[entry_ids[0]].name if entry_ids else str(terms.get("description") or terms.get("name") or code)


def code_names(code: str, terms: Mapping[str, str]) -> set[str]:
    """Every name a code goes by at any level of its hierarchy, case-folded (query matching)."""
    displays = hierarchy_displays()
    names = {code, *(terms.get(k, "") for k in ("description", "name", "abbreviation", "statement"))}
    for level in ("diagnostic_subclass", "diagnostic_class"):
        if terms.get(level):
            names |= {terms[level], displays[level].get(terms[level], "")}
    from corpora.knowledge import code_index

    for entry_id in code_index().get(code, [])[:1]:
        entry = _entries()[entry_id]
        names |= {entry.name, *entry.aliases}
    return {n.strip().casefold() for n in names if n and n.strip()}


def expand_query(query: str, prior: Mapping[str, Any] | None) -> tuple[list[str], list[float]]:
    """A text query as the weighted texts the model was trained on (``views`` query text).

    The query is matched, case-insensitively, against every name each training label goes by
    (statement, subclass, superclass, knowledge-entry names and abbreviations, from the model's
    ``label_prior.json``), else against the knowledge corpus through the CQA normaliser. Matches
    become member findings weighted by their training counts (:func:`class_view_texts`). A query
    that names no finding ("wide QRS with M-shaped complex in V1") is used as typed.
    """
    key = query.strip().rstrip(".").casefold()
    prior = prior or {}
    counts: Mapping[str, float] = prior.get("labels", {})
    terms: Mapping[str, Mapping[str, str]] = prior.get("terms", {})
    members: dict[str, float] = {}
    for code, count in counts.items():
        if key in code_names(code, terms.get(code, {})):
            name = _member_name(code, terms.get(code, {}))
            members[name] = members.get(name, 0.0) + float(count)
    if not members:
        from cqa.normalize import normalize_labels

        found = normalize_labels([query.strip()])
        if found.findings and not found.unknown:
            entries = _entries()
            for finding in found.findings:
                weight = sum(float(counts.get(c, 0.0)) for c in entries[finding.id].codes)
                members[finding.name] = max(weight, 1.0)
    if not members:
        return [query], [1.0]
    return class_view_texts(query.strip().rstrip("."), members)
