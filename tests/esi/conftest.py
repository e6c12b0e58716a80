"""Fixtures for the ESI model/training tests: real PTB-XL records written in the export/caption schemas."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

# A model small enough for CPU unit tests; same code paths as the registered sizes.
ESI_TEST_MODEL = {
    "embed_dim": 32,
    "n_samples": 256,
    "ecg": {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "drop_path_rate": 0.1},
    "decoder": {"width": 32, "layers": 1, "heads": 2, "context_length": 48},
    "text": {"max_length": 48},
}


# ---- writers in the fixed schemas (test data only; the real export is corpora/export.py, captions cqa/batch.py) ----
def template_caption(record) -> str:
    """A deterministic stand-in caption (demographics + label descriptions) where CQA output is absent."""
    who = " ".join(p for p in (f"{record.age:g}-year-old" if record.age is not None else "",
                               record.sex or "patient") if p)
    return f"ECG of a {who}. Findings: {_label_text(record) or 'none recorded'}."


def _label_text(record) -> str:
    """:func:`cqa.caption.label_text` (the no_cqa ablation's text), highest confidence first."""
    from cqa.caption import label_text

    ranked = dict(sorted(record.labels.items(), key=lambda item: -item[1]))
    return label_text(ranked, record.label_vocabulary, record.label_info)


def write_pairs(records: Iterable, signals_path: str | Path, captions_path: str | Path,
                row_group_size: int = 64) -> int:
    """Write ECGRecords to a signal Parquet (:data:`corpora.export.SCHEMA`, as ``corpora export`` writes it)
    and a caption Parquet; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from corpora.export import records_to_table

    records = list(records)
    Path(signals_path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(records_to_table(records), signals_path, row_group_size=row_group_size)
    caption_rows = [{"record_id": record.record_id, "caption": template_caption(record),
                     "label_text": _label_text(record), "fold": record.fold} for record in records]
    caption_schema = pa.schema([("record_id", pa.string()), ("caption", pa.string()), ("label_text", pa.string()),
                                ("fold", pa.int64())])
    Path(captions_path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(caption_rows, schema=caption_schema), captions_path)
    return len(records)


@pytest.fixture(scope="session")
def short_captions() -> list[str]:
    """Six short, distinct report lines: the caption vocabulary and targets of the model and decoding tests."""
    return [
        "sinus rhythm with normal axis.",
        "atrial fibrillation with rapid ventricular response.",
        "left bundle branch block.",
        "sinus bradycardia, otherwise normal ecg.",
        "inferior myocardial infarction, age undetermined.",
        "first degree av block.",
    ]


@pytest.fixture(scope="session")
def esi_pairs(ptbxl_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(signals.parquet, captions.parquet) for 60 real PTB-XL records (folds 1-9, 100 Hz)."""
    from corpora.ptbxl import PTBXLReader

    reader = PTBXLReader(ptbxl_root, rate=100)
    by_fold: dict[int, list] = {}
    for record_id in reader.record_ids():
        meta = reader.read_metadata(record_id)
        bucket = by_fold.setdefault(meta.fold, [])
        if len(bucket) < (12 if meta.fold == 9 else 6):
            bucket.append(record_id)
    records = [reader.read(rid) for fold in sorted(by_fold) for rid in by_fold[fold]]
    folder = tmp_path_factory.mktemp("esi_pairs")
    write_pairs(records, folder / "signals.parquet", folder / "captions.parquet", row_group_size=8)
    return folder / "signals.parquet", folder / "captions.parquet"


@pytest.fixture(scope="session")
def esi_test_model() -> dict:
    """Model overrides for a CPU-unit-test-sized ESI (applied on top of the ``nano`` config)."""
    import copy

    return copy.deepcopy(ESI_TEST_MODEL)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest registered config ("nano"), random init, saved once per test session."""
    from esi.model.factory import save_random_model

    directory = tmp_path_factory.getbasetemp() / "esi-nano-random"
    save_random_model(directory, "nano")
    return directory


@pytest.fixture(autouse=True)
def _esi_single_thread():
    """Tiny test models run 10-50x slower with 2 intra-op threads on a loaded 2-core box; use one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def esi_cqa_captions(ptbxl_root: Path, esi_pairs, tmp_path_factory) -> Path:
    """Grounded CQA caption rows (the ``cqa caption`` schema) for the records of ``esi_pairs``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from corpora.ptbxl import PTBXLReader
    from cqa.batch import SCHEMA
    from cqa.caption import Captioner

    reader = PTBXLReader(ptbxl_root, rate=100)
    ids = pq.read_table(esi_pairs[1], columns=["record_id"]).column("record_id").to_pylist()
    captioner = Captioner()
    rows = [captioner.caption_record(reader.read_metadata(rid)).to_row() for rid in ids]
    path = tmp_path_factory.mktemp("esi_cqa") / "captions.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


@pytest.fixture(scope="session")
def recompute_zeroshot_auc():
    """Function (model_dir, ptbxl_root, labelset, fold, limit) -> {class: sklearn ROC AUC} of the default
    zero-shot scores on the first ``limit`` records of PTB-XL ``fold`` (100 Hz): an independent recomputation
    of what ``zeroshot``/``eval`` report, for classes with both outcomes."""

    def recompute(model_dir: Path, ptbxl_root: Path, labelset: str, fold: int, limit: int) -> dict[str, float]:
        from sklearn.metrics import roc_auc_score

        from corpora.ptbxl import PTBXLReader
        from esi.eval.data import load_eval_data
        from esi.serve.inference import ESIInference
        from esi.zeroshot import DEFAULT_CALIBRATION, DEFAULT_CLASS_TEXT, ZeroShotClassifier
        from esi.zeroshot.labelsets import load_labelset

        inference = ESIInference(model_dir)
        data = load_eval_data(PTBXLReader(ptbxl_root, rate=100), inference.input, folds=[fold],
                              limit_per_fold_set=limit, progress=False)
        assert len(data.record_ids) == limit and all(data.labels)
        chosen = load_labelset(labelset)
        resolved = chosen.resolve(data.scp_statements) if chosen.needs_scp_statements else chosen.resolve()
        classifier = ZeroShotClassifier.build(inference.model, resolved, "ecg", class_text=DEFAULT_CLASS_TEXT,
                                              calibration=DEFAULT_CALIBRATION, prior=inference.label_prior)
        scores = classifier.scores(inference.embed_signals(data.signals))
        y = resolved.targets(data.labels, data.vocabulary)
        return {c: float(roc_auc_score(y[:, j], scores[:, j])) for j, c in enumerate(resolved.class_ids)
                if 0 < y[:, j].sum() < len(y)}

    return recompute
