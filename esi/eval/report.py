"""The Markdown report of an evaluation: one row per metric, one column per model."""

from __future__ import annotations

from typing import Any

from esi.model.io import format_number


def summary_rows(model_results: dict[str, Any]) -> dict[str, Any]:
    """Flat ``metric -> value`` view of one model's results (the rows of the Markdown table)."""
    rows: dict[str, Any] = {}
    for variant, r in model_results.get("zeroshot", {}).items():
        rows[f"zero-shot {variant}: macro AUC"] = r.get("macro_auc")
        rows[f"zero-shot {variant}: macro F1"] = r.get("macro_f1")
        for reference, ref in r.get("references", {}).items():
            rows[f"reference {variant} ({reference.replace('_', '-')}): macro AUC"] = ref.get("macro_auc")
    for r in model_results.get("query", {}).values():
        for k in (5, 10):
            rows[f"query by text: mean precision@{k} (chance {format_number(r.get('mean_chance'))}, best possible "
                 f"{format_number(r.get(f'mean_ceiling@{k}'))})"] = r.get(f"mean_precision@{k}")
            if f"mean_probe_precision@{k}" in r:
                rows[f"reference (supervised linear probe): query mean precision@{k}"] = r[f"mean_probe_precision@{k}"]
        for query, q in r.get("queries", {}).items():
            rows[f"query \"{query}\": precision@5 (chance {format_number(q.get('chance'))})"] = q.get("precision@5")
    for variant, r in model_results.get("probe", {}).items():
        for fraction, f in r.get("fractions", {}).items():
            rows[f"linear probe {variant} {float(fraction):.0%}: macro AUC"] = f.get("macro_auc")
    for variant, r in model_results.get("finetune", {}).items():
        for run in ("esi_init", "random_init"):
            if run in r:
                rows[f"fine-tune {variant} ({run.replace('_', ' ')}): macro AUC"] = r[run].get("macro_auc")
                rows[f"fine-tune {variant} ({run.replace('_', ' ')}): macro F1"] = r[run].get("macro_f1")
    for r in model_results.get("patient_id", {}).values():
        for mode in ("records", "segments"):
            rows[f"patient id ({mode}): top-1 accuracy"] = r[mode].get("top1_accuracy")
            rows[f"patient id ({mode}): pair AUC"] = r[mode].get("pair_auc")
    for variant, r in model_results.get("retrieval", {}).items():
        for direction in ("ecg_to_text", "text_to_ecg"):
            for metric, value in r.get(direction, {}).items():
                rows[f"retrieval {variant} {direction.replace('_', '→').replace('→to→', '→')}: {metric}"] = value
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    """One row per metric, one column per model (so a CQA-vs-label-text comparison reads across)."""
    names = list(results["models"])
    rows = {name: summary_rows(results["models"][name]) for name in names}
    metrics = list(dict.fromkeys(m for name in names for m in rows[name]))
    opts = results["options"]
    lines = [
        "# ESI evaluation", "",
        f"PTB-XL root `{opts['root']}`; train folds {opts['train_folds']}, test folds {opts['test_folds']}. "
        "Zero-shot F1 thresholds are chosen on the training folds' scores; AUC skips classes without "
        "positive or negative test records (see results.json). PTB-XL: Wagner et al., Sci Data 2020 (CC BY 4.0).",
        "", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
    ]
    lines += [f"| {m} | " + " | ".join(format_number(rows[n].get(m)) for n in names) + " |" for m in metrics]
    return "\n".join(lines) + "\n"
