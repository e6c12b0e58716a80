"""Deprecated path, kept for one release: this module is :mod:`esi.train.data` (the same module object, so every
name and monkeypatch carries over). Import ``esi.train.data``; nothing in this repository imports this path.
"""

import sys

from esi.train import data as _module

sys.modules[__name__] = _module
