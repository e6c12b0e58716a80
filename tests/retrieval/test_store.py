from __future__ import annotations

import json

import numpy as np
import pytest
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from corpora.knowledge import load_entries
from retrieval import (
    MAX_QUERY_CHARS,
    DocumentError,
    EmbeddingMismatchError,
    KnowledgeStore,
    QueryError,
    StoreError,
    StoreIncompleteError,
    format_documents,
)
from retrieval.chunking import knowledge_chunks
from retrieval.store import MANIFEST_FILE


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ full corpus


def test_store_holds_one_chunk_per_section_plus_summary(built_store, knowledge_snapshot):
    entries = load_entries(str(knowledge_snapshot))
    expected = knowledge_chunks(entries)
    assert built_store.count() == len(expected) == built_store.manifest["chunks"]
    assert built_store.manifest["complete"] is True
    assert built_store.manifest["dimension"] == 384
    assert built_store.manifest["embedding_model"] == "all-MiniLM-L6-v2"
    assert not built_store.is_stale(knowledge_snapshot)
    got = built_store.vectorstore.get(where={"entry": "crbbb"})
    sections = {m["section"] for m in got["metadatas"]}
    assert {"Summary", "Definition", "Mechanism", "Diagnostic criteria", "Waveform features",
            "Common confusions"} <= sections
    assert all(text.startswith("Complete right bundle branch block — ") for text in got["documents"])
    assert all(m["codes"] == "|CRBBB|713427006|59118001|" for m in got["metadatas"])


def test_search_returns_scored_passages_with_metadata(built_store):
    passages = built_store.search("M-shaped QRS in V1 with a wide S wave in lead I", k=5)
    assert len(passages) == 5
    top = passages[0]
    assert top.entry == "crbbb"
    assert top.category == "conduction" and top.source == "knowledge:crbbb.md" and top.page is None
    assert "CRBBB" in top.codes and "713427006" in top.codes
    assert top.section in {"Waveform features", "Diagnostic criteria", "Summary", "Definition"}
    scores = [p.score for p in passages]
    assert scores == sorted(scores, reverse=True)
    # the dense part is the cosine of the query and chunk embeddings (the fusion is recomputed in test_ranking.py)
    query = np.asarray(built_store.embeddings.embed_query("M-shaped QRS in V1 with a wide S wave in lead I"))
    chunks = np.asarray(built_store.embeddings.embed_documents([p.text for p in passages]))
    cosine = chunks @ query / (np.linalg.norm(chunks, axis=1) * np.linalg.norm(query))
    assert [p.dense_score for p in passages] == pytest.approx(cosine.tolist(), abs=1e-4)
    for p in passages:
        assert p.score > 0
    assert top.lexical_score > 0 and top.dense_score > 0.2


def test_filters_by_category_entry_and_code(built_store):
    query = "tall R wave in V1"
    by_category = built_store.search(query, k=8, where={"category": "conduction"})
    assert by_category and all(p.category == "conduction" for p in by_category)
    by_entry = built_store.search(query, k=3, where={"entry": "crbbb"})
    assert len(by_entry) == 3 and {p.entry for p in by_entry} == {"crbbb"}
    by_code = built_store.search(query, k=20, where={"code": "713427006"})
    assert by_code and all("713427006" in p.codes for p in by_code)
    both = built_store.search(query, k=20, where={"code": {"$in": ["CRBBB", "NO-SUCH-CODE"]},
                                                  "section": "Summary"})
    assert [(p.entry, p.section) for p in both] == [("crbbb", "Summary")]
    assert built_store.search(query, k=5, where={"code": "NO-SUCH-CODE"}) == []
    with pytest.raises(QueryError, match="unknown filter key 'categroy'"):
        built_store.search(query, where={"categroy": "conduction"})


def test_search_many_matches_search(built_store):
    queries = ["sawtooth flutter waves", "delta wave with short PR"]
    batched = built_store.search_many(queries, k=3)
    for query, passages in zip(queries, batched):
        single = built_store.search(query, k=3)
        assert [p.id for p in passages] == [p.id for p in single]
        assert [p.score for p in passages] == pytest.approx([p.score for p in single], abs=1e-4)
    assert built_store.search_many([], k=3) == []
    with pytest.raises(QueryError, match="empty"):
        built_store.search_many(["ok", ""])


def test_bad_queries_are_clear_errors(built_store):
    with pytest.raises(QueryError, match="empty"):
        built_store.search("   ")
    with pytest.raises(QueryError, match=f"limit is {MAX_QUERY_CHARS}"):
        built_store.search("wide QRS " * 300)
    assert built_store.search("x" * MAX_QUERY_CHARS, k=1)  # the limit itself is allowed
    with pytest.raises(QueryError, match="k must be"):
        built_store.search("wide QRS", k=0)


def test_retriever_in_an_lcel_chain(built_store):
    retriever = built_store.retriever(k=3, where={"category": "conduction"})
    docs = retriever.invoke("complete RBBB with an rsR' complex in V1")
    assert len(docs) == 3 and "crbbb" in [d.metadata["entry"] for d in docs] and "score" in docs[0].metadata
    assert all(d.metadata["category"] == "conduction" for d in docs)
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = {"context": retriever | RunnableLambda(format_documents), "question": RunnablePassthrough()} | prompt
    text = chain.invoke("What does RBBB look like in V1?").to_messages()[0].content
    assert text.startswith("Context:\n[1] (") and "Question: What does RBBB look like in V1?" in text
    assert "[3]" in text and "[4]" not in text


def test_rebuild_with_same_input_changes_nothing(built_store, minilm, knowledge_snapshot):
    before = built_store.count()
    again = KnowledgeStore.build(built_store.label, embeddings=minilm, knowledge_dir=knowledge_snapshot,
                                 progress=False)
    report = again.build_report
    assert (report.added, report.removed, report.unchanged) == (0, 0, before)
    assert again.count() == before and not report.rebuilt


# --------------------------------------------------------------------------------------- user documents


def test_incremental_build_of_user_documents(tmp_path, minilm):
    docs = tmp_path / "docs"
    docs.mkdir()
    notes = write(docs / "notes.md", "# Bundle branch blocks\n\n## Right\nAn rsR' pattern in V1 with a wide "
                  "S in I and V6.\n\n## Left\nBroad notched R waves in I, aVL, V5 and V6.\n")
    plain = write(docs / "hyperkalaemia.txt", "Hyperkalaemia causes tall, narrow, peaked T waves, then "
                  "P-wave flattening and QRS widening as potassium rises.")
    store_dir = tmp_path / "store"
    first = KnowledgeStore.build(store_dir, docs=[docs], embeddings=minilm, include_knowledge=False,
                                 progress=False)
    assert (first.build_report.added, first.build_report.removed) == (3, 0) and first.count() == 3
    hit = first.search("peaked T waves from high potassium", k=1)[0]
    assert hit.source == str(plain.resolve()) and hit.category == "document" and hit.entry == ""
    assert hit.text.startswith("hyperkalaemia:\n")
    md_hit = first.search("left bundle branch block notched R", k=1)[0]
    assert md_hit.section == "Bundle branch blocks > Left" and md_hit.text.startswith("notes — Bundle")

    same = KnowledgeStore.build(store_dir, docs=[docs], embeddings=minilm, include_knowledge=False,
                                progress=False).build_report
    assert (same.added, same.unchanged, same.removed) == (0, 3, 0)

    write(plain, "Hyperkalaemia: peaked T waves, a sine-wave pattern when severe.")
    changed = KnowledgeStore.build(store_dir, docs=[docs], embeddings=minilm, include_knowledge=False,
                                   progress=False)
    assert (changed.build_report.added, changed.build_report.unchanged, changed.build_report.removed) == (1, 2, 1)
    assert "sine-wave" in changed.search("peaked T waves", k=1)[0].text

    notes.unlink()
    removed = KnowledgeStore.build(store_dir, docs=[docs], embeddings=minilm, include_knowledge=False,
                                   progress=False)
    assert (removed.build_report.added, removed.build_report.removed) == (0, 2)
    assert removed.count() == 1
    assert KnowledgeStore.open(store_dir, embeddings=minilm).count() == 1


def _two_page_pdf(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        for text in ("Chapter 1. The normal sinus rhythm has a P wave before every QRS.",
                     "Chapter 2. Brugada pattern: coved ST elevation in V1 and V2."):
            fig = plt.figure(figsize=(8, 2))
            fig.text(0.05, 0.5, text, fontsize=10)
            pdf.savefig(fig)
            plt.close(fig)
    return path


def test_pdf_pages_are_indexed_with_page_numbers(tmp_path, minilm):
    from pypdf import PdfReader

    pdf = _two_page_pdf(tmp_path / "textbook.pdf")
    assert "Brugada" in PdfReader(str(pdf)).pages[1].extract_text()
    store = KnowledgeStore.build(tmp_path / "store", docs=[pdf], embeddings=minilm, include_knowledge=False,
                                 progress=False)
    hit = store.search("coved ST elevation in the right precordial leads", k=1)[0]
    assert hit.page == 2 and hit.section == "page 2" and hit.source == str(pdf.resolve())
    assert hit.text.startswith("textbook — page 2:")


def test_broken_and_unsupported_documents_are_clear_errors(tmp_path, minilm):
    good = write(tmp_path / "good.txt", "Atrial flutter shows sawtooth flutter waves in II, III and aVF.")
    store_dir = tmp_path / "store"
    KnowledgeStore.build(store_dir, docs=[good], embeddings=minilm, include_knowledge=False, progress=False)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage without xref")
    with pytest.raises(DocumentError, match=r"broken\.pdf: cannot parse PDF"):
        KnowledgeStore.build(store_dir, docs=[good, broken], embeddings=minilm, include_knowledge=False,
                             progress=False)
    store = KnowledgeStore.open(store_dir, embeddings=minilm)  # untouched by the failed build
    assert store.count() == 1 and store.manifest["complete"]
    with pytest.raises(DocumentError, match=r"scan\.docx: unsupported document type"):
        KnowledgeStore.build(store_dir, docs=[write(tmp_path / "scan.docx", "x")], embeddings=minilm,
                             include_knowledge=False, progress=False)
    with pytest.raises(DocumentError, match="missing.md: document not found"):
        KnowledgeStore.build(store_dir, docs=[tmp_path / "missing.md"], embeddings=minilm,
                             include_knowledge=False, progress=False)
    with pytest.raises(DocumentError, match="empty.md: no extractable text"):
        KnowledgeStore.build(store_dir, docs=[write(tmp_path / "empty.md", "\n\n")], embeddings=minilm,
                             include_knowledge=False, progress=False)


# ------------------------------------------------------------------------------ manifests and recovery


@pytest.fixture
def small_docs(tmp_path):
    return [write(tmp_path / "a.md", "# Sinus rhythm\nRegular P waves at 60-100 per minute.\n"),
            write(tmp_path / "b.txt", "Ventricular tachycardia: broad complex tachycardia with AV dissociation.")]


def test_other_embedding_model_is_refused_on_open_and_rebuilt_by_build(tmp_path, minilm, small_docs,
                                                                      hash_embeddings):
    store_dir = tmp_path / "store"
    KnowledgeStore.build(store_dir, docs=small_docs, embeddings=hash_embeddings(16), include_knowledge=False,
                         progress=False)
    with pytest.raises(EmbeddingMismatchError, match="dimension 16.*dimension 384"):
        KnowledgeStore.open(store_dir, embeddings=minilm)
    with pytest.raises(EmbeddingMismatchError, match="embeds differently"):
        KnowledgeStore.open(store_dir, embeddings=hash_embeddings(16, salt="other"))
    assert KnowledgeStore.open(store_dir, embeddings=hash_embeddings(16)).count() == 2

    rebuilt = KnowledgeStore.build(store_dir, docs=small_docs, embeddings=minilm, include_knowledge=False,
                                   progress=False)
    assert rebuilt.build_report.rebuilt and "dimension 16" in rebuilt.build_report.reason
    assert rebuilt.build_report.added == 2 and rebuilt.count() == 2
    assert KnowledgeStore.open(store_dir, embeddings=minilm).search("broad complex tachycardia", k=1)[0].source \
        == str(small_docs[1].resolve())


@pytest.mark.parametrize("damage", ["incomplete", "missing", "torn"])
def test_half_written_store_is_refused_and_rebuilt(tmp_path, small_docs, damage, hash_embeddings):
    embeddings = hash_embeddings(16)
    store_dir = tmp_path / "store"
    KnowledgeStore.build(store_dir, docs=small_docs, embeddings=embeddings, include_knowledge=False,
                         progress=False)
    manifest_path = store_dir / MANIFEST_FILE
    if damage == "incomplete":
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps(dict(manifest, complete=False)))
    elif damage == "missing":
        manifest_path.unlink()
    else:
        manifest_path.write_text(manifest_path.read_text()[:20])
    with pytest.raises(StoreIncompleteError, match="rebuild it with `python -m retrieval build"):
        KnowledgeStore.open(store_dir, embeddings=embeddings)
    store = KnowledgeStore.build(store_dir, docs=small_docs, embeddings=embeddings, include_knowledge=False,
                                 progress=False)
    assert store.build_report.rebuilt and store.build_report.added == 2 and store.count() == 2
    assert KnowledgeStore.open(store_dir, embeddings=embeddings).manifest["complete"] is True


def test_open_without_a_store_is_a_clear_error(tmp_path, minilm):
    with pytest.raises(StoreError, match="no knowledge store at .*nothing-here"):
        KnowledgeStore.open(tmp_path / "nothing-here", embeddings=minilm)
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(StoreError, match="no knowledge store at"):
        KnowledgeStore.open(tmp_path / "empty-dir", embeddings=minilm)
