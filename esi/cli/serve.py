"""``python -m esi serve``: run the ESI API and search page (:mod:`esi.serve.api`) with uvicorn.

The serve command checks its limits before the (slow) model load and configures logging at
``--log-level``; ``python -m esi.cli.serve serve ...`` runs it alone, without the other commands.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from esi.serve.api.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_SECONDS,
    DEFAULT_WORKERS,
)

log = logging.getLogger(__name__)

NAME = "serve"
HELP = "serve the ESI HTTP API and search page (FastAPI + uvicorn)"


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME, help=HELP,
        description="Serve zero-shot classification, ECG<->text retrieval, captioning, CQA explain and record "
                    "plots over HTTP, with a search page at / and OpenAPI docs at /docs.")
    parser.add_argument("--model", required=True, help="ESI model directory (config.json + model.safetensors)")
    parser.add_argument("--store", required=True, help="Chroma directory holding the indexed ECG collection")
    parser.add_argument("--collection", default="ecg", help="ECG collection to search (default: %(default)s)")
    parser.add_argument("--text-collection",
                        help="text collection in --store for ECG->text retrieval (default: the built-in "
                             "knowledge corpus, embedded in memory at start-up)")
    parser.add_argument("--knowledge-store",
                        help="knowledge store directory for CQA explain passages (retrieval build --store)")
    parser.add_argument("--labelset", default="ptbxl_superclass", help="default zero-shot label set")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20,
                        help="reject request bodies over this many MiB with 413 (default: %(default)s)")
    parser.add_argument("--max-upload-seconds", type=float, default=DEFAULT_MAX_UPLOAD_SECONDS,
                        help="reject uploaded ECGs longer than this (default: %(default)s s)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="threads running model and plot work (default: %(default)s; model calls share one "
                             "lock, so more mainly overlaps upload parsing and plotting)")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="requests that may wait for a worker; past that they get 503 + Retry-After at once "
                             "(default: %(default)s; 0 = no waiting)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(_run=run_serve, _name=NAME)
    return parser


add_parser = add_serve_parser  # the command protocol of esi.cli.common


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to a ``python -m esi`` parser."""
    return add_serve_parser(subparsers)


def check_serve_args(args: argparse.Namespace) -> str | None:
    """Why the limits/pool sizes/port cannot work, or None. Checked at start-up, before the model is loaded:
    the body limit middleware is only built on the first request, so a bad limit would otherwise turn every
    request into a 500 (a non-positive upload limit would refuse every ECG, and a bad pool size would only
    fail after the slow model load)."""
    for flag, value in (("--max-body-mb", args.max_body_mb), ("--max-upload-seconds", args.max_upload_seconds)):
        if not math.isfinite(value) or value <= 0:
            return f"{flag} must be a positive number, got {value}"
    if int(args.max_body_mb * 2**20) < 1:
        return f"--max-body-mb {args.max_body_mb} is under one byte"
    if args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    if args.max_queue < 0:
        return f"--max-queue must be 0 or more, got {args.max_queue}"
    if not 0 <= args.port <= 65535:
        return f"--port must be in 0..65535, got {args.port}"
    return None


def run_serve(args: argparse.Namespace) -> int:
    problem = check_serve_args(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from esi.serve.api.app import create_app
    from esi.serve.api.backend import BackendError

    try:
        app = create_app(
            args.model, args.store, collection=args.collection, max_body_bytes=int(args.max_body_mb * 2**20),
            max_upload_seconds=args.max_upload_seconds, workers=args.workers, max_queue=args.max_queue,
            text_collection=args.text_collection,
            knowledge_store=args.knowledge_store, default_labelset=args.labelset, device=args.device,
        )
    except (BackendError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("serving on http://%s:%d/ (API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m esi.cli.serve serve ...``): the serve command alone, logging as it asks."""
    parser = argparse.ArgumentParser(prog="python -m esi")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    raise SystemExit(main())
