"""ECG <-> caption retrieval: recall@k over held-out (record, caption) pairs, for CQA captions or label text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esi.eval.data import EvalData
from esi.eval.metrics import recall_at_k
from esi.serve.inference import ESIInference


def caption_texts(data: EvalData, kind: str, captions_file: str | Path | None = None) -> list[str | None]:
    """Per record the text used for retrieval: ``cqa`` (grounded CQA caption, or the ``caption`` column of
    a CQA Parquet file), or ``label_text`` (the dataset's own label wording, the no-CQA ablation text)."""
    if captions_file is not None:
        from esi.train.data import read_captions

        table = read_captions(captions_file, "caption" if kind == "cqa" else "label_text")
        return [table.texts.get(r) or table.texts.get(f"{data.dataset}:{r}") for r in data.record_ids]
    from cqa.caption import Captioner, label_text

    if kind == "label_text":
        return [label_text(r.labels, r.label_vocabulary, r.label_info) or None for r in data.records]
    if kind != "cqa":
        raise ValueError(f"caption kind must be 'cqa' or 'label_text', not {kind!r}")
    captioner = Captioner()
    return [captioner.caption_record(r).caption for r in data.records]


def retrieval_evaluation(
    inference: ESIInference, data: EvalData, texts: Sequence[str | None], *, folds: Sequence[int] | None,
    ks: Sequence[int] = (1, 5, 10), model_key: str = "",
) -> dict[str, Any]:
    """ECG -> caption and caption -> ECG recall@k over the held-out (record, caption) pairs.

    Records with identical caption text are interchangeable: retrieving any of them counts.
    """
    mask = data.fold_mask(folds) & np.array([bool(t) for t in texts], dtype=bool)
    if not mask.any():
        return {"n_pairs": 0}
    ecg = data.embeddings(inference, model_key)[mask]
    pair_texts = [t for t, keep in zip(texts, mask) if keep]
    unique = list(dict.fromkeys(pair_texts))
    text_embeddings = inference.embed_texts(unique)
    index = {t: i for i, t in enumerate(unique)}
    # ECG -> text: candidates are the distinct caption texts; caption -> ECG: candidates are all ECGs.
    ecg_to_text = ecg @ text_embeddings.T
    relevant_text = np.zeros_like(ecg_to_text, dtype=bool)
    relevant_text[np.arange(len(pair_texts)), [index[t] for t in pair_texts]] = True
    text_to_ecg = text_embeddings @ ecg.T
    owner = np.array([index[t] for t in pair_texts])
    relevant_ecg = owner[None, :] == np.arange(len(unique))[:, None]
    return {
        "folds": folds, "n_pairs": int(mask.sum()), "n_distinct_texts": len(unique),
        "ecg_to_text": recall_at_k(ecg_to_text, ks, relevant_text),
        "text_to_ecg": recall_at_k(text_to_ecg, ks, relevant_ecg),
        "chance_ecg_to_text@1": 1.0 / len(unique),
    }
