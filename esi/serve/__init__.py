"""Using a trained model: inference, search, plotting and the HTTP API.

- :mod:`~esi.serve.inference`  read a record from disk, fit it to the model's input, embed ECGs and texts, caption
- :mod:`~esi.serve.search`     Chroma collections of ECG and text embeddings (index, text -> ECG, ECG -> text)
- :mod:`~esi.serve.plotting`   12-lead ECG plots on ECG paper (PNG/SVG)
- :mod:`~esi.serve.api`        the FastAPI app and search page (``python -m esi serve``)
"""
