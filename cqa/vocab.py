"""The vocabulary of assertable findings: every knowledge entry's name, aliases and codes.

Used both ways round: ``normalize`` maps a plain condition name or abbreviation to entry ids, and
``validate`` finds which findings a generated text asserts (mentions that are not negated).
Mentions are matched as whole words, longest first, so "incomplete right bundle branch block"
is one mention of IRBBB and not also one of RBBB. All-capital abbreviations ("AF", "SR") match
case-sensitively, everything else case-insensitively, so ordinary words are not read as codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from corpora.knowledge import KnowledgeEntry, load_entries

# Cues, in the clause before a mention, that the finding is NOT asserted (or only contrasted).
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|absence of|absent|negative for|free of|rule[sd]? out|excluded?|excluding|unlike|"
    r"rather than|instead of|versus|vs\.?|mimic(?:s|king)?|confused with|differs? from|distinguish(?:ed|es)? from|"
    r"differential|unless|no longer|resolved|other than|as opposed to|in contrast to|not to be confused with)\b",
    re.I,
)
# Cues after a mention, in the same clause, that it is absent.
_NEGATION_AFTER = re.compile(
    r"\b(?:no longer present|now absent|(?:has |have )?resolved|not present|absent|excluded|ruled out|not seen)\b",
    re.I,
)
# Hedge cues before a mention: the finding is only possible. Checked before negation, so
# "cannot rule out X" reads as possible X rather than "rule out" negating it.
_HEDGE_BEFORE = re.compile(
    r"\b(?:possible|possibly|probable|probably|consider|cannot rule out|can ?not rule out|cannot exclude|"
    r"can ?not be excluded|borderline|suggests?|suggestive of|suspect(?:ed)?|questionable|may be|might be|"
    r"could be|likely|r/o)\b|\?",
    re.I,
)
_HEDGE_AFTER = re.compile(
    r"\b(?:borderline|cannot be (?:excluded|ruled out)|(?:is |are )?(?:possible|probable|suspected))\b", re.I
)
NEGATION_WINDOW_WORDS = 3
# Clause boundaries: a qualifier does not reach across these.
_CLAUSE_BOUNDARY = re.compile(r"[,;.:()\n]|\s[-–—]\s|\bwith\b|\bbut\b|\band\b|\bwhile\b|\bwhereas\b", re.I)


@dataclass(frozen=True)
class Mention:
    """One occurrence of a finding term in a text, with how it is qualified there."""

    entry_ids: tuple[str, ...]
    term: str
    start: int
    end: int
    qualifier: str  # "present" | "possible" | "negated"


_TOKEN = re.compile(r"[\w′']+")
_JOINER = re.compile(r"[\s\-–/()]*")  # what may separate the words of one multi-word term


def _key(term: str) -> str:
    """Case-, spacing- and punctuation-insensitive key ("ST-T  changes" == "st t changes")."""
    return " ".join(_TOKEN.findall(term.lower()))


def _is_abbreviation(term: str) -> bool:
    letters = [c for c in term if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters) and len(term) <= 8


def entry_terms(entry: KnowledgeEntry) -> list[str]:
    """The surface forms that name an entry: its name, aliases and SCP codes (codes of >= 2 chars)."""
    terms = [entry.name, *entry.aliases]
    terms += [code for code in entry.scp_codes if len(code) >= 2 and not code.isdigit()]
    seen: dict[str, str] = {}
    for term in terms:
        term = term.strip()
        if term and term.lower() not in seen:
            seen[term.lower()] = term
    return list(seen.values())


def display_name(entry: KnowledgeEntry) -> str:
    """The entry name as it reads mid-sentence: first letter lower-cased unless it starts an acronym."""
    name = entry.name.strip()
    if len(name) > 1 and name[1].isupper():
        return name
    return name[:1].lower() + name[1:]


class Vocabulary:
    """Term -> entry-id lookup and a mention finder over a set of knowledge entries.

    Mentions are found by a longest-first scan over word tokens with dictionary lookups (fast
    enough to check ~10,000 captions a minute); abbreviations match case-sensitively.
    """

    def __init__(self, entries: Iterable[KnowledgeEntry]):
        self.entries: dict[str, KnowledgeEntry] = {e.id: e for e in entries}
        self._exact: dict[str, set[str]] = {}  # abbreviation tokens joined by " " (case-sensitive) -> ids
        self._folded: dict[str, set[str]] = {}  # any term's key -> ids (lookups)
        self._prose: dict[str, set[str]] = {}  # non-abbreviation term keys -> ids (mentions in prose)
        self._max_words = 1
        for entry in self.entries.values():
            for term in entry_terms(entry):
                key = _key(term)
                if not key:
                    continue
                self._max_words = max(self._max_words, len(key.split()))
                if _is_abbreviation(term):
                    self._exact.setdefault(" ".join(_TOKEN.findall(term)), set()).add(entry.id)
                else:
                    self._prose.setdefault(key, set()).add(entry.id)
                self._folded.setdefault(key, set()).add(entry.id)
            self._folded.setdefault(_key(entry.id), set()).add(entry.id)
            self._folded.setdefault(entry.id.lower(), set()).add(entry.id)
        self._first_words = {k.split()[0].lower() for k in (*self._exact, *self._prose)}

    def lookup(self, term: str) -> list[str]:
        """Entry ids a plain condition name, abbreviation, code or id refers to (case-insensitive)."""
        ids = (self._exact.get(" ".join(_TOKEN.findall(term))) or self._folded.get(term.strip().lower())
               or self._folded.get(_key(term)) or set())
        return sorted(ids)

    def mentions(self, text: str) -> list[Mention]:
        """Every finding term in ``text`` (longest match wins), qualified as present/possible/negated."""
        tokens = [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]
        found: list[Mention] = []
        i = 0
        while i < len(tokens):
            if tokens[i][0].lower() not in self._first_words:
                i += 1
                continue
            for n in range(min(self._max_words, len(tokens) - i), 0, -1):
                words = tokens[i:i + n]
                exact = " ".join(w for w, _, _ in words)
                ids = self._exact.get(exact) or self._prose.get(exact.lower())
                if ids and (n == 1 or all(_JOINER.fullmatch(text, a[2], b[1]) for a, b in zip(words, words[1:]))):
                    start, end = words[0][1], words[-1][2]
                    found.append(Mention(tuple(sorted(ids)), text[start:end], start, end,
                                         qualify(text, start, end)))
                    i += n
                    break
            else:
                i += 1
        return found


def clause_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """The clause around ``text[start:end]``: from the previous boundary to the next one."""
    left = 0
    for boundary in _CLAUSE_BOUNDARY.finditer(text, 0, start):
        left = boundary.end()
    right_match = _CLAUSE_BOUNDARY.search(text, end)
    right = right_match.start() if right_match else len(text)
    return left, right


def qualify(text: str, start: int, end: int) -> str:
    """How the clause qualifies the mention at ``text[start:end]``: present, possible or negated.

    A negation cue must stand close before the mention (at most ``NEGATION_WINDOW_WORDS`` words in
    between: "no acute atrial fibrillation"), so "no further analysis due to paced rhythm" does not
    negate the rhythm. Hedges reach through the whole clause ("possible ... infarct").
    """
    left, right = clause_bounds(text, start, end)
    before, after = text[left:start], text[end:right]
    if _HEDGE_AFTER.search(after):
        return "possible"
    if _NEGATION_AFTER.search(after):
        return "negated"
    hedge = [m.end() for m in _HEDGE_BEFORE.finditer(before)]
    negation = [m.end() for m in _NEGATION_BEFORE.finditer(before)
                if len(before[m.end():].split()) <= NEGATION_WINDOW_WORDS]
    if hedge and (not negation or max(hedge) >= max(negation)):
        return "possible"
    if negation:
        return "negated"
    if re.search(r"\bor\b", text[left:right], re.I):
        return "possible"
    return "present"


@lru_cache(maxsize=4)
def default_vocabulary(directory: str | None = None) -> Vocabulary:
    """The vocabulary of the built-in knowledge corpus (cached; corpus files are package data)."""
    return Vocabulary(load_entries(directory))
