"""Validation of generated descriptions, the grounded fallback, and the caption faithfulness checker.

A description generated for a finding is accepted only if it

- is plain prose within the length limits (characters, sentences; a cut-off last sentence is trimmed),
- carries no prompt-format garbage (chat tokens, tags, echoed delimiters, role prefixes, code fences,
  instruction-following chatter, loops),
- mentions the finding (its name, an alias, a code or a key feature term: a word n-gram of its
  "Waveform features" bullets that no other entry's bullets contain),
- asserts no other finding unless that finding is named in the retrieved passages. "Assert" uses the
  knowledge entries' names/aliases as vocabulary with negation handling: "no atrial fibrillation",
  "unlike LBBB" or "unless a fascicular block coexists" are not assertions,
- uses no content word or upper-case term the grounding lacks (with ``features``: the bullets the model
  was asked to rewrite), and repeats no content word more often than the grounding does: the model
  rephrases the grounded bullets, so a new word ("irregular", "caused by a variety of factors", "QT
  complex") is invented content; plain connectives ("shows", "with", "typical") and the finding's own
  names are exempt, and words match on their first five letters ("inverted" is grounded by "inversion"),
- makes no lead, territory or QRS-width claim the passages do not support (:mod:`cqa.claims`: inferior is
  II, III, aVF; a PAC's QRS is narrow unless aberrant; the features stated for a lead list must be the
  ones the passages give there). With no passages given, the entry's own sections are the grounding.

Otherwise it is replaced by :func:`grounded_description`, built deterministically from the entry's
"Waveform features" bullets. :func:`check_caption` is the same faithfulness test applied to any
caption text (ours, or one a captioning model generated).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from corpora.knowledge import KnowledgeEntry, load_entries

from .claims import claim_problems, entry_passages
from .vocab import Mention, Vocabulary, default_vocabulary, entry_terms

MIN_CHARS = 20
MAX_CHARS = 320
MAX_SENTENCES = 2
MAX_BULLETS = 3

_GARBAGE = [
    (re.compile(r"<\|[^|]*\|>|<\||\|>"), "chat-template token"),
    (re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?>"), "markup tag"),
    (re.compile(r"[‹›]"), "echoed prompt delimiter"),
    (re.compile(r"```|\[/?INST\]|<<SYS>>|^#{1,6}\s", re.M), "prompt-format syntax"),
    (re.compile(r"(?im)^\s*(?:system|user|assistant|human|ai|answer|response|passage\s*\d*)\s*:"), "role prefix"),
    (re.compile(r"[{}]"), "template braces"),
    (re.compile(r"(?i)\bpassage[s]?\s*(?:n\s*=|\[?\d)"), "passage reference"),
    (re.compile(r"(?i)\b(?:ignore (?:all |any )?(?:previous|prior|above)|as an ai|language model|"
                r"i cannot|i can't|i'm sorry|i am sorry|here is|here's|sure[,!])"), "assistant chatter"),
    (re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]"), "control character"),
    (re.compile(r"(?m)^\s*(?:[-*•]|\d+[.)])\s"), "list formatting"),
    (re.compile(r"(?i)\b(?:also called|category|scp-ecg codes?|snomed ct codes?|summary|definition|mechanism|"
                r"diagnostic criteria|waveform features|common confusions)\s*:"), "echoed passage headings"),
    (re.compile(r"[\w′')]:\s+\S"), "echoed feature label"),
]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_STOP = {"a", "an", "the", "of", "in", "on", "and", "or", "with", "to", "by", "is", "are", "as", "at", "for",
         "from", "than", "that", "this", "be", "usually", "often", "may", "no", "not", "its", "their", "each",
         "one", "more", "less", "all", "any", "both", "only", "into", "over", "under", "ms", "mm", "mv"}
_KEY_TERM_CUT = re.compile(r"\b(?:unless|except|without|not|no|absent|rather than|instead of|usually|may)\b|\(",
                           re.I)
_LEAD_NUMBERS = {"1", "2", "3", "4", "5", "6", "12"}
# Words a rephrasing may add without adding content (checked words have >= 4 letters).
_CONNECTIVES = frozenset("""
    show shows showing shown have having gives give given seen appear appears appearing present presents produce
    produces producing feature features featured typical typically characteristic include includes including which
    where while there their these those with into also along together followed follow follows each every both other
    than then when such same this that them they been being often usually mainly mostly more less most least very
    well thus hence described describe describes means mean pattern patterns wave waves lead leads finding findings
    type types kind form forms tracing tracings electrocardiogram last lasts lasting measure measures measuring
    measured occur occurs occurring display displays demonstrate demonstrates contain contains consist consists
    reveal reveals exhibit exhibits marked characterised characterized""".split())
# Width words are checked, with their wave, by cqa.claims (a PAC's "wide QRS" needs "aberrant" support).
_WIDTH_WORD = re.compile(r"^(?:wide|wider|widen\w*|broad\w*|narrow\w*)$")
_STEM = 5  # V1-V6, 12-lead: not measurements
_LEAD_WORD = re.compile(r"^(?:i{1,3}|avr|avl|avf|v[1-6](?:[–-]v?[1-6])?|leads?|\d+)$", re.I)


@dataclass
class Check:
    """Outcome of validating one description: ok, the reasons it failed, and the text it checked."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    text: str = ""


@dataclass
class CaptionCheck:
    """Faithfulness of a caption to its input findings."""

    ok: bool
    mentioned: list[str]
    missing: list[str]
    unsupported: list[str]
    negated: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=4)
def key_terms(directory: str | None = None) -> dict[str, tuple[str, ...]]:
    """Per entry: 2-3-word phrases of its waveform bullets that no other entry's bullets contain."""
    phrases: dict[str, set[str]] = {}
    for entry in load_entries(directory):
        grams: set[str] = set()
        for bullet in entry.waveform_features:
            _, _, feature = bullet.partition(":") if ":" in bullet[:40] else ("", "", bullet)
            feature = _KEY_TERM_CUT.split(feature, maxsplit=1)[0]
            words = [w for w in re.findall(r"[A-Za-z′'][A-Za-z′'\-]*", feature.lower())]
            for size in (2, 3):
                for i in range(len(words) - size + 1):
                    gram = words[i:i + size]
                    if gram[0] in _STOP or gram[-1] in _STOP or any(_LEAD_WORD.match(w) for w in gram):
                        continue
                    grams.add(" ".join(gram))
        phrases[entry.id] = grams
    vocab = default_vocabulary(directory)
    for entry_id, grams in phrases.items():  # a phrase naming another finding is not this one's feature
        grams -= {g for g in grams if any(entry_id not in m.entry_ids for m in vocab.mentions(g))}
    owners: dict[str, int] = {}
    for grams in phrases.values():
        for gram in grams:
            owners[gram] = owners.get(gram, 0) + 1
    return {entry_id: tuple(sorted(g for g in grams if owners[g] == 1)) for entry_id, grams in phrases.items()}


def _finding_ids(findings: Iterable[Any]) -> list[str]:
    ids = []
    for finding in findings:
        if isinstance(finding, str):
            ids.append(finding)
        elif isinstance(finding, Mapping):
            ids.append(str(finding["id"]))
        else:
            ids.append(str(finding.id))
    return ids


def _folded(text: str) -> str:
    return " ".join(re.split(r"[\s\-–]+", text.lower()))


@lru_cache(maxsize=4096)
def _key_term_pattern(entry_id: str) -> re.Pattern[str] | None:
    terms = key_terms().get(entry_id, ())
    if not terms:
        return None
    return re.compile(r"(?<![\w′'])(?:" + "|".join(re.escape(_folded(t)) for t in terms) + r")(?![\w′'])")


def mentions_finding(text: str, entry_id: str, vocab: Vocabulary | None = None,
                     mentions: Sequence[Mention] | None = None) -> bool:
    """Does ``text`` mention the finding (non-negated name/alias/code, or a key feature term)?"""
    vocab = vocab or default_vocabulary()
    mentions = vocab.mentions(text) if mentions is None else mentions
    if any(entry_id in m.entry_ids and m.qualifier != "negated" for m in mentions):
        return True
    pattern = _key_term_pattern(entry_id)
    return bool(pattern and pattern.search(_folded(text)))


def asserted_findings(text: str, vocab: Vocabulary | None = None) -> list[tuple[str, ...]]:
    """Entry-id groups of every non-negated finding mention in ``text`` (ambiguous terms give >1 id)."""
    vocab = vocab or default_vocabulary()
    return [m.entry_ids for m in vocab.mentions(text) if m.qualifier != "negated"]


def _allowed(ids: Iterable[str], context: Iterable[str], vocab: Vocabulary) -> set[str]:
    allowed = set(ids)
    for text in context:
        for mention in vocab.mentions(str(getattr(text, "text", text))):
            allowed.update(mention.entry_ids)
    return allowed


@lru_cache(maxsize=1024)
def implied_findings(entry_id: str) -> frozenset[str]:
    """Findings an entry's own waveform features name (e.g. ST elevation and Q waves for an inferior
    MI): describing the entry may mention them without asserting an absent finding."""
    vocab = default_vocabulary()
    entry = vocab.entries.get(entry_id)
    if entry is None:
        return frozenset()
    return frozenset(i for bullet in entry.waveform_features for m in vocab.mentions(bullet)
                     if m.qualifier != "negated" for i in m.entry_ids)


def check_caption(caption: str, findings: Iterable[Any], context: Iterable[Any] = (), *,
                  implied: bool = True, vocab: Vocabulary | None = None) -> CaptionCheck:
    """Faithfulness report: every input finding mentioned, no absent finding asserted.

    ``findings``: Finding objects, dicts with "id", or entry ids. Besides the input findings, a
    caption may assert the findings named in ``context`` (texts or passages, e.g. the retrieved
    passages) and, with ``implied`` (default), those the input findings' own waveform features name
    (:func:`implied_findings`). ``implied=False`` and no context is the strict test.
    """
    vocab = vocab or default_vocabulary()
    ids = _finding_ids(findings)
    allowed = _allowed(ids, context, vocab)
    if implied:
        for entry_id in ids:
            allowed |= implied_findings(entry_id)
    mentions = vocab.mentions(caption)
    mentioned = [i for i in ids if mentions_finding(caption, i, vocab, mentions)]
    unsupported: list[str] = []
    negated: list[str] = []
    for mention in mentions:
        if mention.qualifier == "negated":
            negated.extend(i for i in mention.entry_ids if i not in negated)
        elif not allowed.intersection(mention.entry_ids):
            unsupported.extend(i for i in mention.entry_ids if i not in unsupported)
    missing = [i for i in ids if i not in mentioned]
    return CaptionCheck(not missing and not unsupported, mentioned, missing, unsupported, negated)


def split_sentences(text: str) -> list[str]:
    """Sentences of a generated text; a line break also ends a sentence."""
    pieces = []
    for line in text.splitlines():
        pieces += [s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip()]
    return pieces


def trim_to_sentences(text: str, max_sentences: int = MAX_SENTENCES) -> str:
    """Keep the first ``max_sentences`` complete sentences: a stop rule applied after decoding.

    A cut-off trailing fragment (generation stopped at the token limit) is dropped; surrounding
    quotes are removed. An unfinished single sentence is kept, for the validator to reject.
    """
    sentences = split_sentences(text.strip().strip('"'))
    complete = [s for s in sentences if s[-1] in ".!?"]
    if sentences and sentences[-1][-1] not in ".!?" and complete:
        sentences = sentences[:-1]
    return " ".join(sentences[:max_sentences])


def validate_description(text: str, entry_id: str, passages: Sequence[Any] = (), *,
                         vocab: Vocabulary | None = None, max_chars: int = MAX_CHARS,
                         max_sentences: int = MAX_SENTENCES, min_chars: int = MIN_CHARS,
                         features: Sequence[str] | None = None) -> Check:
    """Check a generated description of ``entry_id`` against the rules in the module docstring.

    ``features``: the bullets the model was asked to rewrite; when given, its words and abbreviations must
    come from them (not merely from some passage), since rephrasing them was the whole task.
    """
    vocab = vocab or default_vocabulary()
    reasons: list[str] = []
    cleaned = trim_to_sentences(text or "", max_sentences)
    if len(cleaned) < min_chars:
        return Check(False, [f"too short ({len(cleaned)} chars < {min_chars})"], cleaned)
    for pattern, label in _GARBAGE:
        found = pattern.search(cleaned)
        if found:
            reasons.append(f"prompt-format garbage ({label}: {found.group(0)[:30]!r})")
            break
    if cleaned[-1] not in ".!?":
        reasons.append("unfinished sentence (cut off at the token limit)")
    if len(cleaned) > max_chars:
        reasons.append(f"too long ({len(cleaned)} chars > {max_chars})")
    sentences = split_sentences(cleaned)
    if len({s.lower() for s in sentences}) < len(sentences):
        reasons.append("repeated sentence")
    entry = vocab.entries.get(entry_id)
    if entry is not None:
        name_words = {w.lower() for term in entry_terms(entry) for w in re.findall(r"[\w′'-]+", term)}
        content = [w for w in re.findall(r"[\w′'-]+", cleaned.lower()) if w not in name_words and w not in _STOP]
        if len(content) < 3:
            reasons.append("no content beyond the finding's name")
    words = re.findall(r"[\w′']+", cleaned.lower())
    grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    if len(set(grams)) < len(grams) or (len(words) >= 12 and len(set(words)) / len(words) < 0.5):
        reasons.append("repetition loop")
    source_text = " ".join(str(getattr(p, "text", p)) for p in passages)
    if passages:
        numbers = set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?", cleaned)) - _LEAD_NUMBERS
        unsupported_numbers = sorted(n for n in numbers if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])",
                                                                        source_text))
        if unsupported_numbers:
            reasons.append(f"numbers not in the passages: {', '.join(unsupported_numbers)}")
    grounding = list(passages) or (entry_passages(entry) if entry is not None else [])
    source = list(features) if features else grounding
    where = "the features" if features else "the passages"
    if source:
        novel = novel_words(cleaned, source, entry)
        if novel:
            reasons.append(f"words not in {where}: {', '.join(novel[:6])}")
        new_terms = novel_abbreviations(cleaned, source, entry)
        if new_terms:
            reasons.append(f"abbreviations not in {where}: {', '.join(new_terms)}")
        repeated = repeated_words(cleaned, [*source, *(entry_terms(entry) if entry else [])])
        if repeated:
            reasons.append(f"repeats {', '.join(repeated)} more often than {where} do")
    mentions = vocab.mentions(cleaned)
    if any(entry_id in m.entry_ids and m.qualifier == "negated" for m in mentions):
        reasons.append(f"negates the finding {entry_id!r} it describes")
    if not mentions_finding(cleaned, entry_id, vocab, mentions):
        reasons.append(f"does not mention the finding {entry_id!r}")
    allowed = _allowed([entry_id], passages, vocab)
    absent = sorted({i for ids in asserted_findings(cleaned, vocab) if not allowed.intersection(ids) for i in ids})
    if absent:
        reasons.append(f"asserts findings absent from the input and passages: {', '.join(absent)}")
    if grounding:
        reasons += claim_problems(cleaned, grounding, entry)
    return Check(not reasons, reasons, cleaned)


def novel_abbreviations(text: str, passages: Sequence[Any], entry: KnowledgeEntry | None = None) -> list[str]:
    """Upper-case terms of ``text`` ("QT", "QRS", "LQT2", "AV") absent from the passages and the finding's
    names; leads are checked by :mod:`cqa.claims`. Short terms carry most of an ECG sentence's content."""
    source = " ".join(str(getattr(p, "text", p)) for p in passages)
    names = " ".join(entry_terms(entry)) if entry else ""
    found = []
    for term in re.findall(r"(?<![\w′'])[A-Z][A-Za-z0-9]*[A-Z0-9](?![\w′'])", text):
        if _LEAD_WORD.match(term) or term in found:
            continue
        if not re.search(rf"(?<![\w′']){re.escape(term)}(?![A-Za-z])", f"{source} {names}"):
            found.append(term)
    return found


def repeated_words(text: str, passages: Sequence[Any]) -> list[str]:
    """Content words (>= 5 letters) the text uses more than once and more often than the passages: the
    small model's way of filling a sentence ("broad-based in LQT1, broad-based in LQT2")."""
    source = " ".join(str(getattr(p, "text", p)) for p in passages).lower()
    counts: dict[str, int] = {}
    for word in re.findall(r"[a-z][a-z′'-]{4,}", text.lower()):
        if word not in _CONNECTIVES:
            counts[word] = counts.get(word, 0) + 1
    return [f"{word!r}" for word, n in counts.items()
            if n > 1 and n > len(re.findall(rf"(?<![a-z]){re.escape(word)}(?![a-z])", source))]


def novel_words(text: str, passages: Sequence[Any], entry: KnowledgeEntry | None = None) -> list[str]:
    """Content words of ``text`` (>= 4 letters) that no passage word shares its first five letters with,
    other than connectives and the finding's own name words: what a rewrite added rather than rephrased."""
    source = " ".join(str(getattr(p, "text", p)) for p in passages).lower()
    stems = {w[:_STEM] for w in re.findall(r"[a-z]+", source)}
    names = {w.lower() for term in (entry_terms(entry) if entry else []) for w in re.findall(r"[A-Za-z]+", term)}
    novel: list[str] = []
    for word in re.findall(r"[A-Za-z]+", text):
        lower = word.lower()
        if len(lower) < 4 or lower in _CONNECTIVES or lower in _STOP or lower in names or _WIDTH_WORD.match(lower):
            continue
        if lower[:_STEM] not in stems and word not in novel:
            novel.append(word)
    return novel


def grounded_description(entry: KnowledgeEntry, max_bullets: int = MAX_BULLETS) -> str:
    """The LLM-free description: the entry's first waveform-feature bullets (authors order them by
    importance), joined deterministically. Feature terms that are findings of their own (the "ST
    elevation" of an infarction) are implied by the entry, see :func:`implied_findings`."""
    bullets = [b.rstrip(" .;") for b in entry.waveform_features[:max_bullets]]
    return "; ".join(bullets) + "."
