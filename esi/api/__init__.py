"""Deprecated package path, kept for one release: the HTTP API is :mod:`esi.serve.api`, its ``serve``
command :mod:`esi.cli.serve`. Each module here is the moved module itself (``esi.api.app`` is
``esi.serve.api.app``); nothing in this repository imports these paths.
"""
