"""How much of the real label vocabularies the knowledge corpus covers.

Three measurements, all on real data under ``../shared/data``:

1. which of the 71 PTB-XL SCP statements (``ptbxl-mini/scp_statements.csv``) an entry lists;
2. which SNOMED CT codes of the CinC dx mappings (``cinc2020/dx_mapping_*.csv``) an entry lists;
3. which MIMIC-IV-ECG machine statement lines (``mimic-statements/statements.txt``) at least one
   entry's ``mimic_patterns`` match, which are purely non-diagnostic (``ignored_statements.yaml``)
   and which are unmatched. Non-technical coverage = matched / (all - ignored).

Run ``python -m corpora.knowledge.coverage --data ../shared/data [--json] [--show-unmatched]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from corpora.knowledge import KnowledgeEntry, KnowledgeError, load_entries

IGNORE_FILE = "ignored_statements.yaml"


def ignore_file_path() -> Path:
    return Path(str(resources.files("corpora.knowledge").joinpath(IGNORE_FILE)))


@lru_cache(maxsize=4)
def load_ignore_patterns(path: str | None = None) -> tuple[re.Pattern[str], ...]:
    """Compile the non-diagnostic statement regexes; raise KnowledgeError naming the file on bad input."""
    source = Path(path) if path else ignore_file_path()
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise KnowledgeError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise KnowledgeError(f"{source}: must be a YAML list of regex strings")
    compiled = []
    for pattern in data:
        try:
            compiled.append(re.compile(pattern, re.I))
        except re.error as err:
            raise KnowledgeError(f"{source}: bad ignore pattern {pattern!r}: {err}") from err
    return tuple(compiled)


def is_ignored(statement: str, patterns: Sequence[re.Pattern[str]] | None = None) -> bool:
    """True for a purely non-diagnostic line (demographics missing, unconfirmed, severity summary)."""
    return any(p.search(statement) for p in (patterns if patterns is not None else load_ignore_patterns()))


def read_scp_codes(ptbxl_root: Path) -> list[str]:
    """The SCP statement codes (first column) of PTB-XL's ``scp_statements.csv``."""
    path = ptbxl_root / "scp_statements.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PTB-XL scp_statements.csv not found")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    codes = [row[0].strip() for row in rows[1:] if row and row[0].strip()]
    if not codes:
        raise ValueError(f"{path}: no SCP codes found")
    return codes


def read_snomed_codes(cinc_root: Path) -> dict[str, str]:
    """SNOMED code -> abbreviation over every ``dx_mapping_*.csv`` of the CinC data."""
    paths = sorted(cinc_root.glob("dx_mapping_*.csv"))
    if not paths:
        raise FileNotFoundError(f"{cinc_root}: no dx_mapping_*.csv files")
    codes: dict[str, str] = {}
    for path in paths:
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                code = (row.get("SNOMED CT Code") or row.get("SNOMED CT code") or "").strip()
                if not code:
                    raise ValueError(f"{path}: row without a 'SNOMED CT Code' value: {row}")
                codes[code] = (row.get("Abbreviation") or "").strip()
    return codes


def read_statements(shared_data: Path) -> list[str]:
    path = shared_data / "mimic-statements" / "statements.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MIMIC statement list not found")
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class StatementCoverage:
    """Split of statement lines into matched / ignored / unmatched (matching an entry wins)."""

    matched: dict[str, list[str]] = field(default_factory=dict)  # line -> entry ids
    ignored: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.matched) + len(self.ignored) + len(self.unmatched)

    @property
    def non_technical_coverage(self) -> float:
        """matched / (all - ignored); 1.0 when every line is ignored."""
        denominator = len(self.matched) + len(self.unmatched)
        return len(self.matched) / denominator if denominator else 1.0


def classify_statements(
    statements: Iterable[str],
    entries: Sequence[KnowledgeEntry] | None = None,
    ignore_patterns: Sequence[re.Pattern[str]] | None = None,
) -> StatementCoverage:
    entries = load_entries() if entries is None else entries
    ignore_patterns = load_ignore_patterns() if ignore_patterns is None else ignore_patterns
    result = StatementCoverage()
    for line in statements:
        ids = [e.id for e in entries if e.matches_statement(line)]
        if ids:
            result.matched[line] = ids
        elif is_ignored(line, ignore_patterns):
            result.ignored.append(line)
        else:
            result.unmatched.append(line)
    return result


def duplicate_codes(entries: Sequence[KnowledgeEntry]) -> dict[str, list[str]]:
    """Codes listed by more than one entry (each code must name exactly one finding)."""
    owners: dict[str, list[str]] = {}
    for entry in entries:
        for code in entry.codes:
            owners.setdefault(code, []).append(entry.id)
    return {code: ids for code, ids in owners.items() if len(ids) > 1}


@dataclass
class CoverageReport:
    n_entries: int
    scp_total: int
    scp_missing: list[str]
    snomed_total: int
    snomed_missing: dict[str, str]
    duplicate_codes: dict[str, list[str]]
    statements_total: int
    statements_matched: int
    statements_ignored: int
    statements_unmatched: list[str]
    non_technical_coverage: float

    def to_dict(self) -> dict:
        return asdict(self)


def coverage_report(shared_data: Path, entries: Sequence[KnowledgeEntry] | None = None) -> CoverageReport:
    entries = load_entries() if entries is None else entries
    codes = {code for entry in entries for code in entry.codes}
    scp = read_scp_codes(shared_data / "ptbxl-mini")
    snomed = read_snomed_codes(shared_data / "cinc2020")
    statements = classify_statements(read_statements(shared_data), entries)
    return CoverageReport(
        n_entries=len(entries),
        scp_total=len(scp),
        scp_missing=[c for c in scp if c not in codes],
        snomed_total=len(snomed),
        snomed_missing={c: a for c, a in snomed.items() if c not in codes},
        duplicate_codes=duplicate_codes(entries),
        statements_total=statements.total,
        statements_matched=len(statements.matched),
        statements_ignored=len(statements.ignored),
        statements_unmatched=statements.unmatched,
        non_technical_coverage=statements.non_technical_coverage,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corpora.knowledge.coverage", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="root of the real data")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--show-unmatched", action="store_true", help="list every unmatched statement line")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: data folder {args.data} not found", file=sys.stderr)
        return 2
    report = coverage_report(args.data)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    scp_cov = report.scp_total - len(report.scp_missing)
    snomed_cov = report.snomed_total - len(report.snomed_missing)
    print(f"entries: {report.n_entries}")
    print(f"SCP codes covered: {scp_cov}/{report.scp_total}  missing: {' '.join(report.scp_missing) or '-'}")
    missing_snomed = " ".join(f"{c}({a})" for c, a in report.snomed_missing.items()) or "-"
    print(f"SNOMED codes covered: {snomed_cov}/{report.snomed_total}  missing: {missing_snomed}")
    if report.duplicate_codes:
        print(f"codes in more than one entry: {report.duplicate_codes}")
    print(
        f"MIMIC statements: {report.statements_total} lines, matched {report.statements_matched}, "
        f"ignored {report.statements_ignored}, unmatched {len(report.statements_unmatched)}; "
        f"non-technical coverage {report.non_technical_coverage:.4f}"
    )
    if args.show_unmatched:
        for line in report.statements_unmatched:
            print(f"  unmatched: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
