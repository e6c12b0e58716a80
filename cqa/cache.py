"""Persistent description cache (SQLite, one transaction per write), so re-runs cost no LLM call.

Key: sha256 of (finding id, grounding passage texts, knowledge_version, model id, prompt hash). A new
dataset that shares findings with an earlier run reuses the descriptions; changing the corpus, the
model, the prompt or the passages changes the key. The prompt hash (``cqa.llm.Describer.prompt_hash``)
covers the prompt YAML (system text, template, few-shot examples), the code that renders it
(``cqa.llm.PROMPT_FORMAT``) and ``max_new_tokens``; paraphrase variants add a ``:vN`` suffix. Both
accepted LLM descriptions and rejected ones (stored with source "grounded" and the rejection reason)
are cached, because decoding is greedy and the same input would fail the same way; timeouts and backend
errors are not cached (transient). An accepted text is validated again when read
(``cqa.caption.Captioner``), so a stricter validator never serves what an older one let through.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS descriptions (
    key TEXT PRIMARY KEY,
    finding TEXT NOT NULL,
    knowledge_version TEXT NOT NULL,
    model_id TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    reason TEXT,
    raw TEXT,
    created REAL NOT NULL
)
"""


@dataclass
class CachedDescription:
    text: str
    source: str  # "llm" | "grounded"
    reason: str | None
    raw: str | None


def cache_key(finding: str, passages: Sequence[str], knowledge_version: str, model_id: str,
              prompt_hash: str) -> str:
    payload = json.dumps([finding, list(passages), knowledge_version, model_id, prompt_hash], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class DescriptionCache:
    """A small SQLite table; safe against SIGKILL (WAL journal, each put is one committed transaction)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get(self, key: str) -> CachedDescription | None:
        with self._lock:
            row = self._db.execute("SELECT text, source, reason, raw FROM descriptions WHERE key = ?",
                                   (key,)).fetchone()
        return CachedDescription(*row) if row else None

    def put(self, key: str, *, finding: str, knowledge_version: str, model_id: str, prompt_hash: str,
            value: CachedDescription) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO descriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, finding, knowledge_version, model_id, prompt_hash, value.text, value.source,
                 value.reason, value.raw, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM descriptions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
