"""Query by text: the class queries a user would type, scored as text -> ECG precision@k against chance."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esi.eval.data import EvalData, resolve_labelset
from esi.eval.probe import fit_probe
from esi.serve.inference import ESIInference
from esi.zeroshot.classifier import DEFAULT_QUERY_TEXT
from esi.zeroshot.labelsets import LabelSet, labelsets_dir


def query_set(path: str | Path | None = None) -> list[dict[str, str]]:
    """The class queries of ``esi/zeroshot/labelsets/queries/ptbxl.json`` (or a JSON file of the same shape)."""
    file = Path(path) if path else labelsets_dir() / "queries" / "ptbxl.json"
    queries = json.loads(file.read_text(encoding="utf-8")).get("queries")
    if not queries or not all(isinstance(q, dict) and "labelset" in q and "class" in q for q in queries):
        raise ValueError(f"{file}: 'queries' must be a list of {{labelset, class}} objects")
    return queries


def query_evaluation(
    inference: ESIInference, data: EvalData, *, folds: Sequence[int] | None, ks: Sequence[int] = (5, 10),
    query_text: str = DEFAULT_QUERY_TEXT, model_key: str = "", queries: Sequence[dict[str, str]] | None = None,
    reference_folds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Text->ECG precision@k of class queries (the class display name, as a user types it) over the
    records of ``folds``; each query's chance rate (its class prevalence there) is reported beside it.

    With ``reference_folds`` (the training folds), each query is also answered by a supervised reference:
    the records ranked by a linear probe (:func:`esi.eval.probe.fit_probe`) trained on those folds' labels
    and the same ECG embeddings. Text cannot be expected to beat it, so the gap between the two is what the
    text side loses, and the reference itself is what the ECG embedding allows.
    """
    has_labels = np.array([bool(labels) for labels in data.labels], dtype=bool)
    mask = data.fold_mask(folds) & has_labels
    all_embeddings = data.embeddings(inference, model_key)
    embeddings = all_embeddings[mask]
    labels = [lab for lab, keep in zip(data.labels, mask) if keep]
    train_mask = data.fold_mask(reference_folds) & has_labels if reference_folds else None
    if train_mask is not None and (train_mask & mask).any():
        raise ValueError(f"reference folds {list(reference_folds or [])} overlap the query folds {folds}")
    train_labels = [lab for lab, keep in zip(data.labels, train_mask) if keep] if train_mask is not None else []
    per_query: dict[str, Any] = {}
    skipped: list[str] = []
    resolved_sets: dict[str, LabelSet] = {}
    for item in queries or query_set():
        if item["labelset"] not in resolved_sets:
            resolved_sets[item["labelset"]] = resolve_labelset(data, item["labelset"])
        selected = resolved_sets[item["labelset"]].select([item["class"]])
        relevant = selected.targets(labels, data.vocabulary)[:, 0].astype(bool)
        query = item.get("query") or selected.classes[0].display
        order = np.argsort(-(embeddings @ inference.query_embedding(query, query_text)), kind="stable")
        if not relevant.any():  # nothing to find: left out of the means, listed
            skipped.append(query)
            continue
        row: dict[str, Any] = {"class": f"{item['labelset']}:{item['class']}", "n_relevant": int(relevant.sum()),
                               "chance": float(relevant.mean())}
        reference_order = None
        if train_mask is not None:
            train_relevant = selected.targets(train_labels, data.vocabulary)[:, 0]
            if 0 < train_relevant.sum() < len(train_relevant):  # a probe needs both kinds of record
                probe = fit_probe(all_embeddings[train_mask], train_relevant.astype(int))
                reference_order = np.argsort(-probe.decision_function(embeddings).ravel(), kind="stable")
        for k in ks:
            row[f"precision@{k}"] = float(relevant[order[:k]].mean())
            row[f"ceiling@{k}"] = min(k, int(relevant.sum())) / k  # the best any ranking can reach
            if reference_order is not None:
                row[f"probe_precision@{k}"] = float(relevant[reference_order[:k]].mean())
        per_query[query] = row
    if not per_query:
        raise ValueError(f"no class query has a relevant record in folds {folds}")
    summary = {f"mean_{m}@{k}": float(np.mean([r[f"{m}@{k}"] for r in per_query.values()]))
               for k in ks for m in ("precision", "ceiling")}
    referenced = [r for r in per_query.values() if f"probe_precision@{ks[0]}" in r]
    if referenced:  # over the queries the probe could answer (a class with training records)
        summary.update({f"mean_probe_precision@{k}": float(np.mean([r[f"probe_precision@{k}"] for r in referenced]))
                        for k in ks})
        summary["probe_queries"] = len(referenced)
    summary["mean_chance"] = float(np.mean([r["chance"] for r in per_query.values()]))
    return {"folds": folds, "n_records": int(mask.sum()), "query_text": query_text, **summary, "queries": per_query,
            "skipped_queries": skipped}
