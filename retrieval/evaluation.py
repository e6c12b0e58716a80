"""Entry-level retrieval quality: recall@k of expected knowledge entries for paraphrased queries.

Eval file format (JSON lines): ``{"query": "...", "expected": ["crbbb"], "kind": "description"}``; a hit at k
means any of the top-k results (findings, or chunks in the chunk view) comes from one of the expected entries.
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
    """recall@k per k (overall and per kind) plus the misses at the largest k, over the chunk view
    (``store.search_many``; ``max_per_entry=1`` makes the top-k chunks k distinct entries)."""
    ks = sorted(set(ks))
    results = store.search_many([item.query for item in items], k=ks[-1], max_per_entry=max_per_entry)
    return score_rankings(items, [[p.entry for p in passages] for passages in results], ks)


def evaluate_findings(store: Any, items: Sequence[EvalItem], ks: Iterable[int] = (1, 5)) -> dict[str, Any]:
    """:func:`evaluate` over the finding view (``store.search_findings_many``: k distinct findings)."""
    ks = sorted(set(ks))
    results = store.search_findings_many([item.query for item in items], k=ks[-1], passages=1)
    return score_rankings(items, [[f.entry for f in findings] for findings in results], ks)


def score_rankings(items: Sequence[EvalItem], rankings: Sequence[Sequence[str]], ks: Iterable[int]) -> dict[str, Any]:
    """recall@k of ranked entry ids against each item's expected entries (overall, per kind, misses at max k)."""
    ks = sorted(set(ks))
    hits = {k: 0 for k in ks}
    by_kind: dict[str, dict[str, float]] = {}
    misses = []
    for item, ranked in zip(items, rankings):
        kind = by_kind.setdefault(item.kind, {"n": 0, **{f"recall@{k}": 0.0 for k in ks}})
        kind["n"] += 1
        for k in ks:
            found = any(entry in item.expected for entry in ranked[:k])
            hits[k] += found
            kind[f"recall@{k}"] += found
        if not any(entry in item.expected for entry in ranked[:ks[-1]]):
            misses.append({"query": item.query, "expected": list(item.expected), "got": list(ranked[:ks[-1]])})
    for kind in by_kind.values():
        for k in ks:
            kind[f"recall@{k}"] = round(kind[f"recall@{k}"] / kind["n"], 4)
    result: dict[str, Any] = {"n": len(items)}
    result.update({f"recall@{k}": round(hits[k] / max(1, len(items)), 4) for k in ks})
    result["by_kind"] = by_kind
    result["misses"] = misses
    return result
