"""Deprecated path, kept for one release: this module is :mod:`esi.serve.api.services` (the same module object, so every
name and monkeypatch carries over). Import ``esi.serve.api.services``; nothing in this repository imports this path.
"""

import sys

from esi.serve.api import services as _module

sys.modules[__name__] = _module
