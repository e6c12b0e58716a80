"""Run every benchmark, gather their results into bench/results.json and refresh the README table.

Each ``bench/bench_*.py`` script writes ``bench/results/<name>.json`` (a dict with a ``metrics`` mapping of
``name -> {"value", "unit", "target"?, "note"?}`` and a ``machine`` block). This script runs them (or only
gathers, with ``--gather-only``), merges the files and rewrites the README section between the
``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers.

    python bench/run_all.py [--only retrieval,cqa] [--gather-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import machine_info  # bench/machine.py: the script's own folder is on sys.path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"



def atomic_write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(fh.name, path)


def run_benchmarks(only: set[str] | None) -> dict[str, int]:
    codes = {}
    for script in sorted(BENCH_DIR.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"== {script.name}", flush=True)
        codes[name] = subprocess.call([sys.executable, str(script)], cwd=REPO_ROOT)
    return codes


def gather() -> dict[str, object]:
    suites = {}
    for path in sorted(RESULTS_DIR.glob("*.json")):
        suites[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return {"date": dt.date.today().isoformat(), "machine": machine_info(), "suites": suites}


def _metrics(data: dict[str, object]) -> dict[str, dict[str, object]]:
    """A suite's ``metrics`` block, or else every numeric leaf (dotted key) outside ``machine``."""
    if isinstance(data.get("metrics"), dict):
        return data["metrics"]
    flat: dict[str, dict[str, object]] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("machine", "config", "args"):
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            flat[prefix] = {"value": node}

    walk("", data)
    return flat


def _committed_on(suite: str) -> str:
    """The day the suite's results file was last committed: the best date a result without one has."""
    path = RESULTS_DIR / f"{suite}.json"
    try:
        day = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        day = ""
    return f"committed {day}" if day else "date not recorded"


def _measured_on(suite: str, data: dict[str, object]) -> str:
    """Where and when one suite ran, from the ``machine`` block its script wrote."""
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    stamped = data.get("date") or machine.get("date")
    when = str(stamped)[:10] if stamped else _committed_on(suite)
    cpu = machine.get("cpu") or machine.get("processor") or "CPU not recorded"
    cores = machine.get("cores") or machine.get("cpu_count") or "?"
    return f"{cpu} ({cores} cores), {when}"


def markdown_table(results: dict[str, object]) -> str:
    lines = [
        f"Gathered {results['date']} by `python bench/run_all.py`; medians over repeated runs unless noted. Suites are "
        "re-run one at a time, so each was measured on its own machine and day:",
        "",
        *(f"- {suite}: {_measured_on(suite, data)}" for suite, data in results["suites"].items()),
        "",
        "| suite | metric | value | target | note |",
        "|---|---|---|---|---|",
    ]
    for suite, data in results["suites"].items():
        for metric, m in _metrics(data).items():
            value = m.get("value")
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            target = m.get("target", "")
            lines.append(f"| {suite} | {metric} | {shown} {m.get('unit', '')} | {target} | {m.get('note', '')} |")
    return "\n".join(lines)


def refresh_readme(table: str) -> bool:
    readme = REPO_ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write(readme, f"{head}{START}\n{table}\n{END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated suite names (e.g. retrieval,cqa)")
    parser.add_argument("--gather-only", action="store_true", help="do not run, only merge existing results")
    args = parser.parse_args(argv)
    failed = {}
    if not args.gather_only:
        only = set(args.only.split(",")) if args.only else None
        failed = {k: v for k, v in run_benchmarks(only).items() if v != 0}
    results = gather()
    atomic_write(BENCH_DIR / "results.json", json.dumps(results, indent=2) + "\n")
    refreshed = refresh_readme(markdown_table(results))
    print(f"wrote bench/results.json ({len(results['suites'])} suites); README refreshed: {refreshed}")
    if failed:
        print(f"benchmarks that failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
