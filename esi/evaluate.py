"""Deprecated path, kept for one release: ``esi.evaluate`` was split into :mod:`esi.eval` (metrics, data,
one module per task, the suite's task registry, the report); ``to_json`` moved to :mod:`esi.model.io` and
``parse_folds`` to :mod:`esi.cli.common`. Import from those modules; nothing in this repository imports this one.
"""

from esi.cli.common import parse_folds
from esi.eval.data import EvalData, load_eval_data, merge_eval_data
from esi.eval.finetune import finetune_evaluation
from esi.eval.metrics import (
    best_f1_thresholds,
    classification_report,
    f1_at_thresholds,
    multilabel_auc,
    recall_at_k,
)
from esi.eval.patient_id import patient_id_evaluation
from esi.eval.probe import probe_evaluation
from esi.eval.query import query_evaluation, query_set
from esi.eval.report import markdown_table, summary_rows
from esi.eval.retrieval import caption_texts, retrieval_evaluation
from esi.eval.suite import EVAL_TASKS, ZEROSHOT_SETS, EvalOptions, run_evaluation
from esi.eval.zeroshot import reference_scores, zeroshot_evaluation
from esi.model.io import to_json
from esi.zeroshot.classifier import prototype_classifier

__all__ = [
    "EVAL_TASKS", "ZEROSHOT_SETS", "EvalData", "EvalOptions", "best_f1_thresholds", "caption_texts",
    "classification_report", "f1_at_thresholds", "finetune_evaluation", "load_eval_data", "markdown_table",
    "merge_eval_data", "multilabel_auc", "parse_folds", "patient_id_evaluation", "probe_evaluation",
    "prototype_classifier", "query_evaluation", "query_set", "recall_at_k", "reference_scores",
    "retrieval_evaluation", "run_evaluation", "summary_rows", "to_json", "zeroshot_evaluation",
]
