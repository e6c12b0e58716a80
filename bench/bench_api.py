"""Short load test of the ESI API on loopback: N text->ECG searches, C at a time, against a server it starts,
then a mixed burst of caption/search/health requests all at once.

    python bench/bench_api.py [--model DIR --store DIR --collection NAME] [--requests 200] [--concurrency 16]
                              [--mixed-requests 200] [--mixed-timeout 30] [--health-p95-ms 100]

Without ``--model``/``--store`` it builds, in a temp dir, a tiny randomly initialised ESI model (the real
MiniLM text tower, which is what a search request runs; the ECG encoder is not involved in text->ECG
search) and indexes 20 real PTB-XL records from ``../shared/data/ptbxl-mini`` (or $ESI_SHARED_DATA).
Queries are distinct real MIMIC-IV-ECG statements, so the server's query-embedding cache never hits.
Every answer is checked (status 200, exactly k results, ids from the collection, scores sorted).

The mixed run sends ``--mixed-requests`` requests at the same moment, a third each POST /api/caption (a
real PTB-XL record as a JSON signal), GET /api/search and GET /api/health, while a poller asks
/api/health every 50 ms (open loop: not waiting for the previous answer) until the burst is answered. The server's bounded worker pool answers what
it cannot queue with 503 + Retry-After; those are counted apart from errors (any other status, a 503
without Retry-After, a wrong answer, or no answer within ``--mixed-timeout`` s). It passes when no
request waits past the timeout, there are no errors, and the p95 of health *under load* (the polled
requests, sent while the burst is being worked off) is under ``--health-p95-ms``. The health requests
inside the burst are reported too: they queue behind the accept/parse of the whole burst in the
server's event loop, so they measure that, not the health check.
Bounded: at most ``--requests`` requests and ``--max-seconds`` of wall time; loopback (127.0.0.1) only.
Writes ``bench/results/api.json`` (p50/p95 latency, throughput, machine info).
"""

from __future__ import annotations

import argparse
import asyncio
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
POLL_INTERVAL_S = 0.05  # health poll period during the mixed burst




def shared_data() -> Path:
    return Path(os.environ.get("ESI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def build_fixture(workdir: Path, n_records: int) -> tuple[Path, Path, str, set[str]]:
    """A tiny model and an indexed PTB-XL collection (what the API tests use)."""
    from corpora.registry import get_reader
    from esi.model.factory import save_random_model
    from esi.serve.inference import ESIInference
    from esi.serve.search import ECGIndex, item_id, open_collection

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
    command = [sys.executable, "-m", "esi.cli.serve", "serve", "--model", str(model_dir), "--store", str(store_dir),
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


def caption_body() -> bytes:
    """A real PTB-XL record (100 Hz, 10 s) as the JSON body of an upload."""
    import wfdb

    record = wfdb.rdrecord(str(shared_data() / "ptbxl-mini" / "records100" / "00000" / "00001_lr"))
    signal = record.p_signal.T.round(4).tolist()
    return json.dumps({"signal": signal, "sampling_rate": float(record.fs), "name": "bench"}).encode()


def _summary(latencies_ms: list[float]) -> dict[str, float | None]:
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    return {"p50_ms": round(statistics.median(latencies_ms), 1), "p95_ms": round(percentile(latencies_ms, 95), 1),
            "max_ms": round(max(latencies_ms), 1)}


async def _http(host: str, port: int, method: str, target: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection: (status, lower-cased headers, body).

    Why not httpx here: with a couple of hundred connections open at once, httpx's async connection
    pool costs the *client* seconds of CPU on a small machine, which the bench would report as server
    latency (200 concurrent GET /api/labelsets: ~2 s p50 via httpx.AsyncClient, ~70 ms with this).
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode("ascii") + b"\r\n" + (body or b""))
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {name.strip().lower(): value.strip()
                   for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = headers.get("content-length")
        payload = await (reader.readexactly(int(length)) if length is not None else reader.read())
        return status, headers, payload
    finally:
        writer.close()


async def _mixed_burst(base: str, body: bytes, queries: list[str], n_requests: int, k: int,
                       timeout_s: float) -> dict[str, list[dict[str, object]]]:
    """Fire ``n_requests`` caption/search/health requests at once; poll health until all are answered."""
    from urllib.parse import urlencode, urlsplit

    address = urlsplit(base)
    host, port = address.hostname or HOST, address.port or 80

    async def one(kind: str, index: int) -> dict[str, object]:
        if kind == "caption":
            call = _http(host, port, "POST", "/api/caption", body)
        elif kind == "search":
            call = _http(host, port, "GET", "/api/search?" + urlencode({"q": queries[index % len(queries)], "k": k}))
        else:
            call = _http(host, port, "GET", "/api/health")
        started = time.perf_counter()
        try:
            status, headers, payload = await asyncio.wait_for(call, timeout_s)
        except TimeoutError:
            return {"kind": kind, "ms": (time.perf_counter() - started) * 1000, "outcome": "hung",
                    "error": f"no answer within {timeout_s:g} s"}
        except (OSError, ValueError, asyncio.IncompleteReadError) as err:
            return {"kind": kind, "ms": (time.perf_counter() - started) * 1000, "outcome": "error",
                    "error": f"{type(err).__name__}: {err}"}
        elapsed_ms = (time.perf_counter() - started) * 1000
        return {"kind": kind, "ms": elapsed_ms, **_judge(kind, status, headers, payload)}

    kinds = ("caption", "search", "health")
    burst = [asyncio.ensure_future(one(kinds[i % 3], i)) for i in range(n_requests)]
    # Open loop: a health request every POLL_INTERVAL_S whether or not the last one was answered, so a
    # stall shows as many slow samples rather than one (no coordinated omission).
    polls: list[asyncio.Future] = []
    await asyncio.sleep(POLL_INTERVAL_S)  # the burst is on its way; now health under the load it causes
    while True:  # at least one sample, then until the last burst request is answered
        polls.append(asyncio.ensure_future(one("health", 0)))
        if all(task.done() for task in burst):
            break
        await asyncio.sleep(POLL_INTERVAL_S)
    polled = list(await asyncio.gather(*polls))
    return {"burst": [task.result() for task in burst], "polled_health": polled}


def _judge(kind: str, status: int, headers: dict[str, str], payload: bytes) -> dict[str, object]:
    """ok (a valid 200), busy (503 with a usable Retry-After) or error, with the reason."""
    if status == 503:
        retry_after = headers.get("retry-after", "")
        if retry_after.isdigit() and int(retry_after) >= 1:
            return {"outcome": "busy", "retry_after_s": int(retry_after)}
        return {"outcome": "error", "error": f"503 without a usable Retry-After ({retry_after!r})"}
    if status != 200:
        return {"outcome": "error", "error": f"status {status}: {payload[:200].decode(errors='replace')}"}
    try:
        answer = json.loads(payload)
    except ValueError:
        return {"outcome": "error", "error": "200 with a body that is not JSON"}
    if kind == "caption" and not (isinstance(answer.get("caption"), str) and answer["caption"]):
        return {"outcome": "error", "error": "caption missing"}
    if kind == "search" and not answer.get("results"):
        return {"outcome": "error", "error": "no search results"}
    if kind == "health" and answer.get("status") != "ok":
        return {"outcome": "error", "error": f"health status {answer.get('status')!r}"}
    return {"outcome": "ok"}


def run_mixed(base: str, queries: list[str], n_requests: int, k: int, timeout_s: float,
              health_p95_ms: float) -> dict[str, object]:
    """The mixed burst, summarised: latency per kind, shares of errors and 503s, and the pass checks."""
    body = caption_body()
    started = time.perf_counter()
    outcomes = asyncio.run(_mixed_burst(base, body, queries, n_requests, k, timeout_s))
    wall = time.perf_counter() - started
    burst, polled = outcomes["burst"], outcomes["polled_health"]
    answered = [o for o in burst if o["outcome"] != "hung"]
    per_kind: dict[str, object] = {}
    for kind in ("caption", "search", "health"):
        items = [o for o in burst if o["kind"] == kind]
        per_kind[kind] = {
            "requests": len(items),
            "ok": sum(o["outcome"] == "ok" for o in items),
            "busy_503": sum(o["outcome"] == "busy" for o in items),
            "errors": sum(o["outcome"] in ("error", "hung") for o in items),
            "all_answers": _summary([o["ms"] for o in items if o["outcome"] != "hung"]),
            "ok_answers": _summary([o["ms"] for o in items if o["outcome"] == "ok"]),
        }
    burst_health = _summary([o["ms"] for o in burst if o["kind"] == "health" and o["outcome"] != "hung"])
    health = _summary([o["ms"] for o in polled if o["outcome"] != "hung"])
    hung = [o for o in burst + polled if o["outcome"] == "hung"]
    errors = [o for o in burst + polled if o["outcome"] == "error"]
    longest_ms = max((o["ms"] for o in burst + polled), default=0.0)
    checks = {
        "no_request_waits_past_timeout": not hung and longest_ms < timeout_s * 1000,
        "no_errors": not errors,
        "health_under_load_p95_under_target": health["p95_ms"] is not None and health["p95_ms"] < health_p95_ms,
    }
    return {
        "requests": n_requests, "wall_s": round(wall, 2), "timeout_s": timeout_s,
        "all_answers": _summary([o["ms"] for o in answered]),
        "share_ok": round(sum(o["outcome"] == "ok" for o in burst) / n_requests, 3),
        "share_503": round(sum(o["outcome"] == "busy" for o in burst) / n_requests, 3),
        "share_errors": round(sum(o["outcome"] in ("error", "hung") for o in burst) / n_requests, 3),
        "retry_after_s": sorted({o["retry_after_s"] for o in burst if o["outcome"] == "busy"}),
        "longest_wait_ms": round(longest_ms, 1),
        "health": {"under_load": {**health, "samples": len(polled),
                                  "note": f"polled every {POLL_INTERVAL_S * 1000:g} ms while the burst is worked off"},
                   "in_burst": {**burst_health, "note": "sent inside the burst: includes the server accepting and reading all of it"},
                   "target_p95_ms": health_p95_ms},
        "per_kind": per_kind,
        "checks": checks,
        "passed": all(checks.values()),
        "errors_sample": [o.get("error") for o in (hung + errors)[:5]],
    }


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
    parser.add_argument("--mixed-requests", type=int, default=200,
                        help="caption/search/health requests sent at once in the mixed run (0: skip it)")
    parser.add_argument("--mixed-timeout", type=float, default=30.0,
                        help="a mixed-run request with no answer after this many seconds counts as hung")
    parser.add_argument("--health-p95-ms", type=float, default=100.0, help="health p95 target in the mixed run")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if (args.model is None) != (args.store is None):
        parser.error("give both --model and --store, or neither")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    statements = (shared_data() / "mimic-statements" / "statements.txt").read_text(encoding="utf-8").splitlines()
    total = args.requests + args.sequential
    n_mixed_searches = (args.mixed_requests + 1) // 3
    distinct = list(dict.fromkeys(s.strip() for s in statements if len(s.strip()) > 8))
    if len(distinct) < total + n_mixed_searches:
        raise SystemExit(f"only {len(distinct)} distinct statements for {total + n_mixed_searches} requests")
    queries, sequential_queries = distinct[: args.requests], distinct[args.requests:total]
    mixed_queries = distinct[total: total + n_mixed_searches] or ["sinus rhythm"]

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
            mixed = (run_mixed(f"http://{HOST}:{port}", mixed_queries, args.mixed_requests, args.k,
                               args.mixed_timeout, args.health_p95_ms) if args.mixed_requests > 0 else None)
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
        "mixed": mixed,
        "machine": machine_at_start,
    }
    if mixed is not None:
        report["metrics"].update({
            "mixed_p50_ms": {"value": mixed["all_answers"]["p50_ms"], "unit": "ms",
                             "note": f"{args.mixed_requests} caption/search/health requests at once, "
                                     "every answer incl. 503"},
            "mixed_p95_ms": {"value": mixed["all_answers"]["p95_ms"], "unit": "ms"},
            "mixed_share_503": {"value": mixed["share_503"], "unit": "fraction",
                                "note": "refused by the bounded worker pool, with Retry-After"},
            "mixed_share_errors": {"value": mixed["share_errors"], "unit": "fraction", "target": "0"},
            "mixed_longest_wait_ms": {"value": mixed["longest_wait_ms"], "unit": "ms",
                                      "target": f"< {args.mixed_timeout * 1000:g}"},
            "mixed_health_p95_ms": {"value": mixed["health"]["under_load"]["p95_ms"], "unit": "ms",
                                    "target": f"< {args.health_p95_ms:g}",
                                    "note": "GET /api/health polled while the mixed burst is worked off"},
            "mixed_burst_health_p95_ms": {"value": mixed["health"]["in_burst"]["p95_ms"], "unit": "ms",
                                          "note": "health requests sent inside the burst"},
        })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_out, out)
    print(json.dumps(report["metrics"], indent=1))
    if mixed is not None:
        print(json.dumps({key: mixed[key] for key in ("per_kind", "health", "checks", "errors_sample")}, indent=1))
    search_ok = not errors and ok == args.requests and len(single_latencies) == args.sequential
    return 0 if search_ok and (mixed is None or mixed["passed"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
