"""Bad input never crashes retrieval: unusable queries are clear QueryErrors (exit 2 in the CLI), odd but usable
ones get an answer, and a knowledge file with broken front matter is named and skipped, never fatal."""

from __future__ import annotations

import pytest

from retrieval import MAX_QUERY_CHARS, KnowledgeStore, QueryError
from retrieval.__main__ import main
from retrieval.chunking import load_knowledge

GOOD = """---
id: {id}
name: {name}
category: rhythm
aliases: [{alias}]
scp_codes: []
snomed_codes: []
mimic_patterns: []
---
## Definition
{name} is a rhythm.

## Mechanism
Something fires.

## Diagnostic criteria
- criterion

## Waveform features
- II: {name} waves

## Common confusions
- none
"""


@pytest.mark.parametrize("query, message", [
    ("", "empty"), ("   \n\t", "empty"), ("wide QRS " * 1112, f"limit is {MAX_QUERY_CHARS}"),
    ("心房颤动", "no Latin letters"), ("фибрилляция предсердий", "no Latin letters"), ("١٢٣ ٤٥", "no Latin letters"),
])
def test_unusable_queries_are_clear_errors_in_every_api(built_store, query, message):
    assert len("wide QRS " * 1112) > 10_000
    with pytest.raises(QueryError, match=message):
        built_store.search(query)
    with pytest.raises(QueryError, match=message):
        built_store.search_findings(query)
    with pytest.raises(QueryError, match=message):
        built_store.search_findings_many(["AF", query])
    with pytest.raises(QueryError, match=message):
        built_store.retriever().invoke(query)


def test_cli_reports_bad_queries_and_arguments(built_store, capsys):
    for query, message in (("", "query is empty"), ("x" * 10_000, "10000 characters"), ("心房颤动", "Latin")):
        assert main(["query", "--store", built_store.label, query]) == 2
        assert message in capsys.readouterr().err
    assert main(["query", "--store", built_store.label, "--passages", "0", "AF"]) == 2
    assert "passages must be" in capsys.readouterr().err


@pytest.mark.parametrize("query", ["AF 心房颤动", "Vorhofflimmern", "fibrillation auriculaire", "QRS\x00\x07 wide",
                                   "!!! ??? AF", "a", "120"])
def test_odd_but_usable_queries_get_an_answer(built_store, query):
    if query == "120":
        with pytest.raises(QueryError, match="no Latin letters"):
            built_store.search_findings(query)
        return
    findings = built_store.search_findings(query, k=3)
    assert len(findings) == 3 and len({f.entry for f in findings}) == 3
    if query.startswith(("AF", "!!!")):
        assert findings[0].entry == "atrial_fibrillation"


def _corpus(folder, broken: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alpha.md").write_text(GOOD.format(id="alpha", name="Alpha rhythm", alias="ALR"), encoding="utf-8")
    (folder / "beta.md").write_text(GOOD.format(id="beta", name="Beta rhythm", alias="BER"), encoding="utf-8")
    for name, text in broken.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


BROKEN = {
    "bad_yaml.md": GOOD.format(id="gamma", name="Gamma", alias="GA").replace("aliases: [GA]", "aliases: [GA"),
    "no_front.md": "# just a heading\n",
    "dupe.md": GOOD.format(id="alpha", name="Alpha again", alias="AA"),
    "bad_key.md": GOOD.format(id="delta", name="Delta", alias="DE").replace("mimic_patterns: []",
                                                                            "mimic_patterns: []\ncolour: red"),
}


def test_broken_knowledge_files_are_named_and_skipped(tmp_path, hash_embeddings):
    folder = _corpus(tmp_path / "entries", BROKEN)
    entries, errors = load_knowledge(folder)
    assert [e.id for e in entries] == ["alpha", "beta"]
    assert len(errors) == 4
    for name, reason in (("bad_yaml.md", "not valid YAML"), ("no_front.md", "front matter"),
                         ("dupe.md", "duplicate id 'alpha'"), ("bad_key.md", "unknown front matter keys")):
        assert any(name in e and reason in e for e in errors), (name, errors)
    store = KnowledgeStore.build(tmp_path / "store", embeddings=hash_embeddings(16), knowledge_dir=folder,
                                 progress=False)
    assert store.build_report.skipped == errors and "skipped 4 broken" in store.build_report.summary()
    assert {m["entry"] for m in store.vectorstore.get()["metadatas"]} == {"alpha", "beta"}
    assert [f.entry for f in store.search_findings("Alpha rhythm", k=2)] == ["alpha", "beta"]
    # fixing the file brings its entry in on the next (incremental) build
    (folder / "bad_yaml.md").write_text(GOOD.format(id="gamma", name="Gamma", alias="GA"), encoding="utf-8")
    again = KnowledgeStore.build(tmp_path / "store", embeddings=hash_embeddings(16), knowledge_dir=folder,
                                 progress=False)
    assert len(again.build_report.skipped) == 3 and again.build_report.added > 0
    assert "gamma" in {m["entry"] for m in again.vectorstore.get()["metadatas"]}


def test_cli_build_names_broken_knowledge_files(tmp_path, monkeypatch, capsys):
    folder = _corpus(tmp_path / "entries", {"bad_yaml.md": BROKEN["bad_yaml.md"]})
    monkeypatch.setattr("retrieval.chunking.entries_dir", lambda: folder)
    assert main(["build", "--store", str(tmp_path / "store"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "error: skipped knowledge file" in captured.err and "bad_yaml.md" in captured.err
    assert "skipped 1 broken knowledge file" in captured.out
