"""ESI, the ECG-text model: contrastive + captioning pretraining on CQA captions, and its uses.

Sub-packages, after open_clip's split of library and training code:

- :mod:`esi.model`     what a model is (encoders, decoder, loss, registry, configs, save/load)
- :mod:`esi.train`     how a model is made (the pretraining loop, data, caption views, presets)
- :mod:`esi.zeroshot`  zero-shot classification (classifier, label sets, templates)
- :mod:`esi.eval`      the evaluation suite (metrics, one module per task, the report)
- :mod:`esi.serve`     inference, search, plotting and the HTTP API
- :mod:`esi.cli`       ``python -m esi``, one module per command; :mod:`esi.pipeline` is the main job

Imports between them never form a cycle (``tests/test_import_graph.py``).
"""
