"""Fixtures for the API tests: a tiny randomly initialised ESI model, 20 indexed PTB-XL records and a small
text collection of real MIMIC-IV-ECG statements, built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

LIMIT_BYTES = 2_000_000


CAPTION_TEXTS = [
    "sinus rhythm. normal ecg.",
    "atrial fibrillation with rapid ventricular response.",
    "left ventricular hypertrophy with st-t changes.",
    "complete right bundle branch block.",
    "inferior myocardial infarction, old.",
]


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """A randomly initialised ESIModel (the registered ``micro`` config) that builds in a few seconds."""
    from esi.model.factory import save_random_model

    return save_random_model(directory, "micro", seed=seed, captions=CAPTION_TEXTS)


def index_ptbxl(model_dir: Path, store_dir: Path, ptbxl_root: Path, n_records: int = 20,
                collection: str = "ecg") -> list[str]:
    """Index the first ``n_records`` PTB-XL records (100 Hz) into ``store_dir``; returns their item ids."""
    from corpora.registry import get_reader
    from esi.serve.inference import ESIInference
    from esi.serve.search import ECGIndex, item_id, open_collection

    inference = ESIInference(model_dir)
    reader = get_reader("ptbxl", ptbxl_root)
    record_ids = reader.record_ids()[:n_records]
    index = ECGIndex(inference, open_collection(str(store_dir), collection, kind="ecg", inference=inference,
                                                model_dir=str(model_dir)))
    report = index.index_reader(reader, record_ids, progress=False)
    assert not report.skipped, report.skipped
    return [item_id(reader.name, r) for r in record_ids]


def index_texts(model_dir: Path, store_dir: Path, texts: list[str], text_file: Path,
                collection: str = "texts") -> list[str]:
    """Index ``texts`` (one per line of ``text_file``) as an ESI text collection; returns the distinct texts."""
    from esi.serve.inference import ESIInference
    from esi.serve.search import TextIndex, file_texts, open_collection

    text_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    inference = ESIInference(model_dir)
    items = file_texts(text_file)
    index = TextIndex(inference, open_collection(str(store_dir), collection, kind="text", inference=inference))
    index.add_texts(items)
    return [item.text for item in items]



@dataclass
class APIEnv:
    model_dir: Path
    store_dir: Path
    item_ids: list[str]
    texts: list[str]
    knowledge_dir: Path


KNOWLEDGE_ENTRIES = ("atrial_fibrillation", "lvh", "sinus_rhythm")


def build_knowledge_store(store_dir: Path, entries_folder: Path) -> Path:
    """A real KnowledgeStore (MiniLM embeddings) over a few knowledge entries: small enough to build in seconds."""
    import shutil

    from corpora.knowledge import entries_dir
    from retrieval.store import KnowledgeStore

    entries_folder.mkdir(parents=True, exist_ok=True)
    for name in KNOWLEDGE_ENTRIES:
        shutil.copy2(entries_dir() / f"{name}.md", entries_folder / f"{name}.md")
    KnowledgeStore.build(store_dir, knowledge_dir=entries_folder, progress=False)
    return store_dir


@pytest.fixture(scope="session")
def api_env(tmp_path_factory: pytest.TempPathFactory, ptbxl_root: Path, mimic_statements: list[str]) -> APIEnv:
    root = tmp_path_factory.mktemp("esi-api")
    model_dir = save_tiny_model(root / "model")
    store_dir = root / "store"
    item_ids = index_ptbxl(model_dir, store_dir, ptbxl_root, n_records=20)
    texts = index_texts(model_dir, store_dir, mimic_statements[:40], root / "texts.txt")
    knowledge_dir = build_knowledge_store(root / "knowledge-store", root / "knowledge-entries")
    return APIEnv(model_dir, store_dir, item_ids, texts, knowledge_dir)


@pytest.fixture(scope="session")
def app(api_env: APIEnv):
    from esi.serve.api.app import create_app

    return create_app(api_env.model_dir, api_env.store_dir, collection="ecg", text_collection="texts",
                      knowledge_store=api_env.knowledge_dir, max_body_bytes=LIMIT_BYTES, max_upload_seconds=60.0)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client
