"""The ECG knowledge corpus: one Markdown entry per finding, with machine-readable front matter.

Entry file format (``corpora/knowledge/entries/<id>.md``)::

    ---
    id: crbbb                       # unique, lower-case, [a-z0-9_]
    name: Complete right bundle branch block
    category: conduction            # one of CATEGORIES
    aliases: [RBBB, complete RBBB]  # abbreviations and synonyms (matched as whole words)
    scp_codes: [CRBBB]              # PTB-XL SCP statement codes
    snomed_codes: ["713427006"]     # SNOMED CT codes (CinC 2020/2021, Chapman, Ningbo), as strings
    mimic_patterns: ['\\bright bundle branch block\\b']  # case-insensitive regexes for machine statements
    causes: [hyperkalaemia]         # optional: conditions that produce the finding (searchable by retrieval,
                                    # never read as the finding itself, unlike aliases)
    ---
    ## Definition
    ## Mechanism
    ## Diagnostic criteria
    ## Waveform features
    - V1-V3: rsR' ("M-shaped") complex ...     (one bullet per lead group: "LEADS: feature")
    ## Common confusions

The "Waveform features" bullets are what the grounded (LLM-free) CQA description is built from,
so each bullet is a short, self-contained, clinically correct phrase.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

CATEGORIES = (
    "rhythm", "conduction", "hypertrophy", "ischaemia-infarction", "st-t", "axis", "form", "technical",
)
SECTIONS = ("definition", "mechanism", "diagnostic criteria", "waveform features", "common confusions")
REQUIRED_KEYS = ("id", "name", "category", "aliases", "scp_codes", "snomed_codes", "mimic_patterns")
OPTIONAL_KEYS = ("causes",)
_ID_RE = re.compile(r"^[a-z0-9_]+$")
_FRONT_RE = re.compile(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", re.S)
_HEADING_RE = re.compile(r"^##\s+(.+?)\s*$", re.M)


class KnowledgeError(ValueError):
    """An entry file is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class KnowledgeEntry:
    id: str
    name: str
    category: str
    aliases: tuple[str, ...]
    scp_codes: tuple[str, ...]
    snomed_codes: tuple[str, ...]
    mimic_patterns: tuple[str, ...]
    sections: dict[str, str] = field(hash=False, compare=False)
    source: str = ""
    causes: tuple[str, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        return self.scp_codes + self.snomed_codes

    @property
    def waveform_features(self) -> list[str]:
        """The bullets of the "Waveform features" section, without the leading dash."""
        text = self.sections.get("waveform features", "")
        return [line.strip()[2:].strip() for line in text.splitlines() if line.strip().startswith("- ")]

    @property
    def text(self) -> str:
        """The whole entry as Markdown (front matter excluded)."""
        body = "\n\n".join(f"## {name.capitalize()}\n{text}" for name, text in self.sections.items())
        return f"# {self.name}\n\n{body}"

    def matches_statement(self, statement: str) -> bool:
        return any(p.search(statement) for p in _compiled(self.mimic_patterns))


@lru_cache(maxsize=4096)
def _compile_one(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.I)


def _compiled(patterns: tuple[str, ...]) -> list[re.Pattern[str]]:
    return [_compile_one(p) for p in patterns]


def parse_entry(text: str, source: str = "<string>") -> KnowledgeEntry:
    """Parse one entry file; raise :class:`KnowledgeError` naming ``source`` on any problem."""
    match = _FRONT_RE.match(text.removeprefix("\ufeff"))  # a byte-order mark some editors write is not content
    if not match:
        raise KnowledgeError(f"{source}: missing '---' front matter block")
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise KnowledgeError(f"{source}: front matter is not valid YAML: {err}") from err
    if not isinstance(meta, dict):
        raise KnowledgeError(f"{source}: front matter must be a mapping")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise KnowledgeError(f"{source}: front matter lacks {missing}")
    unknown = sorted(set(meta) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise KnowledgeError(f"{source}: unknown front matter keys {unknown}")
    if not isinstance(meta["id"], str) or not _ID_RE.match(meta["id"]):
        raise KnowledgeError(f"{source}: id {meta['id']!r} must match [a-z0-9_]+")
    if not isinstance(meta["name"], str) or not meta["name"].strip():
        raise KnowledgeError(f"{source}: name {meta['name']!r} must be a non-empty string")
    if meta["category"] not in CATEGORIES:
        raise KnowledgeError(f"{source}: category {meta['category']!r} not in {CATEGORIES}")
    lists = {}
    for key in ("aliases", "scp_codes", "snomed_codes", "mimic_patterns", *OPTIONAL_KEYS):
        value = meta.get(key) or []
        if not isinstance(value, list):
            raise KnowledgeError(f"{source}: {key} must be a list")
        for item in value:  # YAML reads "- " as null, "yes" as a bool, "[a]" as a list: none is a phrase or code
            if isinstance(item, bool) or not isinstance(item, str | int | float) or not str(item).strip():
                raise KnowledgeError(f"{source}: {key} item {item!r} must be a non-empty string (quote it)")
        lists[key] = tuple(str(v) for v in value)
    for pattern in lists["mimic_patterns"]:
        try:
            re.compile(pattern)
        except re.error as err:
            raise KnowledgeError(f"{source}: bad mimic pattern {pattern!r}: {err}") from err
    sections = _split_sections(match.group(2))
    absent = [s for s in SECTIONS if not sections.get(s, "").strip()]
    if absent:
        raise KnowledgeError(f"{source}: empty or missing sections {absent}")
    entry = KnowledgeEntry(
        id=meta["id"], name=str(meta["name"]), category=meta["category"], sections=sections,
        source=source, **lists,
    )
    if not entry.waveform_features:
        raise KnowledgeError(f"{source}: 'Waveform features' needs at least one '- ' bullet")
    return entry


def _split_sections(body: str) -> dict[str, str]:
    parts = _HEADING_RE.split(body)
    return {parts[i].strip().lower(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def entries_dir() -> Path:
    return Path(str(resources.files("corpora.knowledge").joinpath("entries")))


@lru_cache(maxsize=8)
def load_entries(directory: str | None = None) -> tuple[KnowledgeEntry, ...]:
    """Load and validate every entry (the built-in corpus by default), sorted by id."""
    folder = Path(directory) if directory else entries_dir()
    entries = [parse_entry(p.read_text(encoding="utf-8"), p.name) for p in sorted(folder.glob("*.md"))]
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.id in seen:
            raise KnowledgeError(f"{entry.source}: duplicate id {entry.id!r} (also in {seen[entry.id]})")
        seen[entry.id] = entry.source
    return tuple(sorted(entries, key=lambda e: e.id))


def knowledge_version(directory: str | None = None) -> str:
    """A content hash of the corpus, used to key caches and to decide when a store is stale."""
    folder = Path(directory) if directory else entries_dir()
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.md")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def entry_by_id(directory: str | None = None) -> dict[str, KnowledgeEntry]:
    return {e.id: e for e in load_entries(directory)}


def code_index(directory: str | None = None) -> dict[str, list[str]]:
    """Map every SCP and SNOMED code to the ids of the entries that list it."""
    index: dict[str, list[str]] = {}
    for entry in load_entries(directory):
        for code in entry.codes:
            index.setdefault(code, []).append(entry.id)
    return index


def match_statement(statement: str, directory: str | None = None) -> list[str]:
    """Ids of the entries whose MIMIC patterns match a machine statement line."""
    return [e.id for e in load_entries(directory) if e.matches_statement(statement)]
