"""``python -m esi pretrain``: pretrain an ESI model (contrastive + captioning); torchrun for multi-GPU."""

from __future__ import annotations

import argparse
import os
import sys

NAME = "pretrain"
HELP = "pretrain an ESI model (contrastive + captioning); torchrun for multi-GPU"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME, help=HELP,
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
    parser.set_defaults(_run=run, _name=NAME)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train; exit 2 on bad input (config, data, text model), 3 when the loss diverged."""
    from esi.model.config import ConfigError
    from esi.model.device import DeviceError
    from esi.model.text_encoder import TextModelNotAvailable
    from esi.train.config import load_train_config
    from esi.train.data import DataError
    from esi.train.loop import TrainingDiverged, pretrain

    try:
        config = load_train_config(
            args.config, max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
            device=args.device, no_cqa=args.no_cqa, no_caption_loss=args.no_caption_loss,
            no_contrastive_loss=args.no_contrastive_loss)
        final = pretrain(config, args.captions, args.data, args.out, resume=args.resume,
                         progress=not args.no_progress)
    except (ConfigError, DeviceError, DataError, TextModelNotAvailable, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {final}")
    return 0
