"""Fixtures for the CQA tests: an in-memory passage store over the real knowledge corpus, a fake
OpenAI-compatible server, and (slow) the real Chroma store and the SmolLM2 model, each built once."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from corpora.knowledge import load_entries


@dataclass(frozen=True)
class FakePassage:
    text: str
    score: float
    entry: str
    section: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "score": self.score, "entry": self.entry, "section": self.section}


class SectionStore:
    """Deterministic stand-in for retrieval.KnowledgeStore: an entry's own sections, best first."""

    ORDER = ("waveform features", "diagnostic criteria", "definition", "mechanism", "common confusions")

    def __init__(self, extra: Mapping[str, list[str]] | None = None):
        self.entries = {e.id: e for e in load_entries()}
        self.extra = dict(extra or {})
        self.queries: list[tuple[str, int, Any]] = []

    def search(self, query: str, k: int = 5, where: Mapping[str, Any] | None = None) -> list[FakePassage]:
        self.queries.append((query, k, where))
        entry = self.entries[(where or {})["entry"]]
        passages = [FakePassage(text, 1.0, entry.id, "injected") for text in self.extra.get(entry.id, [])]
        passages += [FakePassage(f"{entry.name} — {name.capitalize()}:\n{entry.sections[name]}", 0.9 - i / 10,
                                 entry.id, name.capitalize()) for i, name in enumerate(self.ORDER)]
        return passages[:k]


@pytest.fixture
def make_store() -> type[SectionStore]:
    """The SectionStore class (tests build one with their own injected passages)."""
    return SectionStore


def rephrase_first_feature(prompt: str) -> str:
    """What a good small model does with the description prompt: one sentence from the first feature bullet
    ("V1: rsR′ complex" -> "<finding> shows rsR′ complex in V1.")."""
    finding = prompt.split("<finding>")[1].split("</finding>")[0]
    bullet = next(line[2:] for line in prompt.split("<features>")[1].splitlines() if line.startswith("- "))
    where, _, what = bullet.partition(": ")
    sentence = f"{finding} shows {what} in {where}" if re.search(r"\b(?:aV[RLF]|V\d|I{1,3})\b", where) else (
        f"{finding} shows {where.lower()} {what}" if what else f"{finding} shows {bullet}")
    return sentence.rstrip(" .") + "."


class _ChatHandler(BaseHTTPRequestHandler):
    delay_s = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)  # type: ignore[attr-defined]
        time.sleep(self.server.delay_s)  # type: ignore[attr-defined]
        text = rephrase_first_feature(body["messages"][-1]["content"])
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_openai_server() -> Iterator[ThreadingHTTPServer]:
    """A loopback OpenAI-compatible chat endpoint answering one deterministic sentence per finding."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.requests = []  # type: ignore[attr-defined]
    server.delay_s = 0.0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def knowledge_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Chroma knowledge store over the built-in corpus (embedding it takes a minute or two)."""
    from retrieval import KnowledgeStore

    path = tmp_path_factory.mktemp("cqa-store") / "store"
    KnowledgeStore.build(path, progress=False)
    return path


@pytest.fixture(scope="session")
def smollm2_backend():  # type: ignore[no-untyped-def]
    """SmolLM2-135M loaded once per session (~20 s)."""
    from cqa.llm import load_llm

    return load_llm("smollm2", timeout_s=120)
