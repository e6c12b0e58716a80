from __future__ import annotations

import json

from retrieval.__main__ import main


def test_cli_build_then_query_json(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "flutter.md").write_text("# Atrial flutter\nSawtooth flutter waves at 300 per minute in II, III, aVF.\n",
                                     encoding="utf-8")
    (docs / "vt.txt").write_text("Ventricular tachycardia: broad complexes with AV dissociation.", encoding="utf-8")
    store = tmp_path / "store"
    assert main(["build", "--store", str(store), "--docs", str(docs), "--no-knowledge", "--quiet"]) == 0
    assert "added 2, unchanged 0, removed 0 chunks" in capsys.readouterr().out
    assert main(["build", "--store", str(store), "--docs", str(docs), "--no-knowledge", "--quiet"]) == 0
    assert "added 0, unchanged 2, removed 0 chunks" in capsys.readouterr().out

    assert main(["query", "--store", str(store), "-k", "2", "--json", "sawtooth waves"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and set(rows[0]) >= {"text", "score", "entry", "codes", "section", "source"}
    assert rows[0]["source"].endswith("flutter.md") and rows[0]["section"] == "Atrial flutter"
    assert rows[0]["score"] >= rows[1]["score"]


def test_cli_query_knowledge_store_with_filters(built_store, capsys):
    assert main(["query", "--store", built_store.label, "-k", "3", "--json", "--by-chunk", "--where-code", "CRBBB",
                 "M-shaped QRS in V1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["entry"] for r in rows] == ["crbbb"] * 3 and "CRBBB" in rows[0]["codes"]
    # the default view gives distinct findings: one code filter -> one finding with its best passages
    assert main(["query", "--store", built_store.label, "-k", "3", "--json", "--passages", "3", "--where-code",
                 "CRBBB", "M-shaped QRS in V1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["entry"] for r in rows] == ["crbbb"] and len(rows[0]["passages"]) == 3
    assert main(["query", "--store", built_store.label, "--where-category", "axis", "axis of -60 degrees"]) == 0
    assert "left_axis_deviation" in capsys.readouterr().out


def test_cli_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["query", "--store", str(tmp_path / "none"), "anything"]) == 2
    assert "no knowledge store" in capsys.readouterr().err
    assert main(["build", "--store", str(tmp_path / "s"), "--docs", str(tmp_path / "missing.pdf"),
                 "--no-knowledge", "--quiet"]) == 2
    assert "missing.pdf: document not found" in capsys.readouterr().err
