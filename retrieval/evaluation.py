"""Entry-level retrieval quality: recall@k of expected knowledge entries for paraphrased queries.

Eval file format (JSON lines): ``{"query": "...", "expected": ["crbbb"], "kind": "description"}``; a hit at k
means any of the top-k chunks comes from one of the expected entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EvalItem:
    query: str
    expected: tuple[str, ...]
    kind: str = ""


def load_eval_set(path: str | os.PathLike[str]) -> list[EvalItem]:
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            expected = raw["expected"]
            expected = (expected,) if isinstance(expected, str) else tuple(expected)
            items.append(EvalItem(str(raw["query"]), expected, str(raw.get("kind", ""))))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: bad eval item ({err})") from err
    return items


def evaluate(
    store: Any, items: Sequence[EvalItem], ks: Iterable[int] = (1, 5), max_per_entry: int | None = None,
) -> dict[str, Any]:
    """recall@k per k (overall and per kind) plus the misses at the largest k (``store.search_many`` ranking)."""
    ks = sorted(set(ks))
    depth = ks[-1]
    hits = {k: 0 for k in ks}
    by_kind: dict[str, dict[str, float]] = {}
    misses = []
    results = store.search_many([item.query for item in items], k=depth, max_per_entry=max_per_entry)
    for item, passages in zip(items, results):
        ranked = [p.entry for p in passages]
        kind = by_kind.setdefault(item.kind, {"n": 0, **{f"recall@{k}": 0.0 for k in ks}})
        kind["n"] += 1
        for k in ks:
            found = any(entry in item.expected for entry in ranked[:k])
            hits[k] += found
            kind[f"recall@{k}"] += found
        if not any(entry in item.expected for entry in ranked):
            misses.append({"query": item.query, "expected": list(item.expected), "got": ranked})
    for kind in by_kind.values():
        for k in ks:
            kind[f"recall@{k}"] = round(kind[f"recall@{k}"] / kind["n"], 4)
    result: dict[str, Any] = {"n": len(items)}
    result.update({f"recall@{k}": round(hits[k] / max(1, len(items)), 4) for k in ks})
    result["by_kind"] = by_kind
    result["misses"] = misses
    return result
