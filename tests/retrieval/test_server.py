"""Client/server mode against a real local Chroma server (``chroma run``) started by the test."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import (
    ClientError,
    KnowledgeStore,
    QueryError,
    StoreError,
    StoreIncompleteError,
    VectorCollection,
    open_client,
)
from retrieval.service import ServiceError, free_port, start_service, stop_service

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    chroma = Path(sys.executable).with_name("chroma")
    if not chroma.exists():
        pytest.fail(f"chroma CLI not found next to {sys.executable}")
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    url = f"http://127.0.0.1:{port}"
    try:
        process = start_service([str(chroma), "run", "--path", str(data / "db"), "--host", "127.0.0.1",
                                 "--port", str(port)], f"{url}/api/v2/heartbeat", data / "server.log", timeout_s=60)
    except ServiceError as err:
        pytest.fail(f"chroma server did not start: {err}")
    try:
        yield url
    finally:
        stop_service(process, timeout_s=15)


def test_knowledge_store_over_http(chroma_url, tmp_path, minilm):
    doc = tmp_path / "wpw.md"
    doc.write_text("# Pre-excitation\nShort PR interval with a delta wave slurring the QRS upstroke.\n",
                   encoding="utf-8")
    built = KnowledgeStore.build(chroma_url, docs=[doc], embeddings=minilm, include_knowledge=False,
                                 progress=False, collection="server-test")
    assert built.build_report.added == 1
    store = KnowledgeStore.open(chroma_url, embeddings=minilm, collection="server-test")
    assert store.manifest["complete"] and store.manifest["dimension"] == 384
    hit = store.search("delta wave", k=1)[0]
    assert hit.source == str(doc.resolve()) and hit.section == "Pre-excitation"
    # bad input over HTTP: the same clear errors as on a directory store, and the server keeps answering
    for query, message in (("", "empty"), ("delta wave " * 1000, "limit is"), ("дельта-волна", "no Latin letters"),
                           ("delta \udcff", "not valid Unicode")):
        with pytest.raises(QueryError, match=message):
            store.search_findings(query)
        with pytest.raises(QueryError, match=message):
            store.retriever().invoke(query)
    assert store.search_findings("ＤＥＬＴＡ wave 预激", k=1)[0].source == str(doc.resolve())
    again = KnowledgeStore.build(open_client(chroma_url), docs=[doc], embeddings=minilm, include_knowledge=False,
                                 progress=False, collection="server-test")
    assert (again.build_report.added, again.build_report.unchanged) == (0, 1)

    client = open_client(chroma_url)
    foreign = client.get_or_create_collection("foreign", embedding_function=None)
    foreign.add(ids=["x"], embeddings=[[1.0, 0.0]], documents=["someone else's data"])
    with pytest.raises(StoreIncompleteError, match="has no manifest"):
        KnowledgeStore.open(client, embeddings=minilm, collection="foreign")
    with pytest.raises(StoreError, match="not built by this package"):
        KnowledgeStore.build(client=client, docs=[doc], embeddings=minilm, include_knowledge=False,
                             progress=False, collection="foreign")
    assert foreign.count() == 1  # untouched


def test_vector_collection_over_http(chroma_url):
    collection = VectorCollection(chroma_url, "ecg-vectors")
    assert collection.query(np.ones(4), k=2) == []
    collection.add(["a", "b"], np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), [{"kind": "x"}, {"kind": "y"}])
    hits = collection.query(np.array([0.9, 0.1, 0, 0]), k=2)
    assert [h.id for h in hits] == ["a", "b"] and hits[0].score > hits[1].score


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(ClientError, match="cannot reach Chroma server at http://127.0.0.1:"):
        open_client(f"http://127.0.0.1:{free_port()}")
