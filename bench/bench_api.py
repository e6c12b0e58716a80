"""Short load test of the ESI API on loopback: N text->ECG searches, C at a time, against a server it starts.

    python bench/bench_api.py [--model DIR --store DIR --collection NAME] [--requests 200] [--concurrency 16]

Without ``--model``/``--store`` it builds, in a temp dir, a tiny randomly initialised ESI model (the real
MiniLM text tower, which is what a search request runs; the ECG encoder is not involved in text->ECG
search) and indexes 20 real PTB-XL records from ``../shared/data/ptbxl-mini`` (or $ESI_SHARED_DATA).
Queries are distinct real MIMIC-IV-ECG statements, so the server's query-embedding cache never hits.
Every answer is checked (status 200, exactly k results, ids from the collection, scores sorted).
Bounded: at most ``--requests`` requests and ``--max-seconds`` of wall time; loopback (127.0.0.1) only.
Writes ``bench/results/api.json`` (p50/p95 latency, throughput, machine info).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import machine_info  # bench/machine.py: the script's own folder is on sys.path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "api.json"
HOST = "127.0.0.1"  # loopback only




def shared_data() -> Path:
    return Path(os.environ.get("ESI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def build_fixture(workdir: Path, n_records: int) -> tuple[Path, Path, str, set[str]]:
    """A tiny model and an indexed PTB-XL collection (what the API tests use)."""
    from corpora.registry import get_reader
    from esi.inference import ESIInference, save_random_model
    from esi.search import ECGIndex, item_id, open_collection

    model_dir = save_random_model(workdir / "model", "micro", captions=["sinus rhythm. normal ecg."])
    store_dir = workdir / "store"
    inference = ESIInference(model_dir)
    reader = get_reader("ptbxl", shared_data() / "ptbxl-mini")
    index = ECGIndex(inference, open_collection(str(store_dir), "ecg", kind="ecg", inference=inference,
                                                model_dir=str(model_dir)))
    record_ids = reader.record_ids()[:n_records]
    report = index.index_reader(reader, record_ids, progress=False)
    print(f"fixture: {report.summary()}", flush=True)
    if report.skipped:
        raise SystemExit(f"fixture records skipped: {report.skipped}")
    return model_dir, store_dir, "ecg", {item_id(reader.name, r) for r in record_ids}


def start_server(model_dir: Path, store_dir: Path, collection: str, port: int, log_path: Path,
                 timeout_s: float) -> subprocess.Popen:
    from retrieval.service import start_service

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    command = [sys.executable, "-m", "esi.api.cli", "serve", "--model", str(model_dir), "--store", str(store_dir),
               "--collection", collection, "--host", HOST, "--port", str(port), "--log-level", "warning"]
    return start_service(command, f"http://{HOST}:{port}/api/health", log_path, timeout_s=timeout_s, env=env,
                         cwd=REPO_ROOT)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_load(base: str, queries: list[str], k: int, concurrency: int, max_seconds: float,
             valid_ids: set[str] | None) -> dict[str, object]:
    import httpx

    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base, timeout=60.0, limits=limits) as client:

        collection_size = client.get("/api/health").json()["collection"]["count"]
        expected = min(k, collection_size)

        def one(query: str) -> tuple[float | None, str | None]:
            if time.monotonic() > deadline:
                return None, "not sent: time budget used up"
            started = time.perf_counter()
            response = client.get("/api/search", params={"q": query, "k": k})
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                return elapsed, f"status {response.status_code}: {response.text[:200]}"
            results = response.json()["results"]
            if len(results) != expected:
                return elapsed, f"{len(results)} results, expected {expected}"
            if valid_ids is not None and not {r["id"] for r in results} <= valid_ids:
                return elapsed, "result ids outside the collection"
            scores = [r["score"] for r in results]
            if scores != sorted(scores, reverse=True):
                return elapsed, "results not sorted by score"
            return elapsed, None

        client.get("/api/search", params={"q": "warm-up", "k": k})  # model/threads warm, not measured
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outcomes = list(pool.map(one, queries))
        wall = time.perf_counter() - started
    latencies = [t for t, error in outcomes if t is not None and error is None]
    errors = [error for _, error in outcomes if error is not None]
    return {"latencies": latencies, "errors": errors, "wall_s": wall, "collection_size": collection_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ESI model directory (default: build a tiny one)")
    parser.add_argument("--store", help="Chroma directory with an indexed ECG collection")
    parser.add_argument("--collection", default="ecg")
    parser.add_argument("--records", type=int, default=20, help="PTB-XL records to index for the built fixture")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=20,
                        help="extra requests sent one at a time first, for the unloaded service time")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if (args.model is None) != (args.store is None):
        parser.error("give both --model and --store, or neither")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    statements = (shared_data() / "mimic-statements" / "statements.txt").read_text(encoding="utf-8").splitlines()
    total = args.requests + args.sequential
    distinct = list(dict.fromkeys(s.strip() for s in statements if len(s.strip()) > 8))
    if len(distinct) < total:
        raise SystemExit(f"only {len(distinct)} distinct statements for {total} requests")
    queries, sequential_queries = distinct[: args.requests], distinct[args.requests:total]

    machine_at_start = machine_info()  # load average before our own server adds to it
    with tempfile.TemporaryDirectory(prefix="esi-bench-api-") as tmp:
        workdir = Path(tmp)
        if args.model:
            model_dir, store_dir, collection = Path(args.model), Path(args.store), args.collection
            valid_ids = None
        else:
            model_dir, store_dir, collection, valid_ids = build_fixture(workdir, args.records)
        from retrieval.service import free_port, stop_service

        port = free_port()
        started = time.perf_counter()
        server = start_server(model_dir, store_dir, collection, port, workdir / "server.log", timeout_s=300)
        startup_s = time.perf_counter() - started
        try:
            single = run_load(f"http://{HOST}:{port}", sequential_queries, args.k, 1, args.max_seconds, valid_ids)
            result = run_load(f"http://{HOST}:{port}", queries, args.k, args.concurrency, args.max_seconds,
                              valid_ids)
        finally:
            stop_service(server)

    latencies = [t * 1000 for t in result["latencies"]]
    single_latencies = [t * 1000 for t in single["latencies"]]
    errors = result["errors"] + single["errors"]
    ok = len(latencies)
    report = {
        "metrics": {
            "search_p50_ms": {"value": round(statistics.median(latencies), 1) if latencies else None, "unit": "ms",
                              "note": f"{args.requests} GET /api/search, {args.concurrency} concurrent, k={args.k}"},
            "search_p95_ms": {"value": round(percentile(latencies, 95), 1) if latencies else None, "unit": "ms"},
            "search_max_ms": {"value": round(max(latencies), 1) if latencies else None, "unit": "ms"},
            "search_sequential_p50_ms": {
                "value": round(statistics.median(single_latencies), 1) if single_latencies else None, "unit": "ms",
                "note": f"{args.sequential} searches one at a time (service time without queueing)"},
            "search_throughput": {"value": round(ok / result["wall_s"], 1), "unit": "req/s"},
            "search_ok": {"value": ok, "unit": "requests", "target": f"== {args.requests}"},
            "search_errors": {"value": len(errors), "unit": "requests", "target": "0"},
            "server_startup_s": {"value": round(startup_s, 1), "unit": "s",
                                 "note": "incl. embedding the knowledge corpus when not yet in the store"},
        },
        "config": {"requests": args.requests, "concurrency": args.concurrency, "k": args.k,
                   "sequential_requests": args.sequential,
                   "collection_size": result["collection_size"], "model": "given" if args.model else "tiny random (MiniLM text)",
                   "host": HOST},
        "errors_sample": errors[:5],
        "machine": machine_at_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_out, out)
    print(json.dumps(report["metrics"], indent=1))
    return 0 if not errors and ok == args.requests and len(single_latencies) == args.sequential else 1


if __name__ == "__main__":
    raise SystemExit(main())
