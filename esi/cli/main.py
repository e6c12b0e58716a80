"""``python -m esi <command>``: every command, one module each, in the order ``--help`` lists them.

To add a command: write ``esi/cli/<name>.py`` with ``NAME`` and ``add_parser(subparsers)`` (whose
parser sets ``_run`` and ``_name``; see :mod:`esi.cli.common`) and append the module to ``COMMANDS``.
"""

from __future__ import annotations

import argparse

from esi.cli import caption, index, pretrain, retrieve, run, search, serve, zeroshot
from esi.cli import eval as evaluate  # not shadowing the builtin
from esi.cli.common import build_parser as _build_parser
from esi.cli.common import run_main

COMMANDS = (pretrain, zeroshot, index, search, retrieve, caption, evaluate, serve, run)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m esi`` with every command (for docs and tests)."""
    return _build_parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """``python -m esi`` and the ``esi`` console script: run one command, return its exit code."""
    return run_main(COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
