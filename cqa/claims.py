"""Lead, territory and QRS-width claims of a description, checked against the grounding passages.

Why: a small LLM copies the passages' vocabulary but recombines it, e.g. "inferior MI in II, III and aVL"
(aVL is a lateral lead; it appears in the passages only as the site of reciprocal depression), or gives a
premature atrial contraction a "wide" QRS (a supraventricular beat is narrow unless aberrantly conducted;
"wide" appears in the passages only for the PVC it is confused with). Name and number checks cannot see
either error, so :func:`claim_problems` reads three kinds of claims and checks each one:

- **lead lists** ("II, III and aVF", "V1–V3", "I, aVL"): the leads must lie inside one lead group of the
  passages (leads listed together, or a territory the passages name, e.g. "inferior leads"); when the
  sentence names a territory, leads partly inside and partly outside it are an anatomical mix (inferior =
  II, III, aVF; lateral = I, aVL, V5–V6; anterior = V1–V4; septal = V1–V2; ...), unless the passages give
  that very group or the list is the reciprocal (mirror) change; and an ST or T direction stated for the
  leads (elevation/depression, inverted/upright) must not be the opposite of what the passages say there;
  the words stated for the leads must share at least one feature word with what the passages state there
  ("ST depression ... in V1–V3" when the passages give V1–V3 only "deep S waves" is a mix-up), and a
  number stated for them must be one the passages give there ("below 1.0 mV in every limb lead" when
  1.0 mV is the precordial threshold); two lead lists in a row ("in V1–V2 in V1–V6") are a mix-up too;
- **territories** ("lateral leads", "anterior wall"): the passages must name the territory or give a
  lead group inside it, with the same ST/T direction rule;
- **QRS (and P/R/S/T-wave) width** (wide/broad/narrow; "QRS ≥ 120 ms"): the passages must say the same
  width of the same wave; for supraventricular findings a wide QRS must also be qualified in the
  description (aberrant conduction, bundle branch block, pre-excitation).

Support is only read from the passages' own sections: "Common confusions" describes *other* findings (the
PVC's wide QRS in the PAC entry) and never grounds a claim about this one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from corpora.knowledge import KnowledgeEntry

LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")
PRECORDIAL = tuple(f"V{i}" for i in range(1, 7))
POSTERIOR_LEADS = ("V7", "V8", "V9")
RIGHT_SIDED = tuple(f"V{i}R" for i in range(1, 7))
LEAD_ORDER = (*LIMB, *PRECORDIAL, *POSTERIOR_LEADS, *RIGHT_SIDED)

_INFERIOR = frozenset({"II", "III", "aVF"})
_LATERAL = frozenset({"I", "aVL", "V5", "V6"})
_ANTERIOR = frozenset({"V1", "V2", "V3", "V4"})
_POSTERIOR = frozenset({"V1", "V2", "V3", *POSTERIOR_LEADS})  # V1-V3 see the posterior wall as a mirror image
# Territory -> the leads that face it. Longest names first: "high lateral" before "lateral".
TERRITORIES: dict[str, frozenset[str]] = {
    "inferoposterolateral": _INFERIOR | _POSTERIOR | _LATERAL,
    "inferoposterior": _INFERIOR | _POSTERIOR,
    "inferolateral": _INFERIOR | _LATERAL,
    "posterolateral": _POSTERIOR | _LATERAL,
    "anterolateral": frozenset({"V3", "V4", "V5", "V6", "I", "aVL"}),
    "anteroseptal": _ANTERIOR,
    "high lateral": frozenset({"I", "aVL"}),
    "low lateral": frozenset({"V5", "V6"}),
    "right precordial": frozenset({"V1", "V2", "V3", "V4", *RIGHT_SIDED}),
    "left precordial": frozenset({"V3", "V4", "V5", "V6"}),
    "mid-precordial": frozenset({"V2", "V3", "V4"}),
    "right ventricular": frozenset({"V1", *RIGHT_SIDED}),
    "inferior": _INFERIOR,
    "lateral": _LATERAL,
    "anterior": _ANTERIOR,
    "septal": frozenset({"V1", "V2"}),
    "posterior": _POSTERIOR,
    "precordial": frozenset(PRECORDIAL),
    "chest": frozenset(PRECORDIAL),
    "limb": frozenset(LIMB),
}
_TERRITORY_RE = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(t).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]*")
                              for t in TERRITORIES) + r")(?![\w-])(?P<after>\s+[\w′']+)?", re.I)
# A territory word that names something else: "left anterior fascicle", "anterior descending artery",
# "inferior axis", "septal q waves", "right ventricular hypertrophy" (a chamber, not the right-sided leads).
_NOT_TERRITORY_AFTER = re.compile(
    r"^\s+(?:fascic\w*|hemiblock\w*|descending|axis|interventricular|papillary|[qr]\b|[qr][′']|depolari\w*|"
    r"activation|forces?|vectors?|hypertroph\w*|overload|conduction|outflow|enlargement|dilat\w*|strain|"
    r"pre-?excitation|pathway|accessory)", re.I)

_LEAD = r"(?:(?i:aV[RLF])|(?i:V)(?:[1-9]R?)|III|II|I)"
_LEAD_RE = re.compile(rf"(?<![\w′'])({_LEAD})(?![\w′'])")
_RANGE_SEP = re.compile(r"^\s*(?:[–—-]|to|through)\s*$", re.I)
_LIST_SEP = re.compile(r"^(?:\s|,|and|or|&|/|\(|\)|leads?)*$", re.I)
_ROMAN_CONTEXT = re.compile(r"(?:type|mobitz|class|grade|phase|degree|stage|lqt|brugada|classes|types)\s*$", re.I)
_MIRRORED = re.compile(r"\brevers\w*|\bmirror\w*", re.I)
_EXCLUDING = re.compile(r"\b(?:except|excluding|other than|apart from|but not)\s+(?:in\s+)?(?:leads?\s+)?$", re.I)
_LEAD_CUE = re.compile(r"(?:\blead|\bin|\bof|\bat|\bacross|\bfrom|:)\s*$", re.I)

_RECIPROCAL = re.compile(r"\b(?:reciproc\w*|mirror\w*|opposite|discordant)\b", re.I)
_NEGATION = re.compile(r"\b(?:no|not|without|absent|never|lack\w*|rather than|unlike)\b", re.I)
_SEGMENT_SHIFT = re.compile(r"\b(?P<w>elevat\w*|raised|coved|depress\w*)", re.I)
_PR_SUBJECT = re.compile(r"\bPR(?:[- ]segment)?\s*$")  # "PR depression": the PR, not the ST, segment
_T_DIRECTIONS = {
    "T-wave inversion": re.compile(r"\binver\w*|\bnegative\b", re.I),
    "upright T waves": re.compile(r"\bupright\b|\bpositive\b|\bpeaked\b|\bhyperacute\b", re.I),
}
_OPPOSITE = {"ST elevation": "ST depression", "ST depression": "ST elevation",
             "PR elevation": "PR depression", "PR depression": "PR elevation",
             "T-wave inversion": "upright T waves", "upright T waves": "T-wave inversion"}

# Words that carry no feature of their own (window words checked for lead/feature alignment).
_PLAIN = frozenset("""
    with from that which while their there these those each every both also often usually than when where into
    shows show showing have has having gives seen present leads lead wave waves complex complexes finding phase
    along together followed""".split())
_MORPHOLOGY = re.compile(r"(?<![\w′'])(?=\w*[qrsQRS][qrsQRS])[qrsQRS]{2,4}[′']?(?![\w′'])")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_LOCATED = re.compile(r"\b(?:in|at|on)\s+(?:leads?\s+)?$", re.I)
_STACKED = re.compile(r"^\s*(?:in|at|on)\s+(?:leads?\s+)?$", re.I)
_HEADER = re.compile(r"\A\s*(?P<name>[^\n]+?) — (?P<section>[^:\n]+):\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+(?=[A-Z0-9(\"'])|\n+")
_CONFUSIONS = "common confusions"

_WIDTH_WORDS = {"wide": "wide", "wider": "wide", "broad": "wide", "broader": "wide", "widened": "wide",
                "widening": "wide", "narrow": "narrow", "narrower": "narrow"}
_OBJECT = r"(?P<o>QRS|QS|(?i:complex(?:es)?|beats?|shape|morpholog(?:y|ies))|[PQRSTU][′']?(?![\w′']))"
_WIDTH_FORWARD = re.compile(
    r"(?<![\w-])(?P<w>(?i:wide|wider|broad|broader|widened|narrow|narrower))(?:[-\s,]+[A-Za-z′'-]+?){0,3}?"
    rf"[-\s,]+{_OBJECT}")
_WIDTH_BACKWARD = re.compile(
    r"(?<![\w-])(?P<o>QRS|(?i:complex(?:es)?)|[PQRSTU][′']?[\s-]+(?i:waves?))(?:[\s:,]+(?i:complex(?:es)?|duration|is|are|becomes?|remains?|"
    r"usually|often|typically|stays?|may be|can be|then|not))*[\s:,]+"
    r"(?P<w>(?i:wide|broad|widened|widening|narrow|prolonged))\b")
_WIDEN_VERB = re.compile(r"\b(?i:widen(?:s|ed|ing)?)\s+(?:the\s+)?QRS|\bQRS\s+(?i:widening)|"
                         r"(?i:widening)\s+of\s+the\s+QRS")
_QRS_MS = re.compile(r"\bQRS\b[^.;\n]{0,30}?(?:≥|>=|>|at least|over|more than|above|exceeding|of)?\s*"
                     r"(?P<ms>\d{3})\s*ms", re.I)
_WIDE_QRS_MS = 120
_SV_QUALIFIER = re.compile(r"aberran\w*|bundle branch|pre-?excit\w*|ashman|infranodal|\bpac(?:ed|ing)\b|"
                           r"(?<!supra)ventricular|\bif\b|\bwhen\b", re.I)
_OTHER_INTERVAL = re.compile(r"\bP\S?R\b|\bQTc?\b|\bR\S?R\b|\binterval|\bP\s*wave", re.I)
_SUPRAVENTRICULAR = re.compile(r"\b(?:atrial|supraventricular|junctional|sinus)\b", re.I)
_PACED = re.compile(r"\bpac(?:ed|ing|emaker)\b", re.I)


@dataclass(frozen=True)
class Anchor:
    """A lead list ("II, III and aVF") or a territory ("inferior leads") in one sentence, with the text that
    states what happens there."""

    leads: frozenset[str]
    start: int
    end: int
    territory: str | None = None  # None: an explicit lead list
    window: str = ""  # the feature text: before "in LEADS", or after "LEADS:" / "LEADS show"
    prefix: str = ""  # the sentence text before the anchor, back to the previous anchor
    after: bool = False  # the window follows the anchor

    def clause(self, separators: str = r"[,;]") -> str:
        """The window's clause nearest the anchor (its last clause before it, its first one after it)."""
        parts = re.split(separators, self.window)
        return parts[0] if self.after else parts[-1]


@dataclass
class Grounding:
    """What the passages say, per claim kind: lead groups with their feature windows, territory mentions,
    wave widths; all from sentences outside "Common confusions"."""

    groups: list[tuple[frozenset[str], str]] = field(default_factory=list)
    listed: set[int] = field(default_factory=set)  # indexes of groups that are explicit lead lists
    territories: dict[str, list[str]] = field(default_factory=dict)
    widths: set[tuple[str, str]] = field(default_factory=set)
    aberrant: bool = False

    def lead_groups(self) -> list[frozenset[str]]:
        return list(dict.fromkeys(g for g, _ in self.groups))


def fmt_leads(leads: Iterable[str]) -> str:
    """Leads in the standard order, comma-joined ("II, III, aVF")."""
    order = {lead: i for i, lead in enumerate(LEAD_ORDER)}
    return ", ".join(sorted(leads, key=lambda lead: order.get(lead, 99)))


def _canonical(token: str) -> str:
    if token.upper().startswith("AV"):
        return "aV" + token[2].upper()
    if token[0] in "vV":
        return token.upper()
    return token


def _expand(first: str, last: str) -> list[str]:
    """V1–V3 -> V1, V2, V3 (V-leads, right-sided alike); a dash between limb leads is a plain list."""
    a, b = re.fullmatch(r"V(\d)(R?)", first), re.fullmatch(r"V(\d)(R?)", last)
    if a and b and a.group(2) == b.group(2) and int(a.group(1)) <= int(b.group(1)):
        return [f"V{i}{a.group(2)}" for i in range(int(a.group(1)), int(b.group(1)) + 1)]
    return [first, last]


def _lead_lists(sentence: str) -> list[Anchor]:
    """The explicit lead lists of one sentence ("V1–V3", "II, III and aVF"), ranges expanded."""
    tokens: list[tuple[str, int, int]] = []
    for match in _LEAD_RE.finditer(sentence):
        lead, start, end = _canonical(match.group(1)), match.start(), match.end()
        if lead in ("I", "II", "III") and _ROMAN_CONTEXT.search(sentence[:start]):
            continue
        tokens.append((lead, start, end))
        tail = re.match(r"\s*[–—-]\s*(\d)(?![\w.])", sentence[end:])
        if tail and lead.startswith("V"):  # "V1–3"
            tokens.append((f"V{tail.group(1)}", end + tail.start(1), end + tail.end()))
    groups: list[list[tuple[str, int, int, bool]]] = []
    for lead, start, end in tokens:
        between = sentence[groups[-1][-1][2]:start] if groups else ""
        is_range = bool(groups) and bool(_RANGE_SEP.match(between))
        if groups and (is_range or _LIST_SEP.match(between)):
            groups[-1].append((lead, start, end, is_range))
        else:
            groups.append([(lead, start, end, False)])
    lists: list[Anchor] = []
    for group in groups:
        leads: list[str] = []
        for lead, _, _, is_range in group:
            if is_range and leads:
                leads[-1:] = _expand(leads[-1], lead)
            else:
                leads.append(lead)
        start, end = group[0][1], group[-1][2]
        if leads == ["I"] and not _LEAD_CUE.search(sentence[:start]) and not sentence[end:].lstrip().startswith(":"):
            continue  # a lone "I" is a pronoun or a numeral unless something says it is a lead
        if _EXCLUDING.search(sentence[:start]):
            continue  # "most leads except aVR and V1": the leads the statement is NOT about
        lists.append(Anchor(frozenset(leads), start, end))
    return lists


def _territories(sentence: str) -> list[Anchor]:
    """Every territory word used as a location ("inferior leads", "lateral wall", "anterior MI")."""
    found = []
    for match in _TERRITORY_RE.finditer(sentence):
        if match.group("after") and _NOT_TERRITORY_AFTER.match(match.group("after")):
            continue
        name = re.sub(r"[\s-]+", " ", match.group(1).lower()).replace("mid precordial", "mid-precordial")
        found.append(Anchor(TERRITORIES[name], match.start(1), match.end(1), name))
    return found


def anchors(sentence: str) -> list[Anchor]:
    """Lead lists and territories of one sentence, in order, each with its feature window: "ST elevation
    in LEADS" puts the feature before the anchor, "LEADS: ST elevation" / "LEADS show ..." after it."""
    items = sorted([*_lead_lists(sentence), *_territories(sentence)], key=lambda a: a.start)
    out = []
    for item in items:
        # a lead list's neighbours are the other lead lists ("ST elevation ... than in the inferior leads in
        # II, III": the feature text runs across the territory word); a territory's are all anchors
        neighbours = [a for a in items if a is not item and (item.territory or a.territory is None)]
        previous_end = max((a.end for a in neighbours if a.end <= item.start), default=0)
        next_start = min((a.start for a in neighbours if a.start >= item.end), default=len(sentence))
        before = sentence[previous_end:item.start]
        after = sentence[item.end:next_start]
        feature_after = bool(re.match(r"\s*(?:\)|leads?)?\s*(?::|shows?\b|ha(?:ve|s)\b|displays?\b|records?\b|"
                                      r"with\b|[–—-]\s)", after, re.I)) or not re.search(r"[A-Za-z]", before)
        out.append(Anchor(item.leads, item.start, item.end, item.territory, after if feature_after else before,
                          before, feature_after))
    return out


def widths(text: str) -> set[tuple[str, str]]:
    """(width, wave) claims of a text: ("wide", "QRS"), ("narrow", "T"), ...; negated widths flip."""
    claims: set[tuple[str, str]] = set()

    def wave(obj: str) -> str:
        obj = obj.rstrip("′'")
        return obj if obj in ("P", "Q", "R", "S", "T", "U") else "Q" if obj == "QS" else "QRS"

    def width(word: str, context: str) -> str:
        value = _WIDTH_WORDS.get(word.lower(), "wide" if word.lower() == "prolonged" else "narrow")
        if re.search(r"\b(?:not|no|without|never)\b(?:\s+\w+)?\s*$", context, re.I):
            value = "narrow" if value == "wide" else "wide"
        return value

    for match in _WIDTH_FORWARD.finditer(text):
        claims.add((width(match.group("w"), text[max(0, match.start() - 20):match.start()]), wave(match.group("o"))))
    for match in _WIDTH_BACKWARD.finditer(text):
        negated = re.search(r"\bnot\b", match.group(0), re.I)
        value = width(match.group("w"), "not" if negated else "")
        claims.add((value, wave(match.group("o").split()[0].split("-")[0])))
    if _WIDEN_VERB.search(text):
        claims.add(("wide", "QRS"))
    for match in _QRS_MS.finditer(text):
        between = text[match.start():match.start("ms")]
        if (int(match.group("ms")) >= _WIDE_QRS_MS and not _OTHER_INTERVAL.search(between[3:])
                and not re.search(r"(?:\bunder|\bbelow|\bless than|<|≤)\s*$", between, re.I)):
            claims.add(("wide", "QRS"))
    return claims


def _directions(window: str) -> set[str]:
    """Segment shifts (ST or PR elevation/depression) and T-wave directions a window states."""
    if _NEGATION.search(window):
        return set()  # "no ST elevation in V1": not a claim about the direction there
    found = {name for name, pattern in _T_DIRECTIONS.items() if pattern.search(window)}
    for match in _SEGMENT_SHIFT.finditer(window):
        segment = "PR" if _PR_SUBJECT.search(window[:match.start()]) else "ST"
        shift = "depression" if match.group("w").lower().startswith("depress") else "elevation"
        found.add(f"{segment} {shift}")
    return found


def split_units(text: str) -> list[str]:
    """Sentences and bullet lines of a text."""
    return [u.strip(" -•\t") for u in _SENTENCE.split(text) if u.strip(" -•\t")]


def passage_section(passage: Any) -> tuple[str, str]:
    """(section, body) of a passage: the "Name — Section:" header the chunker writes, else ``.section``."""
    text = str(getattr(passage, "text", passage))
    header = _HEADER.match(text)
    if header:
        return header.group("section").strip().lower(), text[header.end():]
    return str(getattr(passage, "section", "") or "").strip().lower(), text


def entry_passages(entry: KnowledgeEntry) -> list[str]:
    """An entry's sections rendered as passages (the grounding when no retrieved passages are given)."""
    return [f"{entry.name} — {name.capitalize()}:\n{text}" for name, text in entry.sections.items()]


def grounding(passages: Sequence[Any]) -> Grounding:
    """Index the passages' own (non-"Common confusions") sentences for :func:`claim_problems`."""
    result = Grounding()
    for passage in passages:
        section, body = passage_section(passage)
        if section == _CONFUSIONS:
            continue
        for unit in split_units(body):
            for anchor in anchors(unit):
                if anchor.territory is None:
                    result.listed.add(len(result.groups))
                result.groups.append((anchor.leads, anchor.window))
                if anchor.territory:
                    result.territories.setdefault(anchor.territory, []).append(anchor.window)
            result.widths |= widths(unit)
            result.aberrant |= bool(re.search(r"aberran", unit, re.I))
    return result


@lru_cache(maxsize=512)
def is_supraventricular(name: str, category: str) -> bool:
    """Rhythm findings whose beats start above the ventricles (atrial, junctional, sinus): narrow QRS."""
    return category == "rhythm" and bool(_SUPRAVENTRICULAR.search(name)) and not _PACED.search(name)


def claim_problems(text: str, passages: Sequence[Any], entry: KnowledgeEntry | None = None) -> list[str]:
    """Reasons why the lead, territory and width claims of ``text`` are not supported (empty: all fine)."""
    ground = grounding(passages)
    names = frozenset(w.lower() for term in ([entry.name, *entry.aliases] if entry else [])
                      for w in re.findall(r"[A-Za-z]+", term))
    problems: list[str] = []
    for sentence in split_units(text):
        problems += _anchor_problems(sentence, ground, names)
    problems += _width_problems(text, ground, entry)
    return list(dict.fromkeys(problems))


def _supporting(leads: frozenset[str], ground: Grounding) -> list[tuple[frozenset[str], str]]:
    """Passage groups that contain ``leads``: the explicit lead lists when any does, else the territories
    ("posterior" covers V1–V3 as mirror leads, but what the passages say *there* is in their V1–V3 list)."""
    found = [(i, group, window) for i, (group, window) in enumerate(ground.groups) if leads <= group]
    listed = [(group, window) for i, group, window in found if i in ground.listed]
    return listed or [(group, window) for _, group, window in found]


def _direction_problem(subject: str, claimed: set[str], windows: Iterable[str]) -> str | None:
    given: set[str] = set()
    for window in windows:
        given |= _directions(window)
    for direction in sorted(claimed):
        if direction not in given and _OPPOSITE[direction] in given:
            return f"{direction} claimed in {subject}, but the passages give {_OPPOSITE[direction]} there"
    return None


def _feature_stems(text: str, exclude: frozenset[str] = frozenset()) -> set[str]:
    """Five-letter stems of the feature words of a window ("ST depression" -> {"depre"}), plus wave
    morphology codes as written ("rsR′", "qR", "QS")."""
    stems = {w[:5] for w in re.findall(r"[a-z′']{4,}", text.lower()) if w not in _PLAIN and w not in exclude}
    return stems | set(_MORPHOLOGY.findall(text))


def _stated(anchor: Anchor, exclude: frozenset[str]) -> set[str]:
    """The feature words a description states for one anchor: those of its window's nearest clause ("…, with
    rsR′ in V1" -> {"rsR′"}); none for a bare location ("…, seen in leads II, III and aVF")."""
    return _feature_stems(anchor.clause(), exclude)


def _anchor_problems(sentence: str, ground: Grounding, names: frozenset[str] = frozenset()) -> list[str]:
    problems = []
    items = anchors(sentence)
    groups = ground.lead_groups()
    for i, item in enumerate(items):
        if item.territory:
            inside = [(g, w) for g, w in ground.groups if g <= item.leads and (len(g) >= 2 or g == item.leads)]
            named = ground.territories.get(item.territory, [])
            if not named and not inside:
                problems.append(f"the {item.territory} territory is not supported by the passages")
                continue
            problem = _direction_problem(f"the {item.territory} leads", _directions(item.window),
                                         [*named, *(w for _, w in inside)])
            if problem:
                problems.append(problem)
            continue
        leads = fmt_leads(item.leads)
        support = _supporting(item.leads, ground)
        if not support:
            given = "; ".join(fmt_leads(g) for g in groups[:8]) or "no leads"
            problems.append(f"leads {leads} are not a lead group of the passages (they give: {given})")
        governing = [a for a in items[:i] if a.territory]
        if governing and not support and not _RECIPROCAL.search(item.prefix):
            name, expected = governing[-1].territory, governing[-1].leads
            if item.leads & expected and item.leads - expected:
                problems.append(f"leads {leads} mix the {name} territory ({fmt_leads(expected)}) with "
                                f"{fmt_leads(item.leads - expected)}")
        if support:
            clause = item.clause()
            claimed = set() if _MIRRORED.search(clause) else _directions(clause)  # "seen reversed in V1–V3"
            problem = _direction_problem(leads, claimed, (w for _, w in support))
            if problem:
                problems.append(problem)
            stated = _stated(item, names)
            given = "; ".join(dict.fromkeys(" ".join(w.split()) for _, w in support if w.strip()))[:120]
            if stated and not any(stated & _feature_stems(w) for _, w in support):
                problems.append(f"the features stated for {leads} are not what the passages give there ({given})")
            numbers = set(_NUMBER.findall(item.clause(r"[,;]|\band\b|\bwith\b")))
            foreign = sorted(numbers - {n for _, w in support for n in _NUMBER.findall(w)})
            if foreign:
                problems.append(f"{', '.join(foreign)} stated for {leads}, but the passages give other values there "
                                f"({given})")
        previous = [a for a in items[:i] if a.territory is None]
        if (previous and _STACKED.match(sentence[previous[-1].end:item.start])
                and _LOCATED.search(sentence[:previous[-1].start])):
            problems.append(f"lead lists {fmt_leads(previous[-1].leads)} and {leads} follow each other with no "
                            "feature between them")
    return problems


def _width_problems(text: str, ground: Grounding, entry: KnowledgeEntry | None) -> list[str]:
    problems = []
    supraventricular = entry is not None and is_supraventricular(entry.name, entry.category)
    for sentence in split_units(text):
        for width, wave in sorted(widths(sentence)):
            label = f"{width} {wave}" if wave == "QRS" else f"{width} {wave} wave"
            qualified = bool(_SV_QUALIFIER.search(sentence))
            if wave == "QRS" and width == "wide" and supraventricular and not qualified:
                problems.append("claims a wide QRS for a supraventricular finding, whose QRS is narrow unless "
                                "aberrantly conducted (the description does not say aberrant)")
                continue
            supported = (width, wave) in ground.widths or (
                wave == "QRS" and width == "wide" and qualified and ground.aberrant)
            if not supported:
                problems.append(f"claims a {label}, which the passages do not give"
                                + (f" (they give a {'/'.join(w for w, o in sorted(ground.widths) if o == wave)}"
                                   f" {wave})" if any(o == wave for _, o in ground.widths) else ""))
    return problems
