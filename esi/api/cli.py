"""Deprecated path, kept for one release: this module is :mod:`esi.cli.serve` (``python -m esi.api.cli
serve ...`` still runs it). Import ``esi.cli.serve``; nothing in this repository imports this path.
"""

import sys

from esi.cli import serve as _module

if __name__ == "__main__":
    raise SystemExit(_module.main())

sys.modules[__name__] = _module
