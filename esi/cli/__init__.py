"""The ``python -m esi`` command line: one module per command, composed by :mod:`esi.cli.main`.

``pretrain``, ``zeroshot``, ``index-ecgs`` (:mod:`~esi.cli.index`), ``search``, ``retrieve``, ``caption``,
``eval``, ``serve`` and ``run`` (the main job, :mod:`esi.pipeline`); shared options and error handling
in :mod:`~esi.cli.common`.
"""
