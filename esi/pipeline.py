"""The main job: the whole ESI pipeline on the embedded defaults, one step after another.

    python -m esi run [--run-dir runs/default] [--data ../shared/data] [--llm smollm2]

Steps (each is the same command a user would type, run in-process):

1. ``store``     build the knowledge store (``python -m retrieval build``)
2. ``captions``  caption the PTB-XL records with CQA (``python -m cqa caption``)
3. ``signals``   export the PTB-XL signals to Parquet (``python -m corpora export``)
4. ``pretrain``  pretrain the CPU-default ESI on folds 1-8, validate on fold 9 (``python -m esi pretrain``)
5. ``zeroshot``  zero-shot superclass evaluation on fold 9 (``python -m esi zeroshot``)
6. ``index``     index fold 9 for text->ECG search (``python -m esi index-ecgs``)
7. ``examples``  one example of each capability, then a results table

Every artefact goes under the run directory. A step whose marker (``.steps/<name>.json``) records the
same arguments is skipped; a step that was interrupted resumes (captions, pretraining and indexing are
resumable on their own). ``--force STEP`` re-runs one step.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esi.model.io import atomic_write_text, format_number

DEFAULT_QUERY = "wide QRS with M-shaped complex in V1"
STEP_NAMES = ("store", "captions", "signals", "pretrain", "zeroshot", "index", "examples")
SEARCH_COLLECTION = "ptbxl-fold9"  # the fold-9 ECGs the main job indexes for text->ECG search


def default_data_root() -> Path:
    return Path(os.environ.get("ESI_SHARED_DATA", Path.cwd().parent / "shared" / "data"))


@dataclass
class Step:
    name: str
    title: str
    argv: list[str]
    entry: Callable[[list[str]], int]
    output: Path
    capture: Path | None = None  # write the command's stdout here (JSON steps)


class Pipeline:
    """Runs the steps in order, skipping those whose marker matches, timing the rest."""

    def __init__(self, run_dir: Path, data_root: Path, llm: str, config: str, epochs: int | None,
                 force: set[str]):
        self.run_dir = run_dir
        self.data_root = data_root
        self.llm = llm
        self.config = config
        self.epochs = epochs
        self.force = force
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []

    # ---- paths -----------------------------------------------------------------------------------
    @property
    def ptbxl(self) -> Path:
        return self.data_root / "ptbxl-mini"

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    # ---- steps -----------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        from corpora.__main__ import main as corpora_main
        from cqa.__main__ import main as cqa_main
        from retrieval.__main__ import main as retrieval_main

        model = self.path("model", "final")
        pretrain = ["pretrain", "--config", self.config, "--captions", str(self.path("captions")),
                    "--data", str(self.path("signals")), "--out", str(self.path("model"))]
        if self.epochs is not None:
            pretrain += ["--epochs", str(self.epochs)]
        return [
            Step("store", "build the knowledge store", ["build", "--store", str(self.path("store"))],
                 retrieval_main, self.path("store")),
            Step("captions", f"caption PTB-XL with CQA (--llm {self.llm})",
                 ["caption", "--dataset", "ptbxl", "--root", str(self.ptbxl), "--store", str(self.path("store")),
                  "--out", str(self.path("captions")), "--llm", self.llm,
                  "--cache", str(self.path("cqa_descriptions.sqlite"))],
                 cqa_main, self.path("captions", "summary.json")),
            Step("signals", "export PTB-XL signals (100 Hz, 10 s) to Parquet",
                 ["export", "--dataset", "ptbxl", "--root", str(self.ptbxl), "--rate", "100",
                  "--out", str(self.path("signals"))],
                 corpora_main, self.path("signals", "manifest.json")),
            Step("pretrain", f"pretrain ESI ({self.config}) on folds 1-8, validate on fold 9", pretrain,
                 _esi_main, model / "config.json"),
            Step("zeroshot", "zero-shot PTB-XL superclass on fold 9",
                 ["zeroshot", "--model", str(model), "--dataset", "ptbxl", "--root", str(self.ptbxl),
                  "--labels", "superclass", "--folds", "9", "--json", "--quiet"],
                 _esi_main, self.path("zeroshot_superclass.json"), capture=self.path("zeroshot_superclass.json")),
            Step("index", "index fold 9 for text->ECG search",
                 ["index-ecgs", "--model", str(model), "--dataset", "ptbxl", "--root", str(self.ptbxl),
                  "--collection", SEARCH_COLLECTION, "--store", str(self.path("search")), "--folds", "9"],
                 _esi_main, self.path("search")),
        ]

    def _marker(self, name: str) -> Path:
        return self.path(".steps", f"{name}.json")

    def _up_to_date(self, step: Step) -> bool:
        marker = self._marker(step.name)
        if step.name in self.force or not marker.exists() or not step.output.exists():
            return False
        return json.loads(marker.read_text(encoding="utf-8")).get("argv") == step.argv

    def _drop_search_collection(self) -> None:
        """Through the client, not by deleting files: Chroma keeps an open store's collections in memory."""
        from retrieval.vectors import VectorCollection, VectorCollectionError

        if not self.path("search").exists():
            return
        try:
            VectorCollection(str(self.path("search")), SEARCH_COLLECTION, create=False).drop()
        except VectorCollectionError:  # never indexed: nothing to drop
            pass

    def run_step(self, step: Step, number: int, total: int, upstream_ran: bool = False) -> bool:
        """Run ``step`` unless it is up to date; a step after one that ran always runs (its input changed).
        Returns whether it ran."""
        print(f"\n[{number}/{total}] {step.title}", flush=True)
        if not upstream_ran and self._up_to_date(step):
            print("    up to date, skipped")
            self.skipped.append(step.name)
            return False
        argv = list(step.argv)
        afresh = upstream_ran or step.name in self.force  # else a step left unfinished continues where it stopped
        if step.name == "pretrain" and afresh:  # new captions or signals, or asked for: the old run is stale
            shutil.rmtree(self.path("model"), ignore_errors=True)
        elif step.name == "pretrain" and self.path("model", "checkpoints").exists():
            argv.append("--resume")
        if step.name == "index":  # the collection holds the previous model's vectors: build it afresh
            self._drop_search_collection()
        print("    $ python -m {} {}".format(step.entry.__module__.split(".")[0], " ".join(argv)), flush=True)
        start = time.perf_counter()
        if step.capture is not None:
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                code = step.entry(argv)
            if code == 0:
                atomic_write_text(step.capture, buffer.getvalue())
        else:
            code = step.entry(argv)
        if code != 0:
            raise SystemExit(f"step {step.name!r} failed with exit code {code}; fix the error above and re-run "
                             "(finished steps are skipped)")
        self.timings[step.name] = time.perf_counter() - start
        atomic_write_text(self._marker(step.name), json.dumps({"argv": step.argv, "seconds": self.timings[step.name]}))
        return True

    def run(self) -> int:
        if not self.ptbxl.is_dir():
            print(f"error: PTB-XL data not found at {self.ptbxl}; pass --data or set ESI_SHARED_DATA",
                  file=sys.stderr)
            return 2
        self.run_dir.mkdir(parents=True, exist_ok=True)
        steps = self.steps()
        total = len(steps) + 1
        ran = False
        for number, step in enumerate(steps, start=1):
            ran = self.run_step(step, number, total, upstream_ran=ran) or ran
        print(f"\n[{total}/{total}] examples of each capability", flush=True)
        report = self.examples()
        atomic_write_text(self.path("report.md"), report)
        print(report)
        print(f"run directory: {self.run_dir}")
        return 0

    # ---- report ----------------------------------------------------------------------------------
    def examples(self) -> str:
        from cqa.batch import read_output
        from esi.serve.inference import ESIInference
        from esi.serve.search import ECGIndex, TextIndex, ephemeral_client, knowledge_texts, open_collection

        model_dir = self.path("model", "final")
        inference = ESIInference(model_dir)
        captions = read_output(self.path("captions")).to_pylist()
        fold9 = [row for row in captions if row.get("fold") == 9]
        example = next((r for r in fold9 if "CRBBB" in (r.get("labels") or "")), fold9[0] if fold9 else captions[0])
        record_path = self.ptbxl / _ptbxl_filename(self.ptbxl, example["record_id"])

        prepared = inference.prepare_path(record_path)
        embedding = inference.embed_signals(prepared.signal[None])[0]
        zeroshot = json.loads(self.path("zeroshot_superclass.json").read_text(encoding="utf-8"))
        from esi.zeroshot.classifier import DEFAULT_CALIBRATION, DEFAULT_CLASS_TEXT, ZeroShotClassifier
        from esi.zeroshot.labelsets import load_labelset

        labelset = load_labelset("superclass").resolve(self.ptbxl / "scp_statements.csv")
        classifier = ZeroShotClassifier.build(inference.model, labelset, class_text=DEFAULT_CLASS_TEXT,
                                              calibration=DEFAULT_CALIBRATION, prior=inference.label_prior)
        ranked = classifier.top_classes(classifier.scores(embedding[None])[0], k=5)

        texts = knowledge_texts()
        text_index = TextIndex(inference, open_collection(ephemeral_client(), "pipeline-knowledge", kind="text",
                                                          inference=inference))
        text_index.add_texts(texts)
        nearest_texts = text_index.retrieve(embedding, k=3)

        collection = open_collection(str(self.path("search")), SEARCH_COLLECTION, kind="ecg", inference=inference,
                                     model_dir=str(model_dir), create=False)
        index = ECGIndex(inference, collection)
        hits = index.search(DEFAULT_QUERY, k=3)
        normal_hits = index.search("normal ECG", k=5)
        queries = self._query_precision(inference)

        draft = inference.caption(prepared.signal[None])[0]
        metrics = _last_validation(self.path("model", "metrics.jsonl"))
        summary = json.loads(self.path("captions", "summary.json").read_text(encoding="utf-8"))
        lines = [
            "# ESI main job — results",
            "",
            f"Data: PTB-XL subset at {self.ptbxl} (train folds 1-8, evaluate fold 9). Model: `{self.config}`.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| captions written | {summary.get('rows')} (finding sources {summary.get('finding_sources')}) |",
            f"| zero-shot superclass macro AUC (fold 9) | {format_number(zeroshot.get('macro_auc'))} |",
            f"| zero-shot superclass macro F1 (fold 9) | {format_number(zeroshot.get('macro_f1'))} |",
            f"| zero-shot records evaluated | {zeroshot.get('n_records')} |",
            f"| zero-shot class text, calibration | {zeroshot.get('class_text')}, {zeroshot.get('calibration')} |",
            f"| query by text: mean precision@5 over {len(queries['queries'])} class queries (fold 9; chance "
            f"{format_number(queries['mean_chance'])}) | {format_number(queries['mean_precision@5'])} |",
            f"| query by text: \"normal ECG\" precision@5 | {format_number(queries['queries']['normal ECG']['precision@5'])} |",
            f"| reference: the same queries answered by a linear probe on folds 1-8 labels, mean precision@5 | "
            f"{format_number(queries.get('mean_probe_precision@5'))} |",
        ]
        for key, value in metrics.items():
            lines.append(f"| validation {key} | {format_number(value)} |")
        for name, seconds in self.timings.items():
            lines.append(f"| time: {name} | {seconds / 60:.1f} min |")
        if self.skipped:
            lines.append(f"| steps up to date | {', '.join(self.skipped)} |")
        lines += [
            "",
            f"## A CQA caption (record {example['record_id']}, labels {example.get('labels')})",
            "",
            f"> {example['caption']}",
            "",
            "## The ESI decoder's draft caption for the same ECG",
            "",
            f"> {draft}",
            "",
            f"## Zero-shot superclass scores for record {example['record_id']}",
            "",
            ", ".join(f"{c['class']} {c['score']:.3f}" for c in ranked),
            "",
            f"## ECG→text: knowledge passages nearest to record {example['record_id']}",
            "",
            *[f"{i}. ({h.score:.3f}) {h.document[:160]}" for i, h in enumerate(nearest_texts, 1)],
            "",
            f"## Text→ECG: fold-9 records matching “{DEFAULT_QUERY}”",
            "",
            *[f"{i}. record {h.metadata.get('record_id')} ({h.score:.3f}): labels {h.metadata.get('labels')}"
              for i, h in enumerate(hits, 1)],
            "",
            "## Text→ECG: fold-9 records matching “normal ECG”",
            "",
            *[f"{i}. record {h.metadata.get('record_id')} ({h.score:.3f}): labels {h.metadata.get('labels')}"
              for i, h in enumerate(normal_hits, 1)],
            "",
            "## Query by text: precision@5 of each class query on fold 9 (chance = the class's prevalence)",
            "",
            "The supervised reference ranks the same records by a linear probe trained on folds 1-8 labels and the",
            "same ECG embeddings: what the embedding allows, which a typed query cannot be expected to beat.",
            "",
            "| query | precision@5 | chance | supervised reference |",
            "|---|---|---|---|",
            *[f"| {q} | {format_number(r['precision@5'])} | {format_number(r['chance'])} | "
              f"{format_number(r.get('probe_precision@5'))} |" for q, r in queries["queries"].items()],
            "",
            "The validation rows above include `val_ref_caption_centroid_auc` and `val_ref_ecg_prototype_auc`: "
            "the fold-9 superclass AUC of the class centres built from the training captions and training ECGs, "
            "which zero-shot (`val_zeroshot_superclass_auc`) should approach.",
            "",
        ]
        return "\n".join(lines)

    def _query_precision(self, inference) -> dict[str, Any]:
        """Text->ECG precision@k of the class queries on fold 9 (the records the model never saw)."""
        from corpora.ptbxl import PTBXLReader
        from esi.eval.data import load_eval_data
        from esi.eval.query import query_evaluation

        reader = PTBXLReader(self.ptbxl, rate=100 if inference.sampling_rate <= 100 else 500)
        data = load_eval_data(reader, inference.input, folds=list(range(1, 10)), progress=False)
        return query_evaluation(inference, data, folds=[9], reference_folds=list(range(1, 9)))


def _esi_main(argv: list[str]) -> int:
    """``python -m esi`` for the commands this job runs (pretrain, zeroshot, index-ecgs).

    Why not :func:`esi.cli.main.main`: the CLI registers this job as its ``run`` command, so calling it
    from here would make the main job and the CLI import each other; the same command modules parse the
    same argv either way.
    """
    from esi.cli import index, pretrain, zeroshot
    from esi.cli.common import run_main

    return run_main((pretrain, zeroshot, index), argv)


def _ptbxl_filename(root: Path, record_id: str) -> str:
    import pandas as pd

    table = pd.read_csv(root / "ptbxl_database.csv", usecols=["ecg_id", "filename_lr"])
    match = table.loc[table["ecg_id"] == int(record_id), "filename_lr"]
    return str(match.iloc[0])


def _last_validation(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if any(str(k).startswith("val") for k in row):
            last = {k: v for k, v in row.items() if str(k).startswith("val")}
    return last
