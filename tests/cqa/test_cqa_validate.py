"""The faithfulness checker and the description validator, on positive and negative cases."""

from __future__ import annotations

import pytest

from corpora.knowledge import load_entries
from cqa.normalize import normalize_labels
from cqa.validate import check_caption, grounded_description, validate_description


def test_check_caption_accepts_a_faithful_caption() -> None:
    findings = normalize_labels(["CRBBB", "SR"]).findings
    caption = ("Sinus rhythm with complete right bundle branch block: QRS 120 ms or longer with an rsR′ "
               "complex in V1; no atrial fibrillation.")
    report = check_caption(caption, findings)
    assert report.ok, report
    assert set(report.mentioned) == {f.id for f in findings}
    assert "atrial_fibrillation" in report.negated  # "no AF" is not an assertion


def test_check_caption_flags_missing_and_absent_findings() -> None:
    findings = normalize_labels(["CRBBB", "SR"]).findings
    report = check_caption("Sinus rhythm with atrial fibrillation.", findings, implied=False)
    assert not report.ok
    assert report.missing == ["crbbb"]
    assert report.unsupported == ["atrial_fibrillation"]


@pytest.mark.parametrize("phrase", [
    "without atrial fibrillation", "unlike atrial fibrillation", "atrial fibrillation has resolved",
    "rather than atrial fibrillation",
])
def test_negated_mentions_are_not_assertions(phrase: str) -> None:
    report = check_caption(f"Sinus rhythm, {phrase}.", ["sinus_rhythm"])
    assert report.ok and report.unsupported == [], report


def test_longest_term_wins_incomplete_is_not_complete_rbbb() -> None:
    irbbb = normalize_labels(["IRBBB"]).ids
    if not irbbb:
        pytest.skip("corpus has no IRBBB entry yet")
    report = check_caption("Incomplete right bundle branch block.", irbbb)
    assert report.ok and report.unsupported == [], report


def test_context_passages_allow_their_findings() -> None:
    text = "Left ventricular hypertrophy with T-wave inversion in V5–V6."
    strict = check_caption(text, ["lvh"], implied=False)
    assert not strict.ok and strict.unsupported
    assert check_caption(text, ["lvh"], implied=False,
                         context=["T-wave inversion may accompany LVH (strain)."]).ok


@pytest.mark.parametrize(("text", "reason"), [
    ("<|im_start|>assistant Complete RBBB has a wide QRS of at least 120 ms.", "garbage"),
    ("Human: describe it. Complete RBBB has a wide QRS of at least 120 ms.", "garbage"),
    ("Complete RBBB has a wide QRS of at least 120 ms and ‹passage› text.", "garbage"),
    ("Sure, here is the answer: complete RBBB has a wide QRS.", "garbage"),
    ("The QRS complex is wide and the T wave is tall in all leads.", "does not mention"),
    ("Complete RBBB has a wide QRS with atrial fibrillation.", "asserts findings absent"),
    ("Complete RBBB.", "too short"),
    ("The QRS is narrow here, so there is no complete RBBB at all.", "negates the finding"),
    ("Complete right bundle branch block. Complete right bundle branch block.", "repeated sentence"),
    ("Complete RBBB has a wide QRS " + "and a long complex " * 30 + "in V1.", "too long"),
    ("Complete RBBB has a wide QRS complex lasting at least one hundred and twenty", "unfinished"),
])
def test_validate_description_rejects(text: str, reason: str) -> None:
    check = validate_description(text, "crbbb")
    assert not check.ok
    assert any(reason in r for r in check.reasons), check.reasons


def test_validate_description_grounds_numbers_and_rejects_loops(make_store) -> None:  # type: ignore[no-untyped-def]
    passages = make_store().search("x", k=1, where={"entry": "crbbb"})  # the entry's real waveform bullets
    ok = validate_description("Complete RBBB widens the QRS to 120 ms or longer, with rsR′ in V1.", "crbbb", passages)
    assert ok.ok, ok.reasons
    invented = validate_description("Complete RBBB widens the QRS to 160 ms, with rsR′ in V1.", "crbbb", passages)
    assert any("numbers not in the passages: 160" in r for r in invented.reasons)
    loop = validate_description("Complete RBBB is a QRS pattern that is not a normal QRS pattern. It is a QRS "
                                "pattern that is not a normal QRS pattern.", "crbbb")
    assert "repetition loop" in loop.reasons
    echo = validate_description("Complete right bundle branch block — Summary: the QRS is wide in V1.", "crbbb")
    assert any("echoed passage headings" in r for r in echo.reasons)


def test_validate_description_accepts_and_trims_to_two_sentences() -> None:
    text = ("Complete RBBB shows a QRS of 120 ms or more. V1 has an rsR′ complex. "
            "Leads I and V6 show a wide S wave. And then the model kept going")
    check = validate_description(text, "crbbb")
    assert check.ok, check.reasons
    assert check.text == "Complete RBBB shows a QRS of 120 ms or more. V1 has an rsR′ complex."


def test_grounded_descriptions_are_the_entry_bullets_and_faithful() -> None:
    entries = load_entries()
    strict_faithful = 0
    for entry in entries:
        text = grounded_description(entry)
        assert text == "; ".join(b.rstrip(" .;") for b in entry.waveform_features[:3]) + "."
        labelled = f"{entry.name} — {text}"
        assert check_caption(labelled, [entry.id]).ok, entry.id  # implied findings allowed
        strict_faithful += check_caption(labelled, [entry.id], implied=False).ok
    assert strict_faithful < len(entries)  # the strict test really is stricter (e.g. MI -> ST elevation)


def test_implied_findings_come_from_the_entry_bullets() -> None:
    imi = [e for e in load_entries() if "IMI" in e.scp_codes]
    if not imi:
        pytest.skip("no IMI entry")
    text = "Inferior myocardial infarction — ST elevation in II, III and aVF."
    assert not check_caption(text, [imi[0].id], implied=False).ok
    assert check_caption(text, [imi[0].id]).ok


# --- lead, territory and QRS-width claims (issue 13): grounded in the real knowledge entries -----------------

# The two wrong descriptions SmolLM2 wrote and the old validator accepted (bench/results/cqa.json before issue 13).
WRONG_IMI = ("Inferior myocardial infarction (MI) is necrosis of the inferior wall of the left ventricle, seen on the "
             "ECG in leads II, III, and aVL. The ECG waveform features ST elevation with upright or hyperacute T "
             "waves in the acute phase, and a pathological Q wave in the evolving phase.")
WRONG_PAC = ("Premature atrial contraction is a beat initiated by an ectopic atrial focus earlier than the next "
             "expected sinus beat. The waveform features include a wide, irregular shape, a short P wave, and a "
             "narrow premature complex.")
PAC = "premature_atrial_contraction"


def _passages(make_store, entry_id: str, k: int = 3) -> list:  # type: ignore[no-untyped-def]
    """The entry's real sections as retrieval returns them (Waveform features first, then criteria, ...)."""
    return make_store().search("waveform features", k=k, where={"entry": entry_id})


def test_known_wrong_inferior_mi_description_is_rejected(make_store) -> None:  # type: ignore[no-untyped-def]
    passages = _passages(make_store, "imi", k=5)
    wrong = validate_description(WRONG_IMI, "imi", passages)
    assert not wrong.ok
    assert "leads II, III, aVL mix the inferior territory (II, III, aVF) with aVL" in wrong.reasons
    assert any(r.startswith("leads II, III, aVL are not a lead group of the passages") for r in wrong.reasons)
    short = validate_description("Inferior myocardial infarction shows ST elevation in II, III and aVL.", "imi",
                                 passages)
    assert not short.ok and any("mix the inferior territory" in r for r in short.reasons)


def test_correct_inferior_mi_leads_pass(make_store) -> None:  # type: ignore[no-untyped-def]
    passages = _passages(make_store, "imi", k=5)
    fixed = validate_description(WRONG_IMI.replace("aVL", "aVF"), "imi", passages)
    assert fixed.ok, fixed.reasons
    reciprocal = validate_description("Inferior myocardial infarction shows ST elevation in II, III and aVF, with "
                                      "reciprocal ST depression in I and aVL.", "imi", passages)
    assert reciprocal.ok, reciprocal.reasons  # the reciprocal change is not an inferior-territory claim


def test_known_wrong_pac_description_is_rejected(make_store) -> None:  # type: ignore[no-untyped-def]
    passages = _passages(make_store, PAC, k=5)
    # the passages do say "wide bizarre QRS", but in Common confusions, about the PVC
    assert any("wide bizarre QRS" in p.text for p in passages)
    for text in (WRONG_PAC, "A premature atrial contraction is an early beat with a wide QRS."):
        check = validate_description(text, PAC, passages)
        assert not check.ok
        assert any("wide QRS for a supraventricular finding" in r for r in check.reasons), check.reasons


def test_narrow_pac_descriptions_pass(make_store) -> None:  # type: ignore[no-untyped-def]
    passages = _passages(make_store, PAC)
    for text in ("A premature atrial contraction is an early beat with a narrow QRS identical to sinus beats.",
                 "Premature atrial contraction shows an early P wave with a shape different from the sinus P wave in "
                 "II and V1, followed by a narrow premature complex identical to sinus beats."):
        check = validate_description(text, PAC, passages)
        assert check.ok, (text, check.reasons)


def test_wide_pac_needs_aberrancy_in_the_text_and_the_passages(make_store) -> None:  # type: ignore[no-untyped-def]
    aberrant = "A premature atrial contraction that is conducted aberrantly has a wide QRS."
    waveform_only = _passages(make_store, PAC, k=1)
    assert not any("aberran" in p.text for p in waveform_only)
    check = validate_description(aberrant, PAC, waveform_only)
    assert not check.ok and any("claims a wide QRS, which the passages do not give" in r for r in check.reasons)
    with_criteria = _passages(make_store, PAC, k=2)  # + Diagnostic criteria: "aberrantly conducted PACs ..."
    assert any("aberrantly conducted" in p.text for p in with_criteria)
    assert validate_description(aberrant, PAC, with_criteria).ok


@pytest.mark.parametrize(("entry_id", "text", "reason"), [
    ("lmi", "Lateral myocardial infarction shows pathological Q waves in II, III and aVF.",
     "leads II, III, aVF are not a lead group of the passages"),
    ("imi", "Inferior myocardial infarction shows ST elevation in I and aVL.",
     "ST elevation claimed in I, aVL, but the passages give ST depression there"),
    ("lbbb", "Complete left bundle branch block has a narrow QRS with a notched R wave in V5–V6.",
     "claims a narrow QRS, which the passages do not give (they give a wide QRS)"),
    ("crbbb", "Complete right bundle branch block shows an rsR′ complex in the inferior leads.",
     "the inferior territory is not supported by the passages"),
    ("asmi", "Anteroseptal myocardial infarction shows QS complexes in V1–V3 and ST elevation in aVR.",
     "leads aVR are not a lead group of the passages"),
    # real SmolLM2 mix-ups: V1–V3 see the posterior wall, but the passages' V1–V3 bullet is ST depression
    ("ipmi", "Inferoposterior myocardial infarction shows ST elevation in the acute phase in V1–V3.",
     "ST elevation claimed in V1, V2, V3, but the passages give ST depression there"),
    # ... aVR shows PR elevation in pericarditis, not the PR depression of the other leads
    ("ste", "ST-segment elevation shows concave ST elevation with PR depression in acute pericarditis, and PR "
            "depression in aVR.", "PR depression claimed in aVR, but the passages give PR elevation there"),
    # ... and the strain bullet's words given to the leads of the deep-S-wave bullet
    ("lvh", "Left ventricular hypertrophy shows ST depression with asymmetric T-wave inversion in V5–V6, I and aVL "
            "in advanced cases in V1–V3.", "the features stated for V1, V2, V3 are not what the passages give there"),
])
def test_lead_territory_direction_and_width_claims_need_support(make_store, entry_id: str, text: str,  # type: ignore[no-untyped-def]
                                                                 reason: str) -> None:
    check = validate_description(text, entry_id, _passages(make_store, entry_id, k=1))
    assert not check.ok
    assert any(r.startswith(reason) for r in check.reasons), check.reasons


def test_every_knowledge_sentence_and_grounded_description_passes_the_claim_checks() -> None:
    """The checker's anatomy and parsing agree with the corpus: no entry's own wording is flagged."""
    from cqa.claims import claim_problems, entry_passages, passage_section, split_units

    flagged = []
    for entry in load_entries():
        passages = entry_passages(entry)
        texts = [grounded_description(entry)]
        for passage in passages:
            section, body = passage_section(passage)
            if section != "common confusions":
                texts += split_units(body)
        flagged += [(entry.id, t, p) for t in texts if (p := claim_problems(t, passages, entry))]
    assert flagged == []


@pytest.mark.parametrize(("sentence", "expected"), [
    ("ST elevation in V1–V3", [{"V1", "V2", "V3"}]),
    ("ST elevation in V1-4 and V6", [{"V1", "V2", "V3", "V4", "V6"}]),
    ("Q waves in II, III and aVF; ST depression in I, aVL", [{"II", "III", "aVF"}, {"I", "aVL"}]),
    ("Mobitz II block with type I features", []),
    ("rsR′ in V3R–V4R", [{"V3R", "V4R"}]),
])
def test_lead_lists_are_parsed(sentence: str, expected: list[set[str]]) -> None:
    from cqa.claims import anchors

    assert [set(a.leads) for a in anchors(sentence) if a.territory is None] == expected
