"""Zero-shot prompt templates kept as data (``<name>.json`` with a ``templates`` list of ``{}`` strings)."""
