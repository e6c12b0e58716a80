"""``python -m corpora``: summarise, export and fabricate ECG datasets.

Subcommands:

* ``summary --dataset D --root DIR [--rate HZ] [--json]``: read every record and print
  ``{"dataset", "records", "readable", "skipped": [{"record", "reason"}], "sampling_rate",
  "shape", "labels": {label: count}}``. ``sampling_rate`` is the common rate, or the sorted
  list of distinct rates when records differ; ``shape`` is the common ``[12, T]``, or None
  when lengths differ (``shapes`` then lists them with counts).
* ``export --dataset D --root DIR --out DIR ...``: Parquet shards via :mod:`corpora.export`.
* ``synthetic --kind {mimic,cpsc2018} --out DIR``: build the look-alike fixtures.
* ``readers``: list the registered readers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .base import Skip
from .registry import READERS, get_reader, list_readers


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor options from the shared flags, rejecting those the dataset does not take."""
    options: dict[str, Any] = {"allow_missing_leads": args.allow_missing_leads}
    if args.rate is not None:
        if args.dataset != "ptbxl":
            raise ValueError(f"--rate selects PTB-XL's records100/records500; {args.dataset} has native rates")
        options["rate"] = args.rate
    if args.scp_statements is not None:
        if args.dataset != "ptbxl":
            raise ValueError("--scp-statements applies to --dataset ptbxl only")
        options["scp_statements"] = args.scp_statements
    if args.patients is not None:
        if args.dataset != "mimic":
            raise ValueError("--patients applies to --dataset mimic only")
        options["patients"] = args.patients
    return options


def summarise(reader: Any, *, metadata_only: bool = False, limit: int | None = None) -> dict[str, Any]:
    """Read all records (or their metadata) and count what came out; nothing is dropped silently."""
    skipped: list[Skip] = []
    labels: Counter[str] = Counter()
    rates: Counter[float] = Counter()
    shapes: Counter[tuple[int, ...]] = Counter()
    readable = 0
    record_ids = reader.record_ids()
    if limit is not None:
        record_ids = record_ids[:limit]
    from tqdm.auto import tqdm

    from .base import RecordError

    # Progress on stderr for long runs (MIMIC); tqdm hides itself when stderr is not a terminal.
    for record_id in tqdm(record_ids, desc=f"summary {reader.name}", unit="rec", disable=None, file=sys.stderr):
        try:
            record = reader.read_metadata(record_id) if metadata_only else reader.read(record_id)
        except RecordError as err:
            skipped.append(Skip(err.record_id, err.reason))
            continue
        readable += 1
        labels.update(record.labels.keys())  # count records per label, not confidences
        if record.sampling_rate is not None and not metadata_only:
            rates[float(record.sampling_rate)] += 1
        if record.signal is not None:
            shapes[tuple(record.signal.shape)] += 1
    rate_values = sorted(rates)
    summary: dict[str, Any] = {
        "dataset": reader.name,
        "records": len(record_ids),
        "readable": readable,
        "skipped": [{"record": s.record, "reason": s.reason} for s in skipped],
        "sampling_rate": rate_values[0] if len(rate_values) == 1 else (rate_values or None),
        "shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
        "labels": dict(labels.most_common()),
    }
    if len(shapes) > 1:
        summary["shapes"] = [{"shape": list(shape), "count": count} for shape, count in sorted(shapes.items())]
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"{summary['dataset']}: {summary['readable']}/{summary['records']} readable, "
          f"{len(summary['skipped'])} skipped")
    print(f"sampling rate: {summary['sampling_rate']}  shape: {summary['shape']}")
    reasons = Counter(s["reason"].split(":")[0] for s in summary["skipped"])
    for reason, count in reasons.most_common():
        print(f"  skipped {count:6d}  {reason}")
    print(f"{len(summary['labels'])} distinct labels; most common:")
    for label, count in list(summary["labels"].items())[:15]:
        print(f"  {count:6d}  {label}")


def _cmd_summary(args: argparse.Namespace) -> int:
    reader = get_reader(args.dataset, args.root, **_reader_options(args))
    summary = summarise(reader, metadata_only=args.metadata_only, limit=args.limit)
    if args.json:
        json.dump(summary, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_summary(summary)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_reader
    from .preprocess import Preprocess

    reader = get_reader(args.dataset, args.root, **_reader_options(args))
    preprocess = Preprocess(
        target_rate=args.target_rate,
        duration_s=args.duration,
        bandpass=None if args.no_bandpass else tuple(args.bandpass),
        baseline=args.baseline,
        normalise=args.normalise,
        nan=args.nan,
        crop=args.crop,
    )
    manifest = export_reader(reader, args.out, preprocess=preprocess, shard_size=args.shard_size,
                             limit=args.limit, progress=not args.no_progress)
    print(json.dumps({key: manifest[key] for key in ("dataset", "n_records", "n_skipped", "shape",
                                                    "sampling_rate", "shards")}))
    return 0


def _cmd_synthetic(args: argparse.Namespace) -> int:
    from .synthetic import make_cpsc2018, make_mimic

    if args.kind == "mimic":
        if args.statements is None:
            raise ValueError("--kind mimic needs --statements (e.g. ../shared/data/mimic-statements/statements.txt)")
        lines = [line.strip() for line in args.statements.read_text(encoding="utf-8").splitlines() if line.strip()]
        out = make_mimic(args.out, lines, n_records=args.n_records, seed=args.seed)
    else:
        out = make_cpsc2018(args.out, n_records=args.n_records, seed=args.seed)
    print(f"wrote a synthetic {args.kind} fixture with {args.n_records} records to {out}")
    return 0


def _cmd_readers(args: argparse.Namespace) -> int:
    print(json.dumps(list_readers(), indent=2))
    return 0


def _add_reader_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=sorted(READERS))
    parser.add_argument("--root", required=True, type=Path, help="dataset folder (PTB-XL: or a database CSV)")
    parser.add_argument("--rate", type=int, choices=(100, 500), help="PTB-XL only: records100 or records500")
    parser.add_argument("--scp-statements", type=Path, help="PTB-XL: scp_statements.csv if not next to the CSV")
    parser.add_argument("--patients", type=Path, help="MIMIC: MIMIC-IV patients.csv if not in --root")
    parser.add_argument("--allow-missing-leads", action="store_true",
                        help="zero-fill absent/empty leads (listed in missing_leads) instead of skipping the record")
    parser.add_argument("--limit", type=int, help="only the first N records")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m corpora", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    summary = commands.add_parser("summary", help="read every record and summarise counts, rates, labels")
    _add_reader_flags(summary)
    summary.add_argument("--metadata-only", action="store_true", help="labels/demographics only, no signals")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(func=_cmd_summary)

    export = commands.add_parser("export", help="preprocess and write Parquet shards (resumable)")
    _add_reader_flags(export)
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--target-rate", type=float, help="resample to this rate (default: keep native)")
    export.add_argument("--duration", type=float, default=10.0, help="crop/pad to this many seconds")
    export.add_argument("--crop", choices=("start", "centre"), default="start")
    export.add_argument("--bandpass", type=float, nargs=2, default=(0.5, 40.0), metavar=("LOW", "HIGH"))
    export.add_argument("--no-bandpass", action="store_true")
    export.add_argument("--baseline", action="store_true", help="subtract a two-stage median baseline")
    export.add_argument("--normalise", choices=("none", "zscore", "minmax"), default="none")
    export.add_argument("--nan", choices=("zero", "interpolate", "error"), default="interpolate")
    export.add_argument("--shard-size", type=int, default=1000)
    export.add_argument("--no-progress", action="store_true")
    export.set_defaults(func=_cmd_export)

    synthetic = commands.add_parser("synthetic", help="write a synthetic MIMIC-IV-ECG or CPSC2018 fixture")
    synthetic.add_argument("--kind", required=True, choices=("mimic", "cpsc2018"))
    synthetic.add_argument("--out", required=True, type=Path)
    synthetic.add_argument("--statements", type=Path, help="MIMIC statement lines, one per line")
    synthetic.add_argument("--n-records", type=int, default=6)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(func=_cmd_synthetic)

    readers = commands.add_parser("readers", help="list the registered dataset readers")
    readers.set_defaults(func=_cmd_readers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
