"""Zero-shot classification: label sets, prompt templates and the classifier that scores ECG embeddings.

- :mod:`~esi.zeroshot.classifier`  class text (templates, knowledge, views, mean) -> class embeddings -> scores
- :mod:`~esi.zeroshot.labelsets`   label sets as data (``labelsets/*.json``), resolved against a dataset
- :mod:`~esi.zeroshot.templates`   prompt templates as data (``templates/*.json``)

``esi.zeroshot`` was one module; its public names stay importable from here.
"""

from __future__ import annotations

from esi.model.embed import TextEncoder, embed_texts, to_numpy
from esi.zeroshot.classifier import (
    CALIBRATIONS,
    CLASS_TEXTS,
    DEFAULT_CALIBRATION,
    DEFAULT_CLASS_TEXT,
    ZeroShotClassifier,
    calibrate,
    class_codes,
    knowledge_descriptions,
    member_names,
    prototype_classifier,
)
from esi.zeroshot.templates import TemplateError, available_templates, load_templates, templates_dir

__all__ = [
    "CALIBRATIONS", "CLASS_TEXTS", "DEFAULT_CALIBRATION", "DEFAULT_CLASS_TEXT", "TemplateError", "TextEncoder",
    "ZeroShotClassifier", "available_templates", "calibrate", "class_codes", "embed_texts", "knowledge_descriptions",
    "load_templates", "member_names", "prototype_classifier", "templates_dir", "to_numpy",
]
