"""Lazy re-exports for the package ``__init__`` files that keep an old module's public names.

Why: ``esi.model`` and ``esi.train`` were modules before they became packages, so ``from esi.model import
ESIModel`` must keep working; importing them eagerly would load torch and transformers for anyone who
only wants a light helper such as :mod:`esi.model.io`. Each package lists its names in a table and
repeats the imports under ``TYPE_CHECKING``, so type checkers and the import-graph test
(``tests/test_import_graph.py``) see the same edges the lazy lookup follows.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` (PEP 562): ``exports`` maps a module to the names it
    provides; a name is imported on first access and then cached in the package namespace."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
