"""What the cpu-default's encoder-size and input-rate shortcuts cost, measured on real PTB-XL (issue 5).

Not one of the ``bench_*.py`` speed benchmarks (``run_all.py`` does not run it: it takes 1-2 hours on a
2-core CPU). It trains every arm with ``python -m esi pretrain`` (each arm is skipped once its
``final/`` exists, so an interrupted run resumes where it stopped), scores them with the ``eval``
suite (zero-shot + linear probe; finished results are reused), and writes ``bench/shortcuts.json``
and a Markdown table.

Two experiments, each changing one thing against the cpu-default:

* **encoder size** (PTB-XL-mini folds 1-8, the main job's 100 Hz export and CQA captions, a matched
  4-epoch budget with the decay at epoch 3): ``nano`` (3 seeds) against the ``tiny`` (26.8 M) and
  ``base`` (85.6 M) ConvNeXt-V2 encoders, everything else kept (embedding width, text tower, decoder).
* **input rate** (the 422 records that have PTB-XL's 500 Hz files, the full 12-epoch cpu-default
  schedule, 3 seeds): nano at 500 Hz on a 0.5-150 Hz export (keeps most of what the paper's raw
  500 Hz input has) against nano at 100 Hz on the same export (resampled by the training loader,
  so it keeps 0.5-50 Hz) and at 100 Hz on a 0.5-40 Hz export (the cpu-default band). All three are
  scored on the same fold-9 records (``eval --ptbxl-rate 500``).

    python bench/ablate_shortcuts.py [--run-dir runs/exp] [--only encoder,rate] [--eval-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from esi.model.factory import get_model_config

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SEEDS = (0, 1, 2)
TINY = {"ecg": get_model_config("tiny")["ecg"]}  # the registered encoders; the rest of the model stays nano
BASE = {"ecg": get_model_config("base")["ecg"]}
ENCODERS = {  # arm -> (model overrides, train overrides); the lr was tuned for nano, so tiny also gets a lower one
    "nano": ({}, {}),
    "tiny": (TINY, {}),
    "tiny-lr3e-4": (TINY, {"lr": 3.0e-4}),
    "base": (BASE, {}),
}
RATES = {"r100": {}, "r500": {"sampling_rate": 500.0, "n_samples": 5000}}
BANDS = {"b40": (0.5, 40.0), "b150": (0.5, 150.0)}
METRICS = [  # (row label, path into a model's eval results)
    ("zero-shot superclass AUC", ("zeroshot", "superclass", "macro_auc")),
    ("zero-shot subclass AUC", ("zeroshot", "subclass", "macro_auc")),
    ("zero-shot rhythm AUC", ("zeroshot", "rhythm", "macro_auc")),
    ("probe superclass 100 % AUC", ("probe", "superclass", "fractions", "1", "macro_auc")),
    ("probe subclass 100 % AUC", ("probe", "subclass", "fractions", "1", "macro_auc")),
    ("probe form 100 % AUC", ("probe", "form", "fractions", "1", "macro_auc")),
    ("probe rhythm 100 % AUC", ("probe", "rhythm", "fractions", "1", "macro_auc")),
]


def shared_data() -> Path:
    return Path(os.environ.get("ESI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def train_config(epochs: int, decay_every: int, overrides: dict, **train: object) -> dict:
    """The cpu-default preset with a different schedule length, model overrides and training fields."""
    from importlib import resources

    preset = yaml.safe_load((resources.files("esi.train") / "presets" / "cpu-default.yaml").read_text("utf-8"))
    return {**preset, "epochs": epochs, "lr_decay_every_epochs": decay_every, "model_overrides": overrides, **train}


def run(command: list[str], log: Path) -> None:
    print("$", " ".join(command), f"> {log}", flush=True)
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                               env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}; see {log}")


def pretrain(run_dir: Path, name: str, config: dict, seed: int, captions: Path, data: Path) -> Path:
    out = run_dir / name
    if (out / "final" / "config.json").is_file():
        return out / "final"
    config_file = run_dir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "esi", "pretrain", "--config", str(config_file), "--captions", str(captions),
               "--data", str(data), "--out", str(out), "--seed", str(seed), "--no-progress"]
    if (out / "checkpoints" / "latest.json").is_file():
        command.append("--resume")
    run(command, run_dir / f"{name}.log")
    return out / "final"


def export_500hz(run_dir: Path, band: str, ptbxl: Path) -> Path:
    out = run_dir / f"signals500-{band}"
    if not (out / "manifest.json").is_file():
        low, high = BANDS[band]
        run([sys.executable, "-m", "corpora", "export", "--dataset", "ptbxl", "--root", str(ptbxl), "--rate", "500",
             "--bandpass", str(low), str(high), "--out", str(out), "--no-progress"], run_dir / f"export-{band}.log")
    return out


def evaluate(models: dict[str, Path], out: Path, ptbxl: Path, ptbxl_rate: int | None) -> dict:
    from esi.eval.suite import EvalOptions, run_evaluation

    options = EvalOptions(root=ptbxl, out=out, train_folds=[1, 2, 3, 4, 5, 6, 7, 8], test_folds=[9],
                          what=("zeroshot", "probe"), zeroshot_sets=("superclass", "subclass", "rhythm"),
                          progress=False, ptbxl_rate=ptbxl_rate)
    return run_evaluation(list(models.items()), options)["models"]


def pick(result: dict, path: tuple[str, ...]) -> float | None:
    node: object = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def summarise(models: dict[str, dict], arms: dict[str, list[str]]) -> dict[str, dict[str, dict[str, float]]]:
    """arm -> metric -> {mean, sd, n, values} over that arm's seeds."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for arm, names in arms.items():
        table[arm] = {}
        for label, path in METRICS:
            values = [v for v in (pick(models[n], path) for n in names) if v is not None]
            if values:
                table[arm][label] = {"mean": statistics.fmean(values), "n": len(values), "values": values,
                                     "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return table


def markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    arms = list(table)
    lines = ["| metric (fold 9) | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for label, _ in METRICS:
        cells = []
        for arm in arms:
            cell = table[arm].get(label)
            cells.append("-" if cell is None else f"{cell['mean']:.3f}" + (f" ± {cell['sd']:.3f}" if cell["n"] > 1
                                                                             else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/exp", help="where the arms' runs, logs and evals go")
    parser.add_argument("--captions", default="runs/default/captions", help="CQA caption Parquet (the main job's)")
    parser.add_argument("--signals", default="runs/default/signals", help="100 Hz signal export (the main job's)")
    parser.add_argument("--only", default="encoder,rate", help="encoder, rate or both")
    parser.add_argument("--eval-only", action="store_true", help="score the arms that finished; train none")
    parser.add_argument("--out", default=str(BENCH_DIR / "shortcuts.json"))
    args = parser.parse_args(argv)
    run_dir, captions = Path(args.run_dir), Path(args.captions)
    run_dir.mkdir(parents=True, exist_ok=True)
    ptbxl = shared_data() / "ptbxl-mini"
    only = set(args.only.split(","))
    report: dict[str, object] = {}

    if "encoder" in only:
        arms: dict[str, list[str]] = {}
        finals: dict[str, Path] = {}
        for encoder, (overrides, train) in ENCODERS.items():
            seeds = SEEDS if encoder == "nano" else SEEDS[:1]  # tiny/base: one seed (CPU time)
            for seed in seeds:
                name = f"{encoder}-s{seed}"
                final = run_dir / name / "final"
                if not args.eval_only:
                    final = pretrain(run_dir, name, train_config(4, 3, overrides, **train), seed, captions,
                                     Path(args.signals))
                if (final / "config.json").is_file():
                    finals[name] = final
                    arms.setdefault(encoder, []).append(name)
        models = evaluate(finals, run_dir / "eval-encoder", ptbxl, None)
        table = summarise(models, arms)
        report["encoder"] = {"arms": arms, "table": table, "markdown": markdown(table)}
        print(markdown(table))

    if "rate" in only:
        arms, finals = {}, {}
        for band in BANDS:
            data = export_500hz(run_dir, band, ptbxl) if not args.eval_only else run_dir / f"signals500-{band}"
            for rate, overrides in RATES.items():
                if (rate, band) == ("r500", "b40"):
                    continue  # sampling faster cannot add what a 40 Hz low-pass removed
                for seed in SEEDS:
                    name = f"{rate}-{band}-s{seed}"
                    final = run_dir / name / "final"
                    if not args.eval_only:
                        final = pretrain(run_dir, name, train_config(12, 6, overrides), seed, captions, data)
                    if (final / "config.json").is_file():
                        finals[name] = final
                        arms.setdefault(f"{rate.removeprefix('r')} Hz, {band.removeprefix('b')} Hz band", []).append(
                            name)
        models = evaluate(finals, run_dir / "eval-rate", ptbxl, 500)
        table = summarise(models, arms)
        report["rate"] = {"arms": arms, "table": table, "markdown": markdown(table)}
        print(markdown(table))

    from esi.model.io import atomic_write_text

    previous = json.loads(Path(args.out).read_text(encoding="utf-8")) if Path(args.out).is_file() else {}
    atomic_write_text(Path(args.out), json.dumps({**previous, **report}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
