"""``python -m esi <subcommand>``. Each subcommand registers itself in ``SUBCOMMANDS`` (name -> (add_parser, run)).

To add one: write ``_add_X(subparsers)`` that creates the parser and ``_run_X(args) -> int``, and append
``("X", _add_X, _run_X)`` to ``SUBCOMMANDS``. Heavy imports happen inside ``_run_X`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable


def _add_pretrain(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain an ESI model (contrastive + captioning); torchrun for multi-GPU",
        description="Pretrain ESI on signals (corpora export Parquet) joined with captions (CQA Parquet). "
                    "Multi-GPU: torchrun --nproc_per_node=N -m esi pretrain ...")
    parser.add_argument("--config", required=True,
                        help="training preset (esi-paper, esi-tiny-paper, cpu-default) or a YAML/JSON file")
    parser.add_argument("--captions", required=True, help="caption Parquet file or directory (record_id, caption, "
                        "label_text, fold)")
    parser.add_argument("--data", required=True, help="signal Parquet file or directory (corpora export schema)")
    parser.add_argument("--out", required=True, help="run directory (config, metrics.jsonl, checkpoints, final/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total")
    parser.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    parser.add_argument("--batch-size", type=int, help="override the per-process batch size")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--no-cqa", action="store_true", default=None,
                        help="ablation: train on the raw label text (label_text column) instead of CQA captions")
    parser.add_argument("--no-caption-loss", action="store_true", default=None, help="ablation: contrastive only")
    parser.add_argument("--no-contrastive-loss", action="store_true", default=None, help="ablation: captioning only")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    return parser


def _run_pretrain(args: argparse.Namespace) -> int:
    from esi.config import ConfigError
    from esi.data import DataError
    from esi.text_encoder import TextModelNotAvailable
    from esi.train import TrainingDiverged, load_train_config, pretrain

    try:
        config = load_train_config(
            args.config, max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
            device=args.device, no_cqa=args.no_cqa, no_caption_loss=args.no_caption_loss,
            no_contrastive_loss=args.no_contrastive_loss)
        final = pretrain(config, args.captions, args.data, args.out, resume=args.resume,
                         progress=not args.no_progress)
    except (ConfigError, DataError, TextModelNotAvailable, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {final}")
    return 0


SUBCOMMANDS: list[tuple[str, Callable[[argparse._SubParsersAction], argparse.ArgumentParser],
                        Callable[[argparse.Namespace], int]]] = [
    ("pretrain", _add_pretrain, _run_pretrain),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m esi", description="ECG Semantic Integrator")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, add, run in SUBCOMMANDS:
        sub = add(subparsers)
        sub.set_defaults(_run=run, _name=name)
    from esi import cli_inference, pipeline
    from esi.api import cli as api_cli

    cli_inference.register(subparsers)  # zeroshot, index-ecgs, search, retrieve, caption, eval
    api_cli.register(subparsers)  # serve
    pipeline.add_parser(subparsers).set_defaults(_run=pipeline.run, _name="run")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    raise SystemExit(main())
