"""The ``eval`` suite: every requested task for every model, resumable, written as JSON and Markdown.

Tasks are a registry (:data:`TASKS`): each :class:`Task` says which variants the options ask for
(label sets, caption kinds, ...), which dataset a variant reads, and how to run one variant; every
runner has the same signature ``(context, data, variant) -> result``. Adding a task is one entry here
and one function in its own module, with no branch to add anywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpora.base import RecordError
from esi.eval.data import EvalData, load_eval_data, merge_eval_data
from esi.eval.finetune import finetune_evaluation
from esi.eval.patient_id import patient_id_evaluation
from esi.eval.probe import probe_evaluation
from esi.eval.query import query_evaluation
from esi.eval.report import markdown_table
from esi.eval.retrieval import caption_texts, retrieval_evaluation
from esi.eval.zeroshot import zeroshot_evaluation
from esi.model.device import resolve_device
from esi.model.io import atomic_write_text, to_json
from esi.serve.inference import ESIInference
from esi.zeroshot.classifier import DEFAULT_CALIBRATION, DEFAULT_CLASS_TEXT, DEFAULT_QUERY_TEXT

ZEROSHOT_SETS = ("superclass", "subclass", "form", "rhythm")


@dataclass
class TaskContext:
    """What a runner may use besides its data: the model, the options, and the shared caption texts."""

    inference: ESIInference
    options: EvalOptions
    model_key: str  # caches embeddings per model
    text_cache: dict[str, list[str | None]] = field(default_factory=dict)

    def texts(self, data: EvalData, kind: str) -> list[str | None]:
        """Per record the ``cqa`` or ``label_text`` caption (:func:`caption_texts`), built once per data."""
        key = f"{kind}:{id(data)}"
        if key not in self.text_cache:
            self.text_cache[key] = caption_texts(data, kind, self.options.captions)
        return self.text_cache[key]


Runner = Callable[[TaskContext, EvalData, str], dict[str, Any]]


def _ptbxl(variant: str) -> str:
    return "ptbxl"


@dataclass(frozen=True)
class Task:
    """One task of the suite: the variants the options ask for, the dataset a variant reads, its runner."""

    variants: Callable[[EvalOptions], list[str]]
    run: Runner
    dataset: Callable[[str], str] = _ptbxl  # "ptbxl" or "cinc"


# ---- the runners: one per task, all (context, data, variant) -> result --------------------------------------

def _zeroshot_variants(options: EvalOptions) -> list[str]:
    return list(options.zeroshot_sets) + (["cinc_scored"] if options.cinc_root is not None else [])


def _run_zeroshot(ctx: TaskContext, data: EvalData, variant: str) -> dict[str, Any]:
    o = ctx.options
    text_options = {"templates": o.templates, "use_knowledge": o.knowledge, "class_text": o.class_text,
                    "calibration": o.calibration}
    if variant == "cinc_scored":  # CinC has no folds: AUC over every labelled record, no thresholds
        return zeroshot_evaluation(ctx.inference, data, variant, test_folds=None, threshold_folds=None,
                                   model_key=ctx.model_key, **text_options)
    return zeroshot_evaluation(ctx.inference, data, variant, test_folds=o.test_folds, threshold_folds=o.train_folds,
                               model_key=ctx.model_key, reference_texts=ctx.texts(data, "cqa"), **text_options)


def _run_probe(ctx: TaskContext, data: EvalData, variant: str) -> dict[str, Any]:
    return probe_evaluation(ctx.inference, data, variant, train_folds=ctx.options.train_folds,
                            test_folds=ctx.options.test_folds, model_key=ctx.model_key)


def _run_finetune(ctx: TaskContext, data: EvalData, variant: str) -> dict[str, Any]:
    return finetune_evaluation(ctx.inference, data, variant, train_folds=ctx.options.train_folds,
                               test_folds=ctx.options.test_folds, epochs=ctx.options.finetune_epochs,
                               progress=ctx.options.progress, device=ctx.inference.device)


def _run_patient_id(ctx: TaskContext, data: EvalData, variant: str) -> dict[str, Any]:
    return patient_id_evaluation(ctx.inference, data, folds=None, model_key=ctx.model_key)


def _run_retrieval(ctx: TaskContext, data: EvalData, variant: str) -> dict[str, Any]:
    return retrieval_evaluation(ctx.inference, data, ctx.texts(data, variant), folds=ctx.options.test_folds,
                                model_key=ctx.model_key)


def _run_query(ctx: TaskContext, data: EvalData, variant: str) -> dict[str, Any]:
    return query_evaluation(ctx.inference, data, folds=ctx.options.test_folds, query_text=ctx.options.query_text,
                            model_key=ctx.model_key, reference_folds=ctx.options.train_folds)


TASKS: dict[str, Task] = {
    "zeroshot": Task(_zeroshot_variants, _run_zeroshot,
                     dataset=lambda variant: "cinc" if variant == "cinc_scored" else "ptbxl"),
    "probe": Task(lambda options: list(options.probe_sets), _run_probe),
    "finetune": Task(lambda options: [options.finetune_set], _run_finetune),
    "patient_id": Task(lambda options: ["all_folds"], _run_patient_id),
    "retrieval": Task(lambda options: ["cqa", "label_text"], _run_retrieval),
    "query": Task(lambda options: ["class_queries"], _run_query),
}
EVAL_TASKS = tuple(TASKS)


@dataclass
class EvalOptions:
    """What ``esi eval`` runs and where it writes; the CLI flags map one to one."""

    root: Path
    out: Path
    train_folds: list[int]
    test_folds: list[int]
    what: tuple[str, ...] = EVAL_TASKS
    cinc_root: Path | None = None
    captions: Path | None = None
    zeroshot_sets: tuple[str, ...] = ZEROSHOT_SETS
    probe_sets: tuple[str, ...] = ("superclass", "subclass", "form", "rhythm")
    finetune_set: str = "superclass"
    finetune_epochs: int = 5
    templates: str = "ecg"
    knowledge: bool = False
    class_text: str = DEFAULT_CLASS_TEXT
    calibration: str = DEFAULT_CALIBRATION
    query_text: str = DEFAULT_QUERY_TEXT
    limit: int | None = None
    ptbxl_rate: int | None = None  # records100/records500 for every model; None: nearest each model's rate
    force: bool = False
    progress: bool = True
    device: str = "auto"  # auto (CUDA when present), cpu or cuda: embeddings and fine-tuning run there


def task_runs(options: EvalOptions) -> list[tuple[str, str]]:
    """The (task, variant) pairs the options ask for, in order; an unknown task is a ValueError."""
    runs: list[tuple[str, str]] = []
    for task in options.what:
        if task not in TASKS:
            raise ValueError(f"unknown eval task {task!r}; choose from {', '.join(EVAL_TASKS)}")
        runs += [(task, variant) for variant in TASKS[task].variants(options)]
    return runs


def run_evaluation(models: Sequence[tuple[str, str | Path]], options: EvalOptions) -> dict[str, Any]:
    """Every requested task for every model; each (model, task) result is saved as it finishes and
    reused on a rerun (resume) unless ``force``. Writes ``results.json`` and ``results.md``."""
    from corpora.cinc import CincReader
    from corpora.ptbxl import PTBXLReader

    runs = task_runs(options)
    device = resolve_device(options.device)
    all_folds = sorted(set(options.train_folds) | set(options.test_folds))
    results: dict[str, Any] = {"models": {}, "options": {
        "root": str(options.root), "train_folds": options.train_folds, "test_folds": options.test_folds,
        "what": list(options.what), "cinc_root": str(options.cinc_root) if options.cinc_root else None,
        "captions": str(options.captions) if options.captions else "grounded CQA captions (cqa.caption, no LLM)",
        "templates": options.templates, "knowledge": options.knowledge, "class_text": options.class_text,
        "calibration": options.calibration, "query_text": options.query_text, "limit": options.limit,
        "ptbxl_rate": options.ptbxl_rate, "device": device,
    }}
    data_cache: dict[tuple, EvalData] = {}
    text_cache: dict[str, list[str | None]] = {}
    for name, model_dir in models:
        inference = ESIInference(model_dir, device=device)
        model_input = inference.input  # models with the same input key share the loaded records
        model_results: dict[str, Any] = {"model_dir": str(model_dir)}
        results["models"][name] = model_results

        def ptbxl(model_input=model_input) -> EvalData:
            rate = options.ptbxl_rate or (100 if model_input.sampling_rate <= 100 else 500)
            cache_key = ("ptbxl", *model_input.key, rate)
            if cache_key not in data_cache:
                reader = PTBXLReader(options.root, rate=rate)
                parts = [load_eval_data(reader, model_input, folds=[f], limit_per_fold_set=options.limit,
                                        progress=options.progress) for f in all_folds] if options.limit else [
                    load_eval_data(reader, model_input, folds=all_folds, progress=options.progress)]
                data_cache[cache_key] = merge_eval_data(parts)
            return data_cache[cache_key]

        def cinc(model_input=model_input) -> EvalData:
            cache_key = ("cinc", *model_input.key)
            if cache_key not in data_cache:
                data_cache[cache_key] = load_eval_data(CincReader(options.cinc_root), model_input,
                                                       limit_per_fold_set=options.limit, progress=options.progress)
            return data_cache[cache_key]

        datasets: dict[str, Callable[[], EvalData]] = {"ptbxl": ptbxl, "cinc": cinc}
        context = TaskContext(inference, options, name, text_cache)
        for task, variant in runs:
            partial = options.out / "partial" / name / f"{task}-{variant}.json"
            if partial.is_file() and not options.force:
                model_results.setdefault(task, {})[variant] = json.loads(partial.read_text(encoding="utf-8"))
                continue
            try:
                data = datasets[TASKS[task].dataset(variant)]()
                result = TASKS[task].run(context, data, variant)
            except (ValueError, RecordError) as err:  # e.g. no labelled records: recorded, retried on rerun
                model_results.setdefault(task, {})[variant] = {"error": str(err)}
                continue
            result["skipped_records"] = [f"{s.record}: {s.reason}" for s in data.skipped]
            result["input_notes"] = dict(data.notes)
            atomic_write_text(partial, to_json(result))
            model_results.setdefault(task, {})[variant] = json.loads(to_json(result))
    atomic_write_text(options.out / "results.json", to_json(results))
    atomic_write_text(options.out / "results.md", markdown_table(results))
    return results
