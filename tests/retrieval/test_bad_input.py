"""Bad input never crashes retrieval: unusable queries are clear QueryErrors (exit 2 in the CLI), odd but usable
ones get an answer, and a knowledge file with broken front matter is named and skipped, never fatal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    ("رجفان أذيني", "no Latin letters"), ("× ÷ 120", "no Latin letters"), ("\u200b\ufeff\u3000", "empty|no Latin"),
    ("AF \udcff\udcfe", "not valid Unicode text"),  # what Python makes of non-UTF-8 bytes in argv
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
    for query, message in (("", "query is empty"), ("x" * 10_000, "10000 characters"), ("心房颤动", "Latin"),
                           ("фибрилляция", "Latin"), ("AF \udcff", "not valid Unicode")):
        for view in ([], ["--by-chunk"], ["--json"]):
            assert main(["query", "--store", built_store.label, *view, query]) == 2
            captured = capsys.readouterr()
            assert message in captured.err and captured.out == ""
    for flags, message in ((["--passages", "0"], "passages must be"), (["-k", "0"], "k must be"),
                           (["-k", "100000"], "k must be")):
        assert main(["query", "--store", built_store.label, *flags, "AF"]) == 2
        assert message in capsys.readouterr().err
    # mixed scripts: an answer, printed as JSON that keeps the non-Latin text
    assert main(["query", "--store", built_store.label, "--json", "-k", "2", "AF 心房颤动"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["entry"] for r in rows][0] == "atrial_fibrillation" and len(rows) == 2


def test_cli_process_handles_non_utf8_bytes_and_ascii_terminals(built_store):
    """Bytes that are not UTF-8 in argv reach Python as lone surrogates: the real process exits 2, not a traceback."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, "-m", "retrieval", "query", "--store", built_store.label,
                             os.fsencode("AF ") + b"\xff\xfe"], capture_output=True, env=env, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, err
    assert "not valid Unicode text" in err and "Traceback" not in err
    # an ASCII-only terminal gets escapes for the corpus's "—" and "′", not a UnicodeEncodeError
    result = subprocess.run([sys.executable, "-m", "retrieval", "query", "--store", built_store.label, "-k", "2",
                             "--passages", "3", "M-shaped QRS in V1"], capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "ascii"}, cwd=Path(__file__).resolve().parents[2])
    out = result.stdout.decode("ascii")
    assert result.returncode == 0, result.stderr.decode("ascii", "replace")
    assert "crbbb \\u2014 Complete right bundle branch block" in out and "\\u2032" in out


@pytest.mark.parametrize("query", ["AF 心房颤动", "Vorhofflimmern", "fibrillation auriculaire", "QRS\x00\x07 wide",
                                   "!!! ??? AF", "a", "120", "ＡＦ", "\u202eAF \U0001F600", "ST-elevation " * 150])
def test_odd_but_usable_queries_get_an_answer(built_store, query):
    if query == "120":
        with pytest.raises(QueryError, match="no Latin letters"):
            built_store.search_findings(query)
        return
    findings = built_store.search_findings(query, k=3)
    assert len(findings) == 3 and len({f.entry for f in findings}) == 3
    if query.startswith(("AF", "!!!", "ＡＦ", "\u202eAF")):  # full-width letters are NFKC-folded to "AF"
        assert findings[0].entry == "atrial_fibrillation"
    if query.startswith("ST-elevation"):  # 1,950 characters: under the limit, embedded truncated, still on topic
        assert findings[0].entry == "ste"


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


REAL_BROKEN = {  # each is broken in a way YAML alone would accept or a user might plausibly write
    "zz_null_alias.md": GOOD.format(id="zz_null", name="Null alias", alias="ZNA").replace("aliases: [ZNA]",
                                                                                      "aliases:\n  - ZNA\n  -"),
    "zz_list_alias.md": GOOD.format(id="zz_list", name="List alias", alias="[ZLA]"),
    "zz_null_name.md": GOOD.format(id="zz_name", name="", alias="ZNN"),
    "zz_not_utf8.md": None,
    "zz_unclosed.md": GOOD.format(id="zz_open", name="Unclosed", alias="ZU").replace("---\n## Definition",
                                                                                      "## Definition"),
    "atrial_fibrillation_copy.md": None,  # a second file claiming the real 'atrial_fibrillation' id
}


def test_broken_files_beside_the_real_corpus_are_named_and_never_reach_the_store(
        tmp_path, knowledge_snapshot, hash_embeddings):
    """The real corpus plus broken files: every real entry is built, each broken file is named, none is indexed,
    and breaking a file that was good later removes only that entry's chunks."""
    folder = tmp_path / "entries"
    shutil.copytree(knowledge_snapshot, folder)
    real = {path.stem for path in knowledge_snapshot.glob("*.md")}
    for name, text in REAL_BROKEN.items():
        if name == "zz_not_utf8.md":
            (folder / name).write_bytes(GOOD.format(id="zz_bytes", name="Bütes", alias="ZB").encode("latin-1"))
        elif name == "atrial_fibrillation_copy.md":
            shutil.copy2(folder / "atrial_fibrillation.md", folder / name)
        else:
            (folder / name).write_text(text, encoding="utf-8")
    store = KnowledgeStore.build(tmp_path / "store", embeddings=hash_embeddings(32), knowledge_dir=folder,
                                 progress=False)
    skipped = store.build_report.skipped
    assert len(skipped) == len(REAL_BROKEN)
    for name, reason in (("zz_null_alias.md", "aliases item None"), ("zz_list_alias.md", "aliases item ['ZLA']"),
                         ("zz_null_name.md", "name None must be a non-empty string"),
                         ("zz_not_utf8.md", "can't decode"), ("zz_unclosed.md", "front matter"),
                         ("atrial_fibrillation_copy.md", "duplicate id 'atrial_fibrillation'")):
        assert sum(name in message and reason in message for message in skipped) == 1, (name, skipped)
    indexed = {m["entry"] for m in store.vectorstore.get()["metadatas"]}
    assert indexed == real  # all 138 real entries, nothing from a broken file
    assert store.search_findings("atrial fibrillation", k=3)[0].entry == "atrial_fibrillation"

    chunks_before = store.count()
    lafb_chunks = len(store.vectorstore.get(where={"entry": "lafb"})["ids"])
    text = (folder / "lafb.md").read_text(encoding="utf-8")
    (folder / "lafb.md").write_text(text.replace("category:", "category: [", 1), encoding="utf-8")
    again = KnowledgeStore.build(tmp_path / "store", embeddings=hash_embeddings(32), knowledge_dir=folder,
                                 progress=False)
    report = again.build_report
    assert any("lafb.md" in message and "not valid YAML" in message for message in report.skipped)
    assert (report.added, report.removed, report.total) == (0, lafb_chunks, chunks_before - lafb_chunks)
    assert {m["entry"] for m in again.vectorstore.get()["metadatas"]} == real - {"lafb"}
    assert not again.build_report.rebuilt and again.search_findings("LAFB", k=1)[0].entry != "lafb"
