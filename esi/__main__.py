"""``python -m esi <command>``; the commands live in :mod:`esi.cli` (one module each)."""

from esi.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
