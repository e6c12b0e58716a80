"""``esi --help`` lists every command without importing the model, API or evaluation stacks; a command's own
``--help`` still shows all of its options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from esi.cli.main import COMMANDS

_PROBE = """
import contextlib, io, json, sys
from esi.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
heavy = sorted(m for m in ("torch", "fastapi", "chromadb", "transformers", "sklearn") if m in sys.modules)
print(json.dumps({"code": code, "help": out.getvalue(), "heavy": heavy}))
"""


def _help(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=300,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_top_level_help_lists_every_command_and_imports_no_stack() -> None:
    result = _help("--help")
    assert result["code"] == 0
    for command in COMMANDS:
        assert command.NAME in result["help"] and command.HELP[:40] in result["help"], command.NAME
    assert result["heavy"] == []  # it used to import FastAPI, torch and the eval suite (~18 s on a busy CPU)


def test_a_command_help_still_has_all_its_options() -> None:
    from esi.eval.suite import EVAL_TASKS

    result = _help("eval", "--help")
    assert result["code"] == 0
    assert "--what" in result["help"] and "--class-text" in result["help"]
    assert ",".join(EVAL_TASKS) in result["help"].replace("\n", "").replace(" ", "")


@pytest.mark.parametrize(("argv", "message"), [(["nonsense"], "invalid choice: 'nonsense'"),
                                               ([], "required: command")])
def test_unknown_or_missing_command_is_an_argparse_error(argv: list[str], message: str, capsys) -> None:
    from esi.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
