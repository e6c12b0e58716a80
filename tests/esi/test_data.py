"""Pair data: join accounting, folds, preprocessing, deterministic/resumable order, streaming = in-memory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esi.train.data import DataError, InMemoryPairs, StreamingPairs, preprocess_signal, read_captions


def test_join_counts_unmatched_rows(esi_pairs, tmp_path) -> None:
    signals, captions = esi_pairs
    table = pq.read_table(captions)
    ids = table.column("record_id").to_pylist()
    folds = table.column("fold").to_pylist()
    drop = [i for i, f in enumerate(folds) if f in (1, 2)][:3]  # 3 train signals lose their caption
    kept = table.take([i for i in range(len(ids)) if i not in drop])
    extra = pa.table({"record_id": ["no-such-ecg"], "caption": ["orphan caption"], "label_text": ["x"],
                      "fold": pa.array([1], pa.int64())})
    pq.write_table(pa.concat_tables([kept, extra.cast(kept.schema)]), tmp_path / "captions.parquet")

    pairs = InMemoryPairs(signals, read_captions(tmp_path / "captions.parquet"), folds=list(range(1, 9)),
                          target_rate=100.0, target_samples=1000)
    stats = pairs.stats.as_dict()
    assert stats["signals_in_folds"] == 48
    assert stats["signals_without_caption"] == 3
    assert stats["captions_without_signal"] == 1
    assert len(pairs) == stats["pairs"] == 45
    assert pairs.signals.shape == (45, 12, 1000) and pairs.signals.dtype == np.float32
    assert not set(pairs.record_ids) & {ids[i] for i in drop}


def test_folds_and_label_text_column(esi_pairs) -> None:
    signals, captions = esi_pairs
    val = InMemoryPairs(signals, read_captions(captions, "label_text"), folds=[9], target_rate=100.0,
                        target_samples=1000)
    assert len(val) == 12
    table = pq.read_table(captions).to_pandas().set_index("record_id")
    assert all(table.loc[rid, "fold"] == 9 for rid in val.record_ids)
    assert val.texts == [table.loc[rid, "label_text"] for rid in val.record_ids]
    with pytest.raises(DataError, match="missing column.*'summary'"):
        read_captions(captions, "summary")


def test_preprocess_signal_resamples_and_reports_bad_records() -> None:
    t = np.arange(5000) / 500.0
    signal = np.stack([np.sin(2 * np.pi * 1.2 * t) * (lead + 1) for lead in range(12)]).astype(np.float32)
    signal[3, 100:110] = np.nan
    out = preprocess_signal(signal.ravel(), "r1", 12, 5000, 500.0, 100.0, 1000)
    assert out.shape == (12, 1000) and np.isfinite(out).all()
    assert abs(out.mean()) < 1e-5 and out.std() == pytest.approx(1.0, abs=1e-3)
    # the 1.2 Hz sine survives the 500 -> 100 Hz resampling
    spectrum = np.abs(np.fft.rfft(out[0]))
    assert np.fft.rfftfreq(1000, 1 / 100)[spectrum.argmax()] == pytest.approx(1.2, abs=0.1)
    with pytest.raises(DataError, match="record r2: has 8 leads"):
        preprocess_signal(signal[:8].ravel(), "r2", 8, 5000, 500.0, 100.0, 1000)
    with pytest.raises(DataError, match="record r3: signal has 59999 values"):
        preprocess_signal(signal.ravel()[:-1], "r3", 12, 5000, 500.0, 100.0, 1000)


def test_order_is_deterministic_resumable_and_rank_sharded(esi_pairs) -> None:
    signals, captions = esi_pairs
    table = read_captions(captions)
    pairs = InMemoryPairs(signals, table, folds=list(range(1, 9)), target_rate=100.0, target_samples=1000, seed=5)
    full = [b.record_ids for b in pairs.batches(epoch=2, batch_size=8)]
    assert full == [b.record_ids for b in pairs.batches(epoch=2, batch_size=8)]
    assert full != [b.record_ids for b in pairs.batches(epoch=3, batch_size=8)]
    assert [b.record_ids for b in pairs.batches(epoch=2, batch_size=8, start_batch=2)] == full[2:]
    rank0 = [b.record_ids for b in pairs.batches(epoch=2, batch_size=4, rank=0, world_size=2)]
    rank1 = [b.record_ids for b in pairs.batches(epoch=2, batch_size=4, rank=1, world_size=2)]
    assert [a + b for a, b in zip(rank0, rank1)] == full  # the global batch is the single-process batch


def test_streaming_yields_the_same_pairs_in_bounded_memory(esi_pairs) -> None:
    signals, captions = esi_pairs
    table = read_captions(captions)
    common = {"folds": list(range(1, 9)), "target_rate": 100.0, "target_samples": 1000, "seed": 1}
    memory = InMemoryPairs(signals, table, **common)
    stream = StreamingPairs(signals, table, shuffle_buffer=10, **common)
    assert len(stream) == len(memory) == 48
    batches = list(stream.batches(epoch=0, batch_size=8))
    assert len(batches) == stream.steps_per_epoch(8) == 6
    seen = [rid for b in batches for rid in b.record_ids]
    assert sorted(seen) == sorted(memory.record_ids)
    by_id = dict(zip(memory.record_ids, memory.signals))
    for batch in batches[:2]:
        for rid, signal in zip(batch.record_ids, batch.signals.numpy()):
            np.testing.assert_array_equal(signal, by_id[rid])
    assert seen != memory.record_ids  # shuffled
    resumed = [b.record_ids for b in stream.batches(epoch=0, batch_size=8, start_batch=4)]
    assert resumed == [b.record_ids for b in batches[4:]]
    shards = [[rid for b in stream.batches(epoch=0, batch_size=4, rank=r, world_size=2) for rid in b.record_ids]
              for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert len(shards[0]) == len(shards[1])
