"""The knowledge corpus: entries parse, codes are covered once, and real MIMIC statements map correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpora.knowledge import (
    CATEGORIES,
    KnowledgeError,
    code_index,
    load_entries,
    match_statement,
    parse_entry,
)
from corpora.knowledge.coverage import (
    classify_statements,
    coverage_report,
    duplicate_codes,
    is_ignored,
    load_ignore_patterns,
    main,
    read_scp_codes,
    read_snomed_codes,
)

VALID_ENTRY = """---
id: demo_entry
name: Demo finding
category: rhythm
aliases: [DEMO]
scp_codes: [DEMO]
snomed_codes: ["123"]
mimic_patterns: ['\\bdemo finding\\b']
---
## Definition
A demo.

## Mechanism
None.

## Diagnostic criteria
- none

## Waveform features
- II: demo bullet

## Common confusions
- none
"""


@pytest.fixture(scope="module")
def entries():
    return load_entries()


@pytest.fixture(scope="module")
def report(shared_data: Path, entries):
    return coverage_report(shared_data, entries)


def test_every_entry_parses_with_matching_file_name(entries) -> None:
    assert len(entries) >= 100
    for entry in entries:
        assert Path(entry.source).stem == entry.id, entry.source
        assert entry.category in CATEGORIES
        assert entry.waveform_features, entry.id
        for bullet in entry.waveform_features:
            assert ": " in bullet, f"{entry.id}: bullet {bullet!r} is not 'LEADS: feature'"


def test_ids_unique(entries) -> None:
    ids = [e.id for e in entries]
    assert len(ids) == len(set(ids))


def test_every_code_in_exactly_one_entry(entries) -> None:
    assert duplicate_codes(entries) == {}
    assert all(len(owners) == 1 for owners in code_index().values())


def test_all_ptbxl_scp_codes_covered(ptbxl_root: Path, entries) -> None:
    scp = read_scp_codes(ptbxl_root)
    assert len(scp) == 71
    index = code_index()
    assert [c for c in scp if c not in index] == []
    assert index["IRBBB"] == ["irbbb"] and index["CRBBB"] == ["crbbb"]


def test_all_cinc_snomed_codes_covered(cinc_root: Path, entries) -> None:
    snomed = read_snomed_codes(cinc_root)
    assert "164889003" in snomed and snomed["164889003"] == "AF"
    index = code_index()
    assert {c: a for c, a in snomed.items() if c not in index} == {}
    # codes that name the same finding share one entry
    assert index["426749004"] == index["282825002"] == index["314208002"] == index["164889003"]
    assert index["63593006"] == index["284470004"]


def test_mimic_non_technical_coverage(report, mimic_statements: list[str]) -> None:
    assert report.statements_total == len(mimic_statements)
    assert report.statements_matched + report.statements_ignored + len(report.statements_unmatched) == len(
        mimic_statements
    )
    assert report.non_technical_coverage >= 0.95, report.statements_unmatched[:40]
    # the ignore list must stay small: it is for non-diagnostic lines only
    assert report.statements_ignored < 0.03 * report.statements_total


@pytest.mark.parametrize(
    ("line", "expected", "forbidden"),
    [
        ("Incomplete right bundle branch block", {"irbbb"}, {"crbbb"}),
        ("Incomplete RBBB", {"irbbb"}, {"crbbb"}),
        ("Right bundle branch block", {"crbbb"}, {"irbbb"}),
        ("Incomplete left bundle branch block", {"ilbbb"}, {"lbbb"}),
        ("Left bundle branch block", {"lbbb"}, {"ilbbb"}),
        ("Atrial fibrillation with rapid ventricular response", {"atrial_fibrillation", "tachycardia"}, set()),
        ("Atrial flutter/fibrillation", {"atrial_fibrillation_flutter"}, {"atrial_fibrillation", "atrial_flutter"}),
        ("Sinus rhythm", {"sinus_rhythm"}, set()),
        ("Sinus arrhythmia", {"sinus_arrhythmia"}, {"sinus_rhythm"}),
        ("Atrial flutter with 2:1 A-V block", {"atrial_flutter"}, {"advanced_av_block"}),
        ("Sinus rhythm with 2:1 A-V block", {"sinus_rhythm", "advanced_av_block"}, set()),
        ("- sino-atrial 2nd degree Mobitz II block", {"sinoatrial_block"}, {"mobitz_ii_av_block"}),
        ("Second degree AV block, Mobitz II", {"mobitz_ii_av_block"}, {"mobitz_i_av_block"}),
        ("Second deg AVB, Mobitz I (Wenckebach)", {"mobitz_i_av_block"}, {"mobitz_ii_av_block"}),
        ("Lateral infarct, acute (LAD)", set(), {"left_axis_deviation"}),
        ("Nonspecific IVCD with LAD", {"ivcd", "left_axis_deviation"}, set()),
        ("Sinus rhythm with bigeminal PVCs", {"ventricular_bigeminy", "premature_ventricular_contraction"}, set()),
        ("FREQUENT SUPRAVENTRICULAR EXTRASYSTOLES", {"premature_atrial_contraction"}, {"premature_complexes"}),
        ("Atrial-sensed ventricular-paced rhythm", {"ventricular_pacing", "dual_chamber_pacing"}, set()),
        ("*** dextrocardia - repeat with reversed leads ***", {"dextrocardia"}, {"lead_reversal"}),
        ("Right and left arm electrode reversal, interpretation assumes no reversal", {"lead_reversal"}, set()),
        ("Baseline wander in lead(s) V1,V2", {"artifact"}, set()),
    ],
)
def test_real_statement_mapping(line: str, expected: set[str], forbidden: set[str], mimic_statements) -> None:
    assert line in mimic_statements, f"not a real MIMIC line: {line!r}"
    ids = set(match_statement(line))
    assert expected <= ids, (line, ids)
    assert not (forbidden & ids), (line, ids)


def test_ignore_list_is_for_non_diagnostic_lines_only(mimic_statements) -> None:
    for line in ("*UnconfirmedAnalysis*", "Abnormal ECG", "Borderline ECG",
                 "*** report made without knowing patient's sex ***"):
        assert line in mimic_statements and is_ignored(line), line
    for line in ("Normal ECG", "Atrial fibrillation", "Technically unsatisfactory tracing"):
        assert not is_ignored(line), line


def test_ignore_patterns_never_hit_a_line_with_a_finding(entries, mimic_statements) -> None:
    patterns = load_ignore_patterns()
    overlap = [line for line in mimic_statements if is_ignored(line, patterns) and match_statement(line)]
    assert overlap == []


def test_classify_statements_prefers_entry_match(entries) -> None:
    patterns = load_ignore_patterns()
    result = classify_statements(["Sinus rhythm", "Abnormal ECG", "zzz not an ecg statement"], entries, patterns)
    assert result.matched == {"Sinus rhythm": ["sinus_rhythm"]}
    assert result.ignored == ["Abnormal ECG"]
    assert result.unmatched == ["zzz not an ecg statement"]
    assert result.non_technical_coverage == pytest.approx(0.5)


def test_parse_entry_accepts_valid_text() -> None:
    entry = parse_entry(VALID_ENTRY, "demo_entry.md")
    assert entry.id == "demo_entry" and entry.waveform_features == ["II: demo bullet"]
    assert entry.matches_statement("A DEMO FINDING here")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (VALID_ENTRY.replace("---\nid:", "id:", 1), "missing '---' front matter"),
        (VALID_ENTRY.replace('snomed_codes: ["123"]\n', ""), "lacks ['snomed_codes']"),
        (VALID_ENTRY.replace("category: rhythm", "category: rhythms"), "category 'rhythms'"),
        (VALID_ENTRY.replace("id: demo_entry", "id: Demo-Entry"), "must match"),
        (VALID_ENTRY.replace("aliases: [DEMO]", "aliases: DEMO"), "aliases must be a list"),
        (VALID_ENTRY.replace("\\bdemo finding\\b", "(unclosed"), "bad mimic pattern"),
        (VALID_ENTRY.replace("## Mechanism\nNone.\n", ""), "missing sections ['mechanism']"),
        (VALID_ENTRY.replace("- II: demo bullet", "II demo bullet"), "needs at least one"),
        (VALID_ENTRY.replace("aliases: [DEMO]", "aliases: [DEMO]\ncolour: red"), "unknown front matter keys"),
        (VALID_ENTRY.replace("name: Demo finding", "name: [unclosed"), "not valid YAML"),
    ],
)
def test_parse_entry_rejects_malformed_front_matter(text: str, message: str) -> None:
    with pytest.raises(KnowledgeError) as err:
        parse_entry(text, "broken.md")
    assert "broken.md" in str(err.value) and message in str(err.value)


def test_ignore_file_errors_name_the_file(tmp_path: Path) -> None:
    not_a_list = tmp_path / "ignore_a.yaml"
    not_a_list.write_text("pattern: foo\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match="ignore_a.yaml: must be a YAML list"):
        load_ignore_patterns(str(not_a_list))
    bad_regex = tmp_path / "ignore_b.yaml"
    bad_regex.write_text("- '(unclosed'\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match="ignore_b.yaml: bad ignore pattern"):
        load_ignore_patterns(str(bad_regex))


def test_coverage_cli_json(shared_data: Path, capsys) -> None:
    assert main(["--data", str(shared_data), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scp_total"] == 71 and data["scp_missing"] == []
    assert data["statements_total"] == 3862
    assert data["non_technical_coverage"] >= 0.95


def test_coverage_cli_missing_data_dir(tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
