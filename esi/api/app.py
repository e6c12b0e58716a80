"""Deprecated path, kept for one release: this module is :mod:`esi.serve.api.app` (the same module object, so every
name and monkeypatch carries over). Import ``esi.serve.api.app``; nothing in this repository imports this path.
"""

import sys

from esi.serve.api import app as _module

sys.modules[__name__] = _module
