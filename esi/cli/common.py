"""What the ``python -m esi`` commands share: the command protocol, error handling, options and helpers.

A command is a module with ``NAME``, ``HELP`` (its line in ``--help``) and ``add_parser(subparsers)``;
the parser it returns sets the defaults ``_run`` (args -> exit code) and ``_name``. :func:`build_parser`
and :func:`run_main` turn any tuple of such modules into a CLI: :mod:`esi.cli.main` with every command,
the main job (:mod:`esi.pipeline`) with the few it runs. Heavy imports happen inside the run functions,
and :func:`run_main` builds only the chosen command's options, so ``--help`` stays fast. Exit codes: 0 ok,
2 bad input (message on stderr, naming the file/record/option).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

DEFAULT_STORE = ".esi-chroma"

RECORD_HELP = ("ECG file: WFDB record (path without extension, or .hea), CinC .hea/.mat, EDF/BDF (.edf), DICOM "
               "waveform (.dcm), HL7 aECG or GE MUSE XML (.xml), CSV with a header row of lead names (.csv), "
               ".npy (12, T) mV array or .json {signal, sampling_rate}")


class Command(Protocol):
    """A command module: its name, its help line and the function that adds its subparser (which sets
    ``_run``)."""

    NAME: str
    HELP: str

    def add_parser(self, subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser: ...


def build_parser(commands: Sequence[Command], description: str = "ECG Semantic Integrator",
                 only: str | None = None) -> argparse.ArgumentParser:
    """``python -m esi`` with the given commands, in order. With ``only``, the other commands get just their
    name and help line: building a command's options can import its stack (``eval`` lists its tasks)."""
    parser = argparse.ArgumentParser(prog="python -m esi", description=description)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        if only is None or command.NAME == only:
            command.add_parser(subparsers)
        else:
            subparsers.add_parser(command.NAME, help=command.HELP)
    return parser


def run_main(commands: Sequence[Command], argv: list[str] | None = None) -> int:
    """Parse ``argv`` against ``commands`` and run the chosen one (offline hub, INFO logging)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if not w.startswith("-")), "")  # the command comes first: no global options
    args = build_parser(commands, only=chosen).parse_args(argv)
    return args._run(args)


# ---- errors ------------------------------------------------------------------------------------------------

def _user_errors() -> tuple[type[BaseException], ...]:
    from corpora.base import RecordError
    from esi.model.config import ConfigError
    from esi.serve.inference import InputError
    from esi.serve.search import SearchError
    from esi.zeroshot.labelsets import LabelSetError
    from esi.zeroshot.templates import TemplateError
    from retrieval.client import ClientError
    from retrieval.vectors import VectorCollectionError

    return (InputError, RecordError, LabelSetError, TemplateError, SearchError, ConfigError, ClientError,
            VectorCollectionError, FileNotFoundError, ValueError)


def guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected input errors into a one-line message and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _user_errors() as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


# ---- output ------------------------------------------------------------------------------------------------

def print_json(obj: Any) -> None:
    from esi.model.io import to_json

    print(to_json(obj))


def print_notes(prepared: Any) -> None:
    """What fitting a record to the model changed (resampled, cropped, repaired), on stderr."""
    for note in prepared.notes:
        print(f"note: {prepared.record_id} {note}", file=sys.stderr)


# ---- options -----------------------------------------------------------------------------------------------

def parse_folds(text: str | None) -> list[int] | None:
    """``"1-8"``, ``"9"``, ``"1,3,5-7"`` -> fold list; None/empty -> None (all)."""
    if text is None or not str(text).strip():
        return None
    folds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                folds.extend(range(low, high + 1))
            else:
                folds.append(int(part))
        except ValueError as err:
            raise ValueError(f"bad fold list {text!r}: use e.g. '1-8' or '9' or '1,3,5-7'") from err
    return sorted(set(folds))


def add_store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--store", default=DEFAULT_STORE, help=f"Chroma store directory (default {DEFAULT_STORE})")
    group.add_argument("--chroma", help="Chroma server URL, http://host:port (instead of --store)")


def location(args: argparse.Namespace) -> str:
    """The Chroma store directory or server URL of ``--store``/``--chroma``."""
    return args.chroma or args.store


def add_class_text_options(p: argparse.ArgumentParser) -> None:
    from esi.zeroshot.classifier import CALIBRATIONS, CLASS_TEXTS, DEFAULT_CALIBRATION, DEFAULT_CLASS_TEXT

    p.add_argument("--class-text", choices=CLASS_TEXTS, default=None,
                   help=f"where class embeddings come from (default {DEFAULT_CLASS_TEXT}): the prompt templates, "
                   "templates + knowledge descriptions, the training caption views naming the class and its "
                   "member findings (weighted by the model's training label counts), or their mean")
    p.add_argument("--calibration", choices=CALIBRATIONS, default=DEFAULT_CALIBRATION,
                   help="per-ECG score calibration across the classes (default %(default)s)")


def add_query_text_option(p: argparse.ArgumentParser) -> None:
    from esi.zeroshot.classifier import DEFAULT_QUERY_TEXT, QUERY_TEXTS

    p.add_argument("--query-text", choices=QUERY_TEXTS, default=DEFAULT_QUERY_TEXT,
                   help="raw: embed a text query exactly as typed; views: expand a query naming a finding or class "
                   "into the texts the model was trained on (default %(default)s)")


def add_sampling_rate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampling-rate", type=float, metavar="HZ",
                   help="the record's sampling rate, for files that do not carry one (CSV without a time column, "
                   ".npy); for the others it must match the file's own rate")


# ---- data --------------------------------------------------------------------------------------------------

def reader(args: argparse.Namespace, sampling_rate: float) -> Any:
    """The ``--dataset`` reader on ``--root``; PTB-XL at the file rate nearest the model's."""
    from corpora.registry import get_reader

    kwargs: dict[str, Any] = {}
    if args.dataset == "ptbxl":
        kwargs["rate"] = 100 if sampling_rate <= 100 else 500
    return get_reader(args.dataset, args.root, **kwargs)


def metadata(reader: Any) -> Iterator[Any]:
    """Every readable record's metadata (unreadable ones are left out)."""
    from corpora.base import RecordError

    for record_id in reader.record_ids():
        try:
            yield reader.read_metadata(record_id)
        except RecordError:
            continue


def prepare_record(inference: Any, args: argparse.Namespace) -> Any:
    """Read --record (with --sampling-rate) and fit it to the model; the notes say what was changed."""
    from esi.serve.inference import load_record

    return inference.prepare(load_record(args.record, sampling_rate=args.sampling_rate))
