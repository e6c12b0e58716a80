"""Name -> reader class for every supported ECG database, so CLIs and configs pick by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import DatasetReader
from .cinc import CincReader
from .cpsc2018 import CPSC2018Reader
from .mimic import MimicReader
from .ptbxl import PTBXLReader

READERS: dict[str, type[DatasetReader]] = {
    "ptbxl": PTBXLReader,
    "mimic": MimicReader,
    "cinc": CincReader,
    "cpsc2018": CPSC2018Reader,
}


def get_reader(name: str, root: str | Path, **kwargs: Any) -> DatasetReader:
    """Build the reader registered as ``name`` (keyword options go to its constructor)."""
    try:
        reader_class = READERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(READERS)}") from None
    return reader_class(root, **kwargs)


def list_readers() -> list[dict[str, Any]]:
    """Each registered reader's name, description and label vocabulary (no data needed)."""
    return [
        {"name": cls.name, "description": cls.description, "label_vocabulary": cls.label_vocabulary}
        for cls in READERS.values()
    ]
