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


def test_validate_description_grounds_numbers_and_rejects_loops() -> None:
    passages = ["Complete RBBB — Waveform features:\n- QRS: duration 120 ms or longer"]
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
