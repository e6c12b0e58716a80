"""Deprecated path, kept for one release: moved to :mod:`esi.serve.inference`; ``save_random_model`` to
:mod:`esi.model.factory`. Import from those modules; nothing in this repository imports this one.
"""

from esi.model.factory import save_random_model
from esi.serve.inference import (
    QUERY_TEXTS,
    ESIInference,
    InputError,
    ModelInput,
    PreparedECG,
    ResampledWarning,
    fit_to_model,
    load_model,
    load_record,
)

__all__ = ["QUERY_TEXTS", "ESIInference", "InputError", "ModelInput", "PreparedECG", "ResampledWarning",
           "fit_to_model", "load_model", "load_record", "save_random_model"]
