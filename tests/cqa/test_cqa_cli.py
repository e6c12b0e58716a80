"""The CLI end to end: grounded batch captioning, resume after a real SIGKILL, explain --json, SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cqa.__main__ import main
from cqa.batch import read_captions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_CACHE_DIR", str(tmp_path / "esi-cache"))


def test_caption_textonly_csv_grounded(tmp_path: Path, shared_data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    args = ["caption", "--dataset", "ptbxl", "--root", str(shared_data / "ptbxl-text" / "ptbxl_database_textonly.csv"),
            "--scp-statements", str(shared_data / "ptbxl-mini" / "scp_statements.csv"),
            "--out", str(out), "--llm", "none", "--limit", "45", "--chunk-size", "20", "--no-progress"]
    assert main(args) == 0
    assert "45 captions" in capsys.readouterr().out
    table = read_captions(out)
    assert table.num_rows == 45 and len(set(table.column("record_id").to_pylist())) == 45
    assert {"record_id", "subject_id", "fold", "age", "sex", "labels", "findings", "caption", "label_text",
            "sources", "unknown_labels"} <= set(table.column_names)
    row = table.slice(0, 1).to_pylist()[0]
    findings = json.loads(row["findings"])
    assert findings and {"id", "certainty", "labels"} <= set(findings[0])
    assert set(json.loads(row["labels"])) == {label for f in findings for label in f["labels"]} | {
        u["label"] for u in json.loads(row["unknown_labels"])}
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "part-00000000-00000020.parquet", "part-00000020-00000040.parquet", "part-00000040-00000045.parquet"]
    # a re-run with other settings is refused, not mixed into the same folder
    assert main([*args[:-7], "--out", str(out), "--llm", "none", "--limit", "45", "--chunk-size", "10"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_bad_root_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["caption", "--dataset", "cinc", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                 "--llm", "none"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_explain_json_with_real_store(knowledge_store_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["explain", "--codes", "IRBBB,SR", "--age", "56", "--sex", "male", "--store",
                 str(knowledge_store_dir), "--llm", "none", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["caption"].startswith("56-year-old male. Findings: incomplete right bundle branch block; sinus rhythm.")
    assert {f["id"] for f in result["findings"]} == set(result["sources"])
    assert {p["finding"] for p in result["passages"]} == set(result["sources"])
    assert all(p["entry"] == p["finding"] for p in result["passages"])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cqa", "caption", *args]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path: Path, ptbxl_root: Path,
                                                          knowledge_store_dir: Path, fake_openai_server) -> None:  # type: ignore[no-untyped-def]
    host, port = fake_openai_server.server_address
    fake_openai_server.delay_s = 0.3
    common = ["--dataset", "ptbxl", "--root", str(ptbxl_root), "--store", str(knowledge_store_dir),
              "--llm", f"openai:http://{host}:{port}/v1#tiny", "--limit", "30", "--chunk-size", "5", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    reference = tmp_path / "reference"
    subprocess.run(_cli(*common, "--out", str(reference), "--cache", str(tmp_path / "ref.sqlite")),
                   check=True, cwd=REPO, env=env, timeout=600)

    killed = tmp_path / "killed"
    run = _cli(*common, "--out", str(killed), "--cache", str(tmp_path / "killed.sqlite"))
    process = subprocess.Popen(run, cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while not list((killed / "data").glob("part-*.parquet")) and process.poll() is None:
        assert time.monotonic() < deadline, "no part written in time"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done_before = sorted(p.name for p in (killed / "data").glob("part-*.parquet"))
    assert 1 <= len(done_before) < 6, done_before  # really interrupted mid-run
    subprocess.run(run, check=True, cwd=REPO, env=env, timeout=600)

    resumed, expected = read_captions(killed), read_captions(reference)
    assert resumed.to_pylist() == expected.to_pylist()
    ids = resumed.column("record_id").to_pylist()
    skipped = [s for p in sorted((killed / "data").glob("part-*.parquet"))
               for s in json.loads(pq.read_schema(p).metadata[b"cqa"])["skipped"]]
    assert len(ids) == len(set(ids)) and len(ids) + len(skipped) == 30
    sources = [s["source"] for row in resumed.column("sources").to_pylist() for s in json.loads(row).values()]
    assert set(sources) == {"llm"}
    assert not list((killed / "data").glob(".*.tmp"))


@pytest.mark.slow
def test_smollm2_is_deterministic_and_validated(smollm2_backend, make_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cqa.cache import DescriptionCache
    from cqa.caption import Captioner
    from cqa.llm import Describer
    from cqa.normalize import normalize_labels
    from cqa.validate import check_caption, validate_description

    describer = Describer(smollm2_backend, timeout_s=120)
    store = make_store()
    passages = store.search("x", k=3, where={"entry": "crbbb"})
    first = describer.generate("Complete right bundle branch block", passages)
    second = describer.generate("Complete right bundle branch block", passages)
    assert first.error is None and first.text and first.text == second.text  # greedy: same in, same out
    captioner = Captioner(describer=describer, store=store, cache=DescriptionCache(tmp_path / "c.sqlite"))
    caption = captioner.caption(normalize_labels(["CRBBB"]), age=60, sex="female")
    source = caption.sources["crbbb"]
    check = validate_description(first.text, "crbbb", passages)
    assert (source["source"] == "llm") == check.ok
    assert source["source"] == "llm" or source["reason"].startswith("LLM output rejected")
    assert check_caption(caption.caption, caption.findings, passages).ok


@pytest.mark.parametrize("dataset", ["mimic", "cpsc2018", "cinc"])
def test_caption_every_dataset_grounded(dataset: str, tmp_path: Path, cinc_root: Path,
                                        mimic_statements: list[str]) -> None:
    from corpora.synthetic import make_cpsc2018, make_mimic

    if dataset == "mimic":  # MIMIC/CPSC files cannot be shipped: look-alike layouts with real statements
        root = make_mimic(tmp_path / "mimic", mimic_statements[::97], n_records=5)
    elif dataset == "cpsc2018":
        root = make_cpsc2018(tmp_path / "cpsc", n_records=9)
    else:
        root = cinc_root
    out = tmp_path / "out"
    assert main(["caption", "--dataset", dataset, "--root", str(root), "--out", str(out), "--llm", "none",
                 "--no-progress"]) == 0
    table = read_captions(out)
    rows = table.to_pylist()
    summary = json.loads((out / "summary.json").read_text())
    if dataset == "cinc":  # the real sample: every header is captioned, carrying its own #Dx codes
        expected = {}
        for header in sorted(cinc_root.rglob("*.hea")):
            dx = next((line.split(":", 1)[1] for line in header.read_text().splitlines() if line.startswith("#Dx")),
                      "")
            expected[header.stem] = {code.strip() for code in dx.split(",") if code.strip()}
        assert len(expected) > 50 and sum(bool(codes) for codes in expected.values()) > 10
        assert summary["skipped"] == []
        assert {row["record_id"]: set(json.loads(row["labels"])) for row in rows} == expected
    else:
        assert len(rows) + len(summary["skipped"]) == {"mimic": 5, "cpsc2018": 9}[dataset]
    labelled = [r for r in rows if json.loads(r["labels"])]
    assert labelled
    recognised = [r for r in labelled if json.loads(r["findings"])]
    assert len(recognised) / len(labelled) > 0.8
    for row in recognised:
        assert "Findings: " in row["caption"] and "Waveform: " in row["caption"]
        assert row["label_text"]


def test_paraphrases_cli_writes_validated_texts_per_finding(tmp_path: Path, ptbxl_root: Path,
                                                             knowledge_store_dir: Path, fake_openai_server) -> None:  # type: ignore[no-untyped-def]
    """`cqa paraphrases` describes the findings of a caption folder through the validated LLM path."""
    from cqa.__main__ import main
    from cqa.batch import read_output

    host, port = fake_openai_server.server_address
    llm = ["--llm", f"openai:http://{host}:{port}/v1#tiny", "--store", str(knowledge_store_dir),
           "--cache", str(tmp_path / "cache.sqlite")]
    captions = tmp_path / "captions"
    assert main(["caption", "--dataset", "ptbxl", "--root", str(ptbxl_root), "--out", str(captions), "--limit", "8",
                 "--no-progress", *llm]) == 0
    out = tmp_path / "paraphrases.json"
    assert main(["paraphrases", "--captions", str(captions), "--out", str(out), "--n", "2", *llm]) == 0
    table = json.loads(out.read_text(encoding="utf-8"))
    finding_ids = {f["id"] for row in read_output(captions).column("findings").to_pylist() for f in json.loads(row)}
    assert table and set(table) <= finding_ids
    assert all(texts and len(set(texts)) == len(texts) and all(t.strip() for t in texts) for texts in table.values())
    assert main(["paraphrases", "--captions", str(captions), "--out", str(out), "--llm", "none",
                 "--store", str(knowledge_store_dir)]) == 2
