"""``python -m esi caption``: draft a caption for one ECG with the model's decoder."""

from __future__ import annotations

import argparse
import warnings

from esi.cli.common import RECORD_HELP, add_sampling_rate, guarded, prepare_record, print_json, print_notes

NAME = "caption"
HELP = "draft a caption for one ECG with the model's decoder"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help=HELP)
    p.add_argument("--model", required=True)
    p.add_argument("--record", required=True, help=RECORD_HELP)
    add_sampling_rate(p)
    p.add_argument("--method", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beams", type=int, default=3, help="beam width for --method beam")
    p.add_argument("--max-len", type=int, help="maximum caption length in tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(_run=guarded(run), _name=NAME)
    return p


def run(args: argparse.Namespace) -> int:
    from esi.serve.inference import ESIInference

    inference = ESIInference(args.model)
    with warnings.catch_warnings(record=True):  # the notes below say what fitting the record changed
        warnings.simplefilter("always")
        prepared = prepare_record(inference, args)
    if inference.model.decoder is None:
        raise ValueError(f"model {args.model} has no caption decoder (trained with caption_weight 0)")
    caption = inference.caption(prepared.signal, method=args.method, num_beams=args.beams, max_len=args.max_len)[0]
    if args.json:
        print_json({"record": prepared.record_id, "caption": caption, "method": args.method, "notes": prepared.notes})
        return 0
    print_notes(prepared)
    print(caption)
    return 0
