"""Inference and evaluation subcommands of ``python -m esi``.

``register(subparsers)`` adds: ``zeroshot``, ``index-ecgs``, ``search``, ``retrieve``, ``caption``,
``eval``. Each parser sets ``_run`` (args -> exit code) and ``_name``, the convention of
``esi/__main__.py``. Heavy imports happen inside the run functions so ``--help`` stays fast.
Exit codes: 0 ok, 2 bad input (message on stderr, naming the file/record/option).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

DEFAULT_STORE = ".esi-chroma"


def _user_errors() -> tuple[type[BaseException], ...]:
    from corpora.base import RecordError
    from esi.config import ConfigError
    from esi.inference import InputError
    from esi.labelsets import LabelSetError
    from esi.search import SearchError
    from esi.zeroshot import TemplateError
    from retrieval.client import ClientError
    from retrieval.vectors import VectorCollectionError

    return (InputError, RecordError, LabelSetError, TemplateError, SearchError, ConfigError, ClientError,
            VectorCollectionError, FileNotFoundError, ValueError)


def _guarded(run):
    """Turn expected input errors into a one-line message and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _user_errors() as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


def _print_json(obj: Any) -> None:
    from esi.evaluate import to_json

    print(to_json(obj))


def _location(args: argparse.Namespace) -> str:
    return args.chroma or args.store


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--store", default=DEFAULT_STORE, help=f"Chroma store directory (default {DEFAULT_STORE})")
    group.add_argument("--chroma", help="Chroma server URL, http://host:port (instead of --store)")


def _reader(args: argparse.Namespace, sampling_rate: float):
    from corpora.registry import get_reader

    kwargs: dict[str, Any] = {}
    if args.dataset == "ptbxl":
        kwargs["rate"] = 100 if sampling_rate <= 100 else 500
    return get_reader(args.dataset, args.root, **kwargs)


# ---- zeroshot ------------------------------------------------------------------------------------

def _add_zeroshot(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "zeroshot", help="zero-shot classification of a dataset with a label set; AUC and F1",
        description="Score every record against the label set's class prompts. AUC on --folds; F1 with "
                    "per-class thresholds chosen on --threshold-folds (default: the other folds present).")
    p.add_argument("--model", required=True, help="ESI model directory (save_pretrained output)")
    p.add_argument("--dataset", required=True, help="reader name: ptbxl, cinc, cpsc2018, mimic")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--labels", required=True, help="label set: superclass, subclass, all, form, rhythm, cinc, "
                   "cpsc2018 (or a label set JSON path)")
    p.add_argument("--classes", help="comma-separated subset of the label set's classes")
    p.add_argument("--folds", help="test folds, e.g. 9 or 1-8 (default: all records)")
    p.add_argument("--threshold-folds", help="folds whose scores choose the F1 thresholds "
                   "(default: every other fold present; none for datasets without folds)")
    p.add_argument("--templates", default="ecg", help="prompt template set (ecg, plain) or JSON path")
    p.add_argument("--knowledge", action="store_true", help="add the knowledge-corpus waveform description "
                   "of each class to its prompts (same as --class-text knowledge)")
    _add_class_text_options(p)
    p.add_argument("--prototypes", action="store_true",
                   help="few-shot instead of zero-shot: each class is the mean embedding of its example ECGs "
                   "in --threshold-folds (nearest class-mean prototype)")
    p.add_argument("--limit", type=int, help="read at most N records per fold set (quick checks)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _add_class_text_options(p: argparse.ArgumentParser) -> None:
    from esi.zeroshot import CALIBRATIONS, CLASS_TEXTS, DEFAULT_CALIBRATION, DEFAULT_CLASS_TEXT

    p.add_argument("--class-text", choices=CLASS_TEXTS, default=None,
                   help=f"where class embeddings come from (default {DEFAULT_CLASS_TEXT}): the prompt templates, "
                   "templates + knowledge descriptions, the training caption views naming the class and its "
                   "member findings (weighted by the model's training label counts), or their mean")
    p.add_argument("--calibration", choices=CALIBRATIONS, default=DEFAULT_CALIBRATION,
                   help="per-ECG score calibration across the classes (default %(default)s)")


def _run_zeroshot(args: argparse.Namespace) -> int:
    from esi.evaluate import load_eval_data, merge_eval_data, parse_folds, zeroshot_evaluation
    from esi.inference import ESIInference
    from esi.io import format_number
    from esi.labelsets import load_labelset
    from esi.zeroshot import DEFAULT_CLASS_TEXT

    labelset = load_labelset(args.labels)
    if args.classes:
        labelset = labelset.select(c for c in args.classes.split(",") if c.strip())
    inference = ESIInference(args.model)
    reader = _reader(args, inference.sampling_rate)
    test_folds = parse_folds(args.folds)
    threshold_folds = parse_folds(args.threshold_folds)
    progress = not args.quiet and not args.json
    parts = [load_eval_data(reader, inference.input, folds=test_folds, limit_per_fold_set=args.limit,
                            progress=progress)]
    if test_folds is not None:
        if threshold_folds is None:
            present = {r.fold for r in _metadata(reader)} - {None} - set(test_folds)
            threshold_folds = sorted(present) or None
        if threshold_folds:
            parts.append(load_eval_data(reader, inference.input,
                                        folds=[f for f in threshold_folds if f not in test_folds],
                                        limit_per_fold_set=args.limit, progress=progress))
    data = merge_eval_data(parts)
    if args.prototypes and not threshold_folds:
        raise ValueError("--prototypes needs example ECGs: pass --folds and --threshold-folds (labelled folds)")
    result = zeroshot_evaluation(inference, data, labelset, test_folds=test_folds, threshold_folds=threshold_folds,
                                 templates=args.templates, use_knowledge=args.knowledge,
                                 class_text=args.class_text or ("knowledge" if args.knowledge else None) or
                                 DEFAULT_CLASS_TEXT, calibration=args.calibration, prototypes=args.prototypes)
    result.update({"model": str(args.model), "dataset_root": str(args.root),
                   "skipped_records": [f"{s.record}: {s.reason}" for s in data.skipped],
                   "input_notes": data.notes})
    if args.json:
        _print_json(result)
        return 0
    auc, f1 = format_number(result["macro_auc"], "-"), format_number(result["macro_f1"], "-")
    print(f"{result['labelset']} on {args.dataset} ({result['n_records']} test records): macro AUC {auc}, macro F1 {f1}")
    print(f"{'class':<12} {'n_pos':>6} {'AUC':>6} {'F1':>6}  display")
    for class_id, row in result["per_class"].items():
        auc, f1 = format_number(row["auc"], "-"), format_number(row["f1"], "-")
        print(f"{class_id:<12} {row['n_positive']:>6} {auc:>6} {f1:>6}  {row['display']}")
    if result.get("n_unlabelled_excluded"):
        print(f"{result['n_unlabelled_excluded']} record(s) without any label left out (unannotated, not negative)")
    if result.get("f1_note"):
        print(f"F1: {result['f1_note']}")
    for skipped in result["skipped_classes"]:
        print(f"skipped class {skipped['class']}: {skipped['reason']}")
    if data.skipped:
        print(f"{len(data.skipped)} record(s) skipped, e.g. {data.skipped[0].record}: {data.skipped[0].reason}")
    for note, count in data.notes.items():
        print(f"note: {count} record(s) {note}")
    return 0


def _metadata(reader):
    from corpora.base import RecordError

    for record_id in reader.record_ids():
        try:
            yield reader.read_metadata(record_id)
        except RecordError:
            continue


# ---- index-ecgs / search -------------------------------------------------------------------------

def _add_index(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("index-ecgs", help="embed a dataset's ECGs into a Chroma collection (resumable)")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True, help="reader name: ptbxl, cinc, cpsc2018, mimic")
    p.add_argument("--root", required=True)
    p.add_argument("--collection", required=True, help="collection name (3-512 chars of [a-zA-Z0-9._-])")
    _add_store_options(p)
    p.add_argument("--folds", help="only these folds, e.g. 9 or 1-8")
    p.add_argument("--limit", type=int, help="index at most N records")
    p.add_argument("--quiet", action="store_true")
    return p


def _run_index(args: argparse.Namespace) -> int:
    from esi.evaluate import parse_folds
    from esi.inference import ESIInference
    from esi.search import ECGIndex, open_collection

    inference = ESIInference(args.model)
    reader = _reader(args, inference.sampling_rate)
    folds = parse_folds(args.folds)
    ids = [r.record_id for r in _metadata(reader) if folds is None or r.fold in folds] if folds else reader.record_ids()
    if args.limit is not None:
        ids = ids[: args.limit]
    collection = open_collection(_location(args), args.collection, kind="ecg", inference=inference,
                                 model_dir=args.model)
    report = ECGIndex(inference, collection).index_reader(reader, ids, progress=not args.quiet)
    print(report.summary())
    for skip in report.skipped[:10]:
        print(f"skipped {skip.record}: {skip.reason}")
    if len(report.skipped) > 10:
        print(f"... and {len(report.skipped) - 10} more skipped")
    return 0


def _add_search(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("search", help="find the ECGs of a collection that best match a text query")
    p.add_argument("--model", required=True)
    p.add_argument("--collection", required=True)
    _add_store_options(p)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--dataset", dest="where_dataset", help="only ECGs of this dataset")
    p.add_argument("--sex", dest="where_sex", choices=["male", "female"], help="only ECGs of this sex")
    p.add_argument("--query-text", choices=("views", "raw"), default="views",
                   help="views (default): a query naming a finding or class is expanded into the texts the "
                   "model was trained on; raw: embed the query exactly as typed")
    p.add_argument("--json", action="store_true")
    p.add_argument("query", help="free text, e.g. 'atrial fibrillation with rapid ventricular response'")
    return p


def _run_search(args: argparse.Namespace) -> int:
    from esi.inference import ESIInference
    from esi.search import ECGIndex, hit_to_dict, open_collection

    inference = ESIInference(args.model)
    collection = open_collection(_location(args), args.collection, kind="ecg", inference=inference,
                                 model_dir=args.model, create=False)
    clauses = [{k: v} for k, v in (("dataset", args.where_dataset), ("sex", args.where_sex)) if v]
    where = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
    hits = [hit_to_dict(h) for h in ECGIndex(inference, collection).search(args.query, k=args.k, where=where,
                                                                           query_text=args.query_text)]
    if args.json:
        _print_json({"query": args.query, "collection": args.collection, "hits": hits})
        return 0
    if not hits:
        print(f"no ECGs found (collection {args.collection!r} holds {collection.count()})")
    for rank, hit in enumerate(hits, start=1):
        m = hit["metadata"]
        labels = ", ".join(m.get("labels", {}) or {})
        print(f"{rank}. {m.get('dataset')}:{m.get('record_id')}  score {hit['score']:.3f}  age {m.get('age', '-')} "
              f"sex {m.get('sex', '-')}  labels [{labels}]  {m.get('path', '')}")
    return 0


# ---- retrieve / caption (one record) ---------------------------------------------------------------

RECORD_HELP = ("ECG file: WFDB record (path without extension, or .hea), CinC .hea/.mat, EDF/BDF (.edf), DICOM "
               "waveform (.dcm), HL7 aECG or GE MUSE XML (.xml), CSV with a header row of lead names (.csv), "
               ".npy (12, T) mV array or .json {signal, sampling_rate}")


def _add_sampling_rate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampling-rate", type=float, metavar="HZ",
                   help="the record's sampling rate, for files that do not carry one (CSV without a time column, "
                   ".npy); for the others it must match the file's own rate")


def _prepare_record(inference, args: argparse.Namespace):
    """Read --record (with --sampling-rate) and fit it to the model; the notes say what was changed."""
    from esi.inference import load_record

    return inference.prepare(load_record(args.record, sampling_rate=args.sampling_rate))


def _add_retrieve(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("retrieve", help="the texts (knowledge passages or captions) closest to one ECG")
    p.add_argument("--model", required=True)
    p.add_argument("--record", required=True, help=RECORD_HELP)
    _add_sampling_rate(p)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--texts", default="knowledge", help="'knowledge' (the knowledge corpus passages) or a "
                   ".txt (one text per line) / .jsonl (caption or text field) file of captions")
    p.add_argument("--collection", help="persist/reuse the text index in this collection (with --store/--chroma); "
                   "default: an in-memory index built for this call")
    _add_store_options(p)
    p.add_argument("--json", action="store_true")
    return p


def _run_retrieve(args: argparse.Namespace) -> int:
    from esi.inference import ESIInference
    from esi.search import (
        TextIndex,
        ephemeral_client,
        file_texts,
        hit_to_dict,
        knowledge_texts,
        open_collection,
        text_fingerprint,
    )

    inference = ESIInference(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = _prepare_record(inference, args)
    items = knowledge_texts() if args.texts == "knowledge" else file_texts(args.texts)
    if args.collection:
        collection = open_collection(_location(args), args.collection, kind="text", inference=inference,
                                     model_dir=args.model)
    else:
        collection = open_collection(ephemeral_client(), f"esi-texts-{text_fingerprint(items)}", kind="text",
                                     inference=inference)
    index = TextIndex(inference, collection)
    index.add_texts(items)
    embedding = inference.embed_signals(prepared.signal[None])[0]
    hits = [hit_to_dict(h) for h in index.retrieve(embedding, k=args.k)]
    result = {"record": prepared.record_id, "notes": prepared.notes, "texts": args.texts, "hits": hits}
    if args.json:
        _print_json(result)
        return 0
    _print_notes(prepared, caught)
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank}. score {hit['score']:.3f}  {hit['document']}")
    return 0


def _print_notes(prepared, caught) -> None:
    for note in prepared.notes:
        print(f"note: {prepared.record_id} {note}", file=sys.stderr)


def _add_caption(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("caption", help="draft a caption for one ECG with the model's decoder")
    p.add_argument("--model", required=True)
    p.add_argument("--record", required=True, help=RECORD_HELP)
    _add_sampling_rate(p)
    p.add_argument("--method", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beams", type=int, default=3, help="beam width for --method beam")
    p.add_argument("--max-len", type=int, help="maximum caption length in tokens")
    p.add_argument("--json", action="store_true")
    return p


def _run_caption(args: argparse.Namespace) -> int:
    from esi.inference import ESIInference

    inference = ESIInference(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = _prepare_record(inference, args)
    if inference.model.decoder is None:
        raise ValueError(f"model {args.model} has no caption decoder (trained with caption_weight 0)")
    caption = inference.caption(prepared.signal, method=args.method, num_beams=args.beams, max_len=args.max_len)[0]
    if args.json:
        _print_json({"record": prepared.record_id, "caption": caption, "method": args.method, "notes": prepared.notes})
        return 0
    _print_notes(prepared, caught)
    print(caption)
    return 0


# ---- eval --------------------------------------------------------------------------------------------

def _add_eval(subparsers) -> argparse.ArgumentParser:
    from esi.evaluate import EVAL_TASKS

    p = subparsers.add_parser(
        "eval", help="evaluation suite on PTB-XL: zero-shot, linear probe, fine-tune, patient id, retrieval",
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
    _add_class_text_options(p)
    p.add_argument("--query-text", choices=("views", "raw"), default="views",
                   help="how the query-by-text task embeds its class queries (see `esi search --help`)")
    p.add_argument("--limit", type=int, help="at most N records per fold (quick checks only)")
    p.add_argument("--ptbxl-rate", type=int, choices=(100, 500),
                   help="read PTB-XL's records100 or records500 for every model (each resampled to its own "
                   "input rate), so models of different rates are scored on the same records; default: the "
                   "files nearest each model's rate")
    p.add_argument("--force", action="store_true", help="recompute results already saved under OUT/partial")
    p.add_argument("--quiet", action="store_true")
    return p


def _model_args(values: list[str]) -> list[tuple[str, str]]:
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


def _run_eval(args: argparse.Namespace) -> int:
    from esi.evaluate import EvalOptions, markdown_table, parse_folds, run_evaluation
    from esi.zeroshot import DEFAULT_CLASS_TEXT

    models = _model_args(args.model + args.compare)
    options = EvalOptions(
        root=Path(args.root), out=Path(args.out), train_folds=parse_folds(args.train_folds) or [],
        test_folds=parse_folds(args.test_folds) or [], what=tuple(t.strip() for t in args.what.split(",") if t.strip()),
        cinc_root=Path(args.cinc_root) if args.cinc_root else None,
        captions=Path(args.captions) if args.captions else None, finetune_epochs=args.epochs,
        templates=args.templates, knowledge=args.knowledge, limit=args.limit, force=args.force,
        class_text=args.class_text or ("knowledge" if args.knowledge else DEFAULT_CLASS_TEXT),
        calibration=args.calibration, query_text=args.query_text,
        progress=not args.quiet, ptbxl_rate=args.ptbxl_rate,
    )
    if not options.train_folds or not options.test_folds:
        raise ValueError("--train-folds and --test-folds must name at least one fold each")
    if set(options.train_folds) & set(options.test_folds):
        raise ValueError("--train-folds and --test-folds overlap")
    results = run_evaluation(models, options)
    print(markdown_table(results))
    print(f"wrote {options.out / 'results.json'} and {options.out / 'results.md'}")
    return 0


COMMANDS = [
    ("zeroshot", _add_zeroshot, _run_zeroshot),
    ("index-ecgs", _add_index, _run_index),
    ("search", _add_search, _run_search),
    ("retrieve", _add_retrieve, _run_retrieve),
    ("caption", _add_caption, _run_caption),
    ("eval", _add_eval, _run_eval),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the inference/evaluation subcommands to ``python -m esi``'s subparsers."""
    for name, add, run in COMMANDS:
        add(subparsers).set_defaults(_run=_guarded(run), _name=name)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m esi.cli_inference ...``) until esi/__main__.py registers these."""
    parser = argparse.ArgumentParser(prog="python -m esi", description="ESI inference and evaluation")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
