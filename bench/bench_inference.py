"""ESI inference speed: batched zero-shot throughput and text -> ECG search latency.

Writes ``bench/results/inference.json`` (``metrics`` + ``machine``), the format bench/run_all.py gathers.

- ``zeroshot_throughput``: ECGs per second through ``encode_ecg`` + cosine scoring against the
  PTB-XL superclass prompts, batches of 64 model-ready 10-s 100 Hz signals, model loaded, prompts
  embedded once beforehand (that is how a batch job runs). Target >= 100 ECG/s (CPU default).
- ``zeroshot_end_to_end``: the same, but starting from real PTB-XL files on disk (read WFDB +
  preprocess + embed + score), when the shared data is present.
- ``search_p50_ms`` / ``search_p95_ms``: latency of a top-5 query over a 10,000-vector Chroma
  collection (random unit vectors of the model's dimension; persistent store in a temp dir).
- ``text_search_p50_ms``: text query -> ESI text embedding -> the same top-5 query.

Without ``--model`` the CPU-default architecture (``nano``) is built with random weights; its cost
equals a trained one's. The JSON says which was used.

    python bench/bench_inference.py [--model DIR] [--n-ecgs 1024] [--collection-size 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import machine_info  # bench/machine.py: the script's own folder is on sys.path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "inference.json"
SHARED_PTBXL = Path(os.environ.get("ESI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "ptbxl-mini"



def throughput(inference, classifier, signals: np.ndarray, batch_size: int, repeats: int) -> tuple[float, float]:
    """Median wall-clock ECG/s over ``repeats`` full passes (after a warm-up batch), and ECGs per
    process CPU-second (less sensitive to other jobs sharing the machine)."""
    inference.batch_size = batch_size
    classifier.scores(inference.embed_signals(signals[:batch_size]))
    rates, per_cpu = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        classifier.scores(inference.embed_signals(signals))
        rates.append(len(signals) / (time.perf_counter() - start))
        per_cpu.append(len(signals) / (time.process_time() - cpu))
    return statistics.median(rates), statistics.median(per_cpu)


def end_to_end(inference, classifier, n_records: int) -> float | None:
    if not (SHARED_PTBXL / "ptbxl_database.csv").is_file():
        return None
    from corpora.ptbxl import PTBXLReader

    reader = PTBXLReader(SHARED_PTBXL)
    ids = reader.record_ids()[:n_records]
    start = time.perf_counter()
    embeddings, prepared = inference.embed_records(reader.read(i) for i in ids)
    classifier.scores(embeddings)
    return len(prepared) / (time.perf_counter() - start)


def search_latency(inference, size: int, queries: int, k: int) -> dict[str, float]:
    from esi.serve.search import ECGIndex, open_collection

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(size, inference.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as store:
        collection = open_collection(store, "bench-ecgs", kind="ecg", inference=inference)
        metas = [{"record_id": str(i), "dataset": "bench", "labels": "{}", "codes": "", "path": ""} for i in range(size)]
        start = time.perf_counter()
        collection.add([f"bench:{i}" for i in range(size)], vectors, metas)
        build_s = time.perf_counter() - start
        index = ECGIndex(inference, collection)
        probes = rng.normal(size=(queries, inference.embed_dim)).astype(np.float32)
        index.search_embedding(probes[0], k=k)  # warm-up
        vector_ms = []
        for probe in probes:
            start = time.perf_counter()
            hits = index.search_embedding(probe, k=k)
            vector_ms.append((time.perf_counter() - start) * 1000)
            assert len(hits) == k
        texts = ["atrial fibrillation", "sinus rhythm with left bundle branch block", "inferior myocardial infarction",
                 "left ventricular hypertrophy with strain", "sinus bradycardia"]
        index.search(texts[0], k=k)
        text_ms = []
        for i in range(min(queries, 50)):
            start = time.perf_counter()
            index.search(texts[i % len(texts)], k=k)
            text_ms.append((time.perf_counter() - start) * 1000)
    return {
        "build_s": build_s, "p50": statistics.median(vector_ms), "p95": float(np.percentile(vector_ms, 95)),
        "text_p50": statistics.median(text_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="trained ESI model directory (default: random-init CPU-default 'nano')")
    parser.add_argument("--n-ecgs", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="64,256", help="batch sizes to time (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--collection-size", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from esi.model.factory import save_random_model
    from esi.model.io import atomic_write_text
    from esi.serve.inference import ESIInference
    from esi.zeroshot import ZeroShotClassifier
    from esi.zeroshot.labelsets import load_labelset

    with tempfile.TemporaryDirectory() as scratch:
        if args.model:
            model_dir, model_note = Path(args.model), f"trained model {args.model}"
        else:
            model_dir = save_random_model(Path(scratch) / "nano", "nano")
            model_note = "random-init CPU-default 'nano' ESIModel (same cost as trained)"
        inference = ESIInference(model_dir)
    superclass = load_labelset("superclass")
    if (SHARED_PTBXL / "scp_statements.csv").is_file():
        superclass = superclass.resolve(SHARED_PTBXL)
    classifier = ZeroShotClassifier.build(inference.model, superclass, "ecg")
    rng = np.random.default_rng(0)
    signals = rng.normal(size=(args.n_ecgs, 12, inference.n_samples)).astype(np.float32)
    load_before = os.getloadavg()[0]
    by_batch = {int(b): throughput(inference, classifier, signals, int(b), args.repeats)
                for b in args.batch_sizes.split(",")}
    best_batch = max(by_batch, key=lambda b: by_batch[b][0])
    inference.batch_size = best_batch
    e2e = end_to_end(inference, classifier, min(args.n_ecgs, 512))
    search = search_latency(inference, args.collection_size, args.queries, k=5)
    config = inference.model.config
    metrics: dict[str, dict[str, object]] = {
        "zeroshot_throughput": {
            "value": round(by_batch[best_batch][0], 1), "unit": "ECG/s", "target": ">= 100",
            "note": f"{model_note}; {config.sampling_rate:g} Hz x {config.n_samples} samples, batch "
                    f"{best_batch}, {args.n_ecgs} ECGs, median of {args.repeats} passes, "
                    f"{torch.get_num_threads()} torch threads; 1-min load average {load_before:.1f} at start",
        },
        "zeroshot_ecg_per_cpu_second": {
            "value": round(by_batch[best_batch][1], 1), "unit": "ECG/CPU-s",
            "note": "the same run per process CPU-second (all threads); less affected by other jobs",
        },
        **{f"zeroshot_throughput_batch{b}": {"value": round(r[0], 1), "unit": "ECG/s"} for b, r in by_batch.items()},
        "search_p50_ms": {
            "value": round(search["p50"], 2), "unit": "ms",
            "note": f"top-5 over {args.collection_size} random unit vectors ({inference.embed_dim}-d), "
                    f"persistent Chroma store, {args.queries} queries",
        },
        "search_p95_ms": {"value": round(search["p95"], 2), "unit": "ms"},
        "text_search_p50_ms": {
            "value": round(search["text_p50"], 2), "unit": "ms",
            "note": "text query -> ESI text embedding (MiniLM tower) -> top-5 query",
        },
        "index_build_10k_s": {"value": round(search["build_s"], 2), "unit": "s",
                              "note": "Chroma upsert of the precomputed vectors"},
    }
    if e2e is not None:
        metrics["zeroshot_end_to_end"] = {
            "value": round(e2e, 1), "unit": "ECG/s",
            "note": "real PTB-XL 100 Hz files: WFDB read + preprocess + embed + score",
        }
    result = {"metrics": metrics, "machine": machine_info(), "model": model_note,
              "date": time.strftime("%Y-%m-%d")}
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
