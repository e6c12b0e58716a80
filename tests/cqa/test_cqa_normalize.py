"""Label normalisation on real label vocabularies (PTB-XL, CinC SNOMED, MIMIC statements, CPSC2018)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpora.knowledge import code_index
from corpora.registry import get_reader
from cqa.normalize import Normalizer, normalize_labels, statement_coverage

COVERAGE_TARGET = 0.95


def _certainties(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {f.id: f.certainty for f in result.findings}


def test_ptbxl_likelihood_zero_is_possible_not_dropped() -> None:
    sr = code_index()["SR"][0]
    crbbb = code_index()["CRBBB"][0]
    result = normalize_labels({"CRBBB": 100.0, "SR": 0.0}, "scp")
    assert _certainties(result) == {sr: "possible", crbbb: "present"}
    finding = next(f for f in result.findings if f.id == sr)
    assert finding.confidence == 0.0 and finding.labels == ["SR"]
    assert [f.category for f in result.findings][0] == "rhythm"  # rhythm first in caption order


def test_unknown_labels_are_kept_with_a_reason() -> None:
    result = normalize_labels({"NOT_A_CODE": 100.0, "SR": 100.0}, "scp",
                              {"NOT_A_CODE": {"known": False, "description": None}})
    assert [u.label for u in result.unknown] == ["NOT_A_CODE"]
    assert "NOT_A_CODE" in result.unknown[0].reason and "not listed" in result.unknown[0].reason
    assert len(result.findings) == 1


def test_plain_names_and_abbreviations_case_insensitive() -> None:
    ids = [normalize_labels([label]).ids for label in ("RBBB", "rbbb", "Right bundle branch block", "CRBBB")]
    assert ids[0] and all(i == ids[0] for i in ids)
    hedged = normalize_labels(["possible atrial fibrillation"])
    assert [f.certainty for f in hedged.findings] == ["possible"]


def test_cpsc2018_class_names_and_numbers() -> None:
    by_name = normalize_labels(["AF", "I-AVB", "Normal"], "cpsc2018")
    by_number = normalize_labels(["2", "3", "1"], "cpsc2018")
    assert by_name.ids == by_number.ids and len(by_name.ids) == 3
    assert normalize_labels(["XYZ"], "cpsc2018").unknown[0].reason.startswith("'XYZ' is not one of")


@pytest.mark.parametrize(("line", "expected"), [
    ("Sinus rhythm with possible left atrial enlargement", {"sinus_rhythm": "present"}),
    ("Probable atrial fibrillation with rapid ventricular response", {"atrial_fibrillation": "possible"}),
    ("Anterior ST elevation - cannot rule out myocardial injury", {}),
    ("Atrial fibrillation no longer present", {"atrial_fibrillation": "negated"}),
    ("Atrial fibrillation has resolved", {"atrial_fibrillation": "negated"}),
    ("Borderline first degree A-V block", {"first_degree_av_block": "possible"}),
])
def test_mimic_statement_qualifiers(line: str, expected: dict[str, str]) -> None:
    normalizer = Normalizer()
    if any(i not in normalizer.entries for i in expected):
        pytest.skip(f"knowledge corpus lacks {sorted(expected)}")
    result = normalizer.normalize({line: 100.0}, "mimic_statement")
    got = {f.id: f.certainty for f in result.findings} | {f.id: "negated" for f in result.negated}
    for entry_id, certainty in expected.items():
        assert got.get(entry_id) == certainty, (line, got)
    assert not any(f.id in {n.id for n in result.negated} for f in result.findings)
    if line.startswith("Anterior ST elevation"):
        assert "possible" in got.values() and "present" in got.values(), got  # hedge scoped to its clause


def test_negated_finding_is_not_a_present_finding() -> None:
    result = normalize_labels({"Atrial fibrillation no longer present": 100.0, "Sinus rhythm": 100.0},
                              "mimic_statement")
    assert "atrial_fibrillation" not in result.ids
    assert [f.id for f in result.negated] == ["atrial_fibrillation"]


def test_technical_statements_are_ignored_not_unknown(mimic_statements: list[str]) -> None:
    normalizer = Normalizer()
    if not normalizer.ignore:
        pytest.skip("corpora/knowledge/ignored_statements.yaml not present yet")
    line = next(s for s in mimic_statements if "WITHOUT KNOWING PATIENT" in s.upper())
    result = normalizer.normalize({line: 100.0}, "mimic_statement")
    assert result.ignored == [line] and not result.unknown and not result.findings


def test_mimic_statement_coverage_target(mimic_statements: list[str]) -> None:
    """>= 95 % of the real non-technical MIMIC-IV-ECG statement lines give at least one finding."""
    assert len(mimic_statements) == 3862
    report = statement_coverage(mimic_statements)
    assert report["coverage"] >= COVERAGE_TARGET, (
        f"{report['covered']}/{report['non_technical']} = {report['coverage']:.3f}; "
        f"first uncovered: {report['uncovered'][:10]}")


def test_real_ptbxl_rows_normalise_without_silent_loss(ptbxl_root: Path) -> None:
    reader = get_reader("ptbxl", ptbxl_root)
    normalizer = Normalizer()
    labels_seen = mapped = 0
    for record in reader.iter_records([], metadata_only=True):
        result = normalizer.normalize_record(record)
        produced = {label for f in result.findings for label in f.labels} | {u.label for u in result.unknown}
        assert produced == set(record.labels), record.record_id  # every label is a finding or reported
        labels_seen += len(record.labels)
        mapped += len(record.labels) - len(result.unknown)
    assert labels_seen > 2000 and mapped / labels_seen > 0.95


def test_real_cinc_snomed_codes(cinc_root: Path) -> None:
    reader = get_reader("cinc", cinc_root)
    normalizer = Normalizer()
    records = list(reader.iter_records([], metadata_only=True))
    results = [normalizer.normalize_record(r) for r in records]
    coded = [(r, n) for r, n in zip(records, results) if r.labels]
    assert coded and sum(bool(n.findings) for _, n in coded) / len(coded) > 0.9
    for record, result in coded:
        produced = {label for f in result.findings for label in f.labels} | {u.label for u in result.unknown}
        assert produced == set(record.labels), record.record_id
