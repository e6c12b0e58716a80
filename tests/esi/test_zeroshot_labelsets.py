"""Label sets derived at run time from the real PTB-XL / CinC files; clear errors for unknown names."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

from corpora.cinc import CincReader
from corpora.ptbxl import PTBXLReader
from esi.zeroshot import TemplateError, available_templates, knowledge_descriptions, load_templates
from esi.zeroshot.labelsets import LabelSetError, available_labelsets, load_labelset


def _scp_table(root: Path) -> dict[str, dict[str, str]]:
    with (root / "scp_statements.csv").open(newline="", encoding="utf-8") as handle:
        return {row[""]: row for row in csv.DictReader(handle)}


def test_shipped_label_sets_have_the_expected_sizes(ptbxl_root: Path) -> None:
    sizes = {name: len(ls.resolve(ptbxl_root).classes if ls.needs_scp_statements else ls.classes)
             for name, ls in available_labelsets().items()}
    assert sizes == {"ptbxl_superclass": 5, "ptbxl_subclass": 23, "ptbxl_all": 71, "ptbxl_form": 19,
                     "ptbxl_rhythm": 12, "cinc_scored": 24, "cpsc2018": 9}
    assert load_labelset("superclass").class_ids == ["NORM", "MI", "STTC", "CD", "HYP"]


def test_superclass_labels_of_known_ptbxl_records(ptbxl_root: Path) -> None:
    reader = PTBXLReader(ptbxl_root)
    superclass = load_labelset("superclass").resolve(reader.scp_statements_path)
    records = [reader.read_metadata(i) for i in ("1", "8")]
    y = superclass.targets([r.labels for r in records], "scp")
    assert y[0].tolist() == [1, 0, 0, 0, 0]  # ecg_id 1: NORM (plus form/rhythm codes LVOLT, SR)
    assert y[1].tolist() == [0, 1, 0, 0, 0]  # ecg_id 8: IMI (likelihood 35) -> MI


def test_superclass_derivation_matches_scp_statements_for_every_record(ptbxl_root: Path) -> None:
    table = _scp_table(ptbxl_root)
    with (ptbxl_root / "ptbxl_database.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = [ast.literal_eval(row["scp_codes"]) for row in rows]
    superclass = load_labelset("superclass").resolve(ptbxl_root)
    y = superclass.targets(labels, "scp")
    for row_labels, row_y in zip(labels, y):
        expected = {table[c]["diagnostic_class"] for c in row_labels if table.get(c, {}).get("diagnostic_class")}
        assert {superclass.class_ids[j] for j in np.flatnonzero(row_y)} == expected
    assert y.sum(axis=0).min() > 0


def test_form_and_rhythm_follow_the_csv_flags(ptbxl_root: Path) -> None:
    table = _scp_table(ptbxl_root)
    for name, flag in (("form", "form"), ("rhythm", "rhythm")):
        resolved = load_labelset(name).resolve(ptbxl_root)
        assert set(resolved.class_ids) == {c for c, row in table.items() if row[flag] == "1.0"}
    subclass = load_labelset("subclass").resolve(ptbxl_root)
    codes = dict(zip(subclass.class_ids, subclass.codes_for("scp")))
    assert codes["LAFB/LPFB"] == {"LAFB", "LPFB"}
    assert {"IMI", "ILMI", "IPLMI", "IPMI", "INJIN", "INJIL"} == codes["IMI"]


def test_cinc_equivalent_classes_count_as_one(cinc_root: Path) -> None:
    reader = CincReader(cinc_root)
    cinc = load_labelset("cinc").resolve()
    records = {i: reader.read_metadata(i) for i in ("Q0017", "Q0630", "Q1805")}
    y = cinc.targets([r.labels for r in records.values()], "snomed")
    column = {c: j for j, c in enumerate(cinc.class_ids)}
    assert y[0, column["PAC"]] == 1  # 63593006 (SVPB) scores as PAC
    assert y[1, column["PVC"]] == 1  # 17338001 (VPB) scores as PVC
    assert y[2, column["CRBBB"]] == 1  # 59118001 (RBBB) scores as CRBBB
    assert y.sum() == 3 + 1  # Q1805 also has 164917005 (Q wave abnormal), a scored class


def test_cpsc_label_set_reads_class_names_and_snomed() -> None:
    cpsc = load_labelset("cpsc2018").resolve()
    y_native = cpsc.targets([{"AF": 100.0, "PVC": 100.0}], "cpsc2018")
    y_snomed = cpsc.targets([{"164889003": 100.0, "164884008": 100.0}], "snomed")
    assert y_native.tolist() == y_snomed.tolist() == [[0, 1, 0, 0, 0, 0, 1, 0, 0]]


def test_unknown_names_give_clear_errors(ptbxl_root: Path) -> None:
    with pytest.raises(LabelSetError, match=r"unknown label set 'nope'; available: .*ptbxl_superclass"):
        load_labelset("nope")
    with pytest.raises(LabelSetError, match=r"has no class 'XYZ'; classes: NORM, MI, STTC, CD, HYP"):
        load_labelset("superclass").select(["XYZ"])
    assert load_labelset("superclass").select(["normal ECG", "mi"]).class_ids == ["NORM", "MI"]
    with pytest.raises(LabelSetError, match="scp_statements.csv"):
        load_labelset("superclass").resolve(None)
    with pytest.raises(LabelSetError, match="no codes for label vocabulary 'snomed'"):
        load_labelset("superclass").resolve(ptbxl_root).targets([{}], "snomed")
    with pytest.raises(TemplateError, match="unknown template set 'nope'; available: ecg, plain"):
        load_templates("nope")


def test_templates_and_knowledge_descriptions_are_data() -> None:
    assert {"ecg", "plain"} <= set(available_templates())
    assert all("{}" in t for t in load_templates("ecg"))
    cinc = load_labelset("cinc").resolve()
    descriptions = knowledge_descriptions(cinc.select(["CRBBB"]))
    assert descriptions["CRBBB"] and "rsR" in descriptions["CRBBB"][0]
