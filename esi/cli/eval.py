"""``python -m esi eval``: the evaluation suite on PTB-XL (zero-shot, linear probe, fine-tune, patient id,
retrieval, query by text), one column per model, on CPU or GPU (``--device``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from esi.cli.common import add_class_text_options, add_query_text_option, guarded, parse_folds

NAME = "eval"
HELP = "evaluation suite on PTB-XL: zero-shot, linear probe, fine-tune, patient id, retrieval"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from esi.eval.suite import EVAL_TASKS
    from esi.model.device import DEVICES

    p = subparsers.add_parser(
        NAME, help=HELP,
        description="Writes OUT/results.json and OUT/results.md (one column per model). Each finished "
                    "(model, task) is saved under OUT/partial/ and reused on a rerun unless --force.")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                   help="model directory; repeat to compare models side by side (e.g. --model cqa=runs/a "
                   "--model label_text=runs/b for the CQA ablation)")
    p.add_argument("--compare", nargs="+", default=[], metavar="[NAME=]DIR", help="more models to compare")
    p.add_argument("--root", required=True, help="PTB-XL root")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train-folds", default="1-8")
    p.add_argument("--test-folds", default="9")
    p.add_argument("--what", default=",".join(EVAL_TASKS), help=f"comma-separated subset of {','.join(EVAL_TASKS)}")
    p.add_argument("--cinc-root", help="CinC 2020 root: adds zero-shot by SNOMED class on its records")
    p.add_argument("--captions", help="CQA caption Parquet (record_id, caption, label_text) for retrieval; "
                   "default: grounded CQA captions built now (no LLM) and the label text")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (both runs)")
    p.add_argument("--templates", default="ecg")
    p.add_argument("--knowledge", action="store_true", help="zero-shot prompts with knowledge descriptions")
    add_class_text_options(p)
    add_query_text_option(p)
    p.add_argument("--limit", type=int, help="at most N records per fold (quick checks only)")
    p.add_argument("--ptbxl-rate", type=int, choices=(100, 500),
                   help="read PTB-XL's records100 or records500 for every model (each resampled to its own "
                   "input rate), so models of different rates are scored on the same records; default: the "
                   "files nearest each model's rate")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where embeddings and fine-tuning run: auto (CUDA when available, else CPU; default), "
                   "cpu, or cuda (an error when CUDA is not available)")
    p.add_argument("--force", action="store_true", help="recompute results already saved under OUT/partial")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(_run=guarded(run), _name=NAME)
    return p


def model_args(values: list[str]) -> list[tuple[str, str]]:
    """``[NAME=]DIR`` values -> (name, dir) pairs; a directory without config.json or a repeated name is an error."""
    models: list[tuple[str, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).resolve().name or "model", value
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"--model {value}: {path} is not an ESI model directory (no config.json)")
        if name in {n for n, _ in models}:
            raise ValueError(f"two models named {name!r}; use NAME=DIR to tell them apart")
        models.append((name, path))
    return models


def run(args: argparse.Namespace) -> int:
    from esi.eval.report import markdown_table
    from esi.eval.suite import EvalOptions, run_evaluation
    from esi.model.device import resolve_device
    from esi.zeroshot.classifier import DEFAULT_CLASS_TEXT

    models = model_args(args.model + args.compare)
    options = EvalOptions(
        root=Path(args.root), out=Path(args.out), train_folds=parse_folds(args.train_folds) or [],
        test_folds=parse_folds(args.test_folds) or [], what=tuple(t.strip() for t in args.what.split(",") if t.strip()),
        cinc_root=Path(args.cinc_root) if args.cinc_root else None,
        captions=Path(args.captions) if args.captions else None, finetune_epochs=args.epochs,
        templates=args.templates, knowledge=args.knowledge, limit=args.limit, force=args.force,
        class_text=args.class_text or ("knowledge" if args.knowledge else DEFAULT_CLASS_TEXT),
        calibration=args.calibration, query_text=args.query_text,
        progress=not args.quiet, ptbxl_rate=args.ptbxl_rate, device=resolve_device(args.device, "--device"),
    )
    if not options.train_folds or not options.test_folds:
        raise ValueError("--train-folds and --test-folds must name at least one fold each")
    if set(options.train_folds) & set(options.test_folds):
        raise ValueError("--train-folds and --test-folds overlap")
    results = run_evaluation(models, options)
    print(markdown_table(results))
    print(f"wrote {options.out / 'results.json'} and {options.out / 'results.md'}")
    return 0
