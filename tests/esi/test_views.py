"""Caption views (text augmentation), the views class text and query expansion, on real PTB-XL captions."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from esi.train.data import read_captions
from esi.train.views import ViewError, ViewGenerator, ViewSettings, class_view_texts, expand_query


def _table(path, seed: int = 0, **settings):
    table = read_captions(path, with_views=True)
    table.use_views(ViewGenerator(ViewSettings(**settings), seed=seed))
    return table


def test_views_name_the_findings_at_every_hierarchy_level(esi_cqa_captions) -> None:
    table = _table(esi_cqa_captions)
    cd_records = [r for r, codes in table.labels.items()
                  if any(table.terms.get(c, {}).get("diagnostic_class") == "CD" for c in codes)]
    assert cd_records, "the fixture needs a record with a conduction disturbance"
    names = " ".join(t for r in cd_records for t in table.views[r]["names"])
    assert "conduction disturbance" in names  # the superclass name, never in a CQA caption
    views = table.views[cd_records[0]]
    assert views["caption"] == [table.texts[cd_records[0]]]
    assert all("Findings: " in v and "Waveform" not in v for v in views["findings"])
    assert views["finding"] and all(" — " in v for v in views["finding"])


def test_views_are_fixed_by_seed_and_drawn_by_key(esi_cqa_captions) -> None:
    first, again, other = _table(esi_cqa_captions), _table(esi_cqa_captions), _table(esi_cqa_captions, seed=1)
    assert first.views == again.views
    assert first.views != other.views
    record_id = next(iter(first.views))
    draws = [first.text(record_id, (epoch, record_id)) for epoch in range(40)]
    assert draws == [again.text(record_id, (epoch, record_id)) for epoch in range(40)]
    assert len(set(draws)) > 2  # different epochs draw different views
    assert set(draws) <= set(first.all_texts())


def test_view_weights_select_kinds(esi_cqa_captions) -> None:
    table = _table(esi_cqa_captions, caption=0, findings=0, finding=0, names=1)
    names = {t for v in table.views.values() for t in v["names"]}
    assert all(table.text(r, (0, r)) in names for r in table.views if table.views[r])
    with pytest.raises(ViewError):
        ViewSettings(caption=0, findings=0, finding=0, names=0)
    with pytest.raises(ViewError):
        ViewSettings(caption=-1)


def test_caption_table_without_finding_columns_warns(esi_pairs, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        table = read_captions(esi_pairs[1])
    assert table.finding_sets is None
    assert "finding_codes" in caplog.text


def test_label_prior_counts_training_folds_only(esi_cqa_captions) -> None:
    import pyarrow.parquet as pq

    table = read_captions(esi_cqa_captions)
    prior = table.label_prior([1, 2, 3, 4, 5, 6, 7, 8], exclude=[9])
    rows = pq.read_table(esi_cqa_captions, columns=["labels", "fold"]).to_pylist()
    expected: dict[str, int] = {}
    for row in rows:
        if row["fold"] in range(1, 9):
            for code in json.loads(row["labels"]):
                expected[code] = expected.get(code, 0) + 1
    assert prior["labels"] == expected and prior["n_records"] == sum(r["fold"] != 9 for r in rows)
    assert prior["terms"]["NORM"]["diagnostic_class"] == "NORM"


def test_class_view_texts_weigh_members_by_prior() -> None:
    texts, weights = class_view_texts("conduction disturbance", {"Complete right bundle branch block": 90.0,
                                                                 "Wolff-Parkinson-White pattern": 10.0})
    assert abs(sum(weights) - 1.0) < 1e-9
    by_member = {m: sum(w for t, w in zip(texts, weights) if m in t) for m in ("right bundle", "Wolff")}
    assert by_member["right bundle"] == pytest.approx(0.45) and by_member["Wolff"] == pytest.approx(0.05)
    assert any("conduction disturbance" in t and "Wolff" not in t and "bundle" not in t for t in texts)


def test_expand_query_uses_the_models_label_hierarchy() -> None:
    prior = {"labels": {"CRBBB": 30, "CLBBB": 10, "NORM": 300},
             "terms": {"CRBBB": {"description": "complete right bundle branch block", "diagnostic_class": "CD",
                                 "diagnostic_subclass": "CRBBB"},
                       "CLBBB": {"description": "complete left bundle branch block", "diagnostic_class": "CD",
                                 "diagnostic_subclass": "CLBBB"},
                       "NORM": {"description": "normal ECG", "diagnostic_class": "NORM"}}}
    texts, weights = expand_query("Conduction disturbance", prior)
    assert any("right bundle branch block" in t for t in texts) and any("left bundle" in t for t in texts)
    assert not any("Normal ECG" in t for t in texts)
    right = sum(w for t, w in zip(texts, weights) if "right bundle" in t)
    left = sum(w for t, w in zip(texts, weights) if "left bundle" in t)
    assert right == pytest.approx(3 * left)
    # a finding the prior lacks still expands through the knowledge corpus; free text stays as typed
    texts, _ = expand_query("atrial fibrillation", prior)
    assert len(texts) > 1
    assert expand_query("wide QRS with M-shaped complex in V1", prior) == (["wide QRS with M-shaped complex in V1"],
                                                                           [1.0])
    assert np.isclose(sum(expand_query("LBBB", {})[1]), 1.0)


def test_paraphrase_table_adds_finding_views(esi_cqa_captions, tmp_path) -> None:
    """A `cqa paraphrases` table joins the ``finding`` views of exactly the records with that finding."""
    plain = _table(esi_cqa_captions)
    record_id, views = next((r, v) for r, v in plain.views.items() if v.get("finding"))
    entry_id = plain.records[record_id].findings[0].id
    path = tmp_path / "paraphrases.json"
    path.write_text(json.dumps({entry_id: ["A reworded description of its features."]}), encoding="utf-8")
    with_para = _table(esi_cqa_captions, paraphrases=str(path))
    added = [v for v in with_para.views[record_id]["finding"] if v not in views["finding"]]
    assert len(added) == 1 and added[0].endswith("— A reworded description of its features.")
    others = [r for r, t in plain.records.items() if r in plain.views and entry_id not in {f.id for f in t.findings}]
    assert others and all(with_para.views[r] == plain.views[r] for r in others)

    for bad, reason in (("{not json", "cannot read"), (json.dumps({entry_id: "one text"}), "lists of non-empty")):
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ViewError, match=reason):
            ViewSettings(paraphrases=str(path))
    with pytest.raises(ViewError, match="cannot read"):
        ViewSettings(paraphrases=str(tmp_path / "missing.json"))
