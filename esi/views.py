"""Deprecated path, kept for one release: this module is :mod:`esi.train.views` (the same module object, so every
name and monkeypatch carries over). Import ``esi.train.views``; nothing in this repository imports this path.
"""

import sys

from esi.train import views as _module

sys.modules[__name__] = _module
