"""``python -m esi run``: the main job (:mod:`esi.pipeline`), every step from knowledge store to search."""

from __future__ import annotations

import argparse
from pathlib import Path

from esi import pipeline

NAME = "run"
HELP = "the main job: knowledge store -> CQA captions -> pretraining -> evaluation -> search"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME, help=HELP,
        description=pipeline.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/default", help="where every artefact goes")
    parser.add_argument("--data", default=None, help="shared data root (default: $ESI_SHARED_DATA or ../shared/data)")
    parser.add_argument("--llm", default="smollm2", help="CQA backend: smollm2 (default), none (grounded only), "
                        "gguf:PATH, hf:DIR, openai:URL[#model]")
    parser.add_argument("--config", default="cpu-default", help="ESI training preset or config file")
    parser.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    parser.add_argument("--force", action="append", default=[], choices=pipeline.STEP_NAMES,
                        help="re-run this step even if it is up to date (repeatable)")
    parser.set_defaults(_run=run, _name=NAME)
    return parser


def run(args: argparse.Namespace) -> int:
    data = Path(args.data) if args.data else pipeline.default_data_root()
    return pipeline.Pipeline(Path(args.run_dir), data, args.llm, args.config, args.epochs, set(args.force)).run()
