"""Atomic file writes, the one helper every package uses (corpora -> cqa -> esi): write a temp file in
the target's folder, fsync it, then ``os.replace`` it into place, so a crash or a kill at any moment
leaves the old file or the new one, never half a file (exports, caption parts and checkpoints resume on that)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """``write(temp_path)`` fills a temp file next to ``path``; it is fsync'ed and renamed onto ``path``.

    The temp file (``.NAME.*.tmp``, hidden, so globs for ``NAME`` never see it) is removed on any failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, value: Any, *, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``value`` as indented UTF-8 JSON (non-ASCII kept as is) plus a newline, atomically."""
    atomic_write_text(path, json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=sort_keys) + "\n")
