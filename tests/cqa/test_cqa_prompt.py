"""The few-shot description prompt, prompt-keyed caching, re-validation of cached text, and paraphrase views."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda

from corpora.knowledge import entry_by_id
from cqa.cache import DescriptionCache
from cqa.caption import Captioner
from cqa.claims import entry_passages
from cqa.llm import Describer, LLMBackend, load_prompt, render_note
from cqa.paraphrase import finding_paraphrases, paraphrase_table
from cqa.validate import grounded_description, validate_description

IMI_GOOD = ("Inferior myocardial infarction shows ST elevation with upright or hyperacute T waves in II, III and aVF "
            "in the acute phase, with reciprocal ST depression in I and aVL.")
IMI_WRONG = "Inferior myocardial infarction shows ST elevation with upright or hyperacute T waves in II, III and aVL."


class Recorder:
    """A chat model stand-in that records every prompt and answers from a list (cycling)."""

    def __init__(self, answers: list[str]):
        self.answers = answers
        self.prompts: list[list] = []

    def __call__(self, prompt):  # type: ignore[no-untyped-def]
        self.prompts.append(prompt.to_messages())
        return AIMessage(content=self.answers[(len(self.prompts) - 1) % len(self.answers)])


def _captioner(tmp_path: Path, model: Recorder, store, model_id: str = "rec-1", prompt=None,  # type: ignore[no-untyped-def]
               attempts: int = 2) -> Captioner:
    describer = Describer(LLMBackend("rec", model_id, RunnableLambda(model)), prompt=prompt, timeout_s=30)
    return Captioner(describer=describer, store=store, cache=DescriptionCache(tmp_path / "cache.sqlite"),
                     attempts=attempts)


def test_few_shot_examples_are_valid_rewrites_of_their_entries_bullets() -> None:
    prompt = load_prompt()
    entries = entry_by_id()
    assert len(prompt.examples) >= prompt.shots + 1  # a finding that is an example still gets `shots` others
    for example in prompt.examples:
        entry = entries[example.entry]
        features = entry.waveform_features[:prompt.bullets]
        check = validate_description(example.description, entry.id, entry_passages(entry), features=features)
        assert check.ok and check.text == example.description, (entry.id, check.reasons)


def test_the_model_sees_only_the_grounded_bullets_and_never_its_own_example(tmp_path: Path, make_store) -> None:  # type: ignore[no-untyped-def]
    model = Recorder([IMI_GOOD])
    captioner = _captioner(tmp_path, model, make_store())
    description = captioner.describe("imi")
    assert description.source == "llm" and description.text == IMI_GOOD
    messages = model.prompts[0]
    prompt = load_prompt()
    assert [m.type for m in messages] == ["system", *["human", "ai"] * prompt.shots, "human"]
    target = messages[-1].content
    imi = entry_by_id()["imi"]
    notes = [line[2:] for line in target.splitlines() if line.startswith("- ")]
    # exactly the bullets the grounded fallback joins, with lead lists moved behind their feature
    assert notes == [render_note(b) for b in imi.waveform_features[:3]]
    assert notes[1] == "reciprocal ST depression in I and aVL"  # from "I, aVL: reciprocal ST depression"
    assert grounded_description(imi).startswith(imi.waveform_features[0])
    assert "Definition" not in target and "Common confusions" not in target  # no raw passages
    shown = [m.content for m in messages[2:-1:2]]
    assert all(example not in shown for example in (e.description for e in prompt.examples if e.entry == "imi"))


def test_wrong_leads_from_the_model_fall_back_to_grounded(tmp_path: Path, make_store) -> None:  # type: ignore[no-untyped-def]
    model = Recorder([IMI_WRONG])
    captioner = _captioner(tmp_path, model, make_store())
    description = captioner.describe("imi")
    assert description.source == "grounded"
    assert "mix the inferior territory (II, III, aVF) with aVL" in description.reason
    assert len(model.prompts) == 2 and captioner.stats["llm_rejected"] == 2  # both attempts checked, both rejected


def test_a_rejected_first_attempt_is_retried_with_other_examples(tmp_path: Path, make_store) -> None:  # type: ignore[no-untyped-def]
    model = Recorder([IMI_WRONG, IMI_GOOD])
    captioner = _captioner(tmp_path, model, make_store())
    description = captioner.describe("imi")
    assert description.source == "llm" and description.text == IMI_GOOD
    assert [m.content for m in model.prompts[0][2:-1:2]] != [m.content for m in model.prompts[1][2:-1:2]]
    again = Recorder(["never used"])  # a re-run: the rejected and the accepted attempt both come from the cache
    assert _captioner(tmp_path, again, make_store()).describe("imi").text == IMI_GOOD and not again.prompts


def test_a_prompt_change_invalidates_cached_descriptions(tmp_path: Path, make_store) -> None:  # type: ignore[no-untyped-def]
    first = Recorder([IMI_GOOD])
    assert _captioner(tmp_path, first, make_store()).describe("imi").source == "llm"
    again = Recorder([IMI_GOOD])
    assert _captioner(tmp_path, again, make_store()).describe("imi").cached and not again.prompts
    edited = tmp_path / "describe.yaml"
    default = Path(__file__).resolve().parents[2] / "cqa" / "prompts" / "describe.yaml"
    edited.write_text(default.read_text(encoding="utf-8").replace("short plain sentences", "plain sentences"),
                      encoding="utf-8")
    changed = Recorder([IMI_GOOD])
    captioner = _captioner(tmp_path, changed, make_store(), prompt=load_prompt(edited))
    assert not captioner.describe("imi").cached and len(changed.prompts) == 1


def test_cached_text_is_revalidated_by_the_current_rules(tmp_path: Path, make_store) -> None:  # type: ignore[no-untyped-def]
    """A description an older, looser validator accepted is not served once the rules reject it."""
    from cqa.cache import CachedDescription

    captioner = _captioner(tmp_path, Recorder([IMI_GOOD]), make_store(), attempts=1)
    _, passages = captioner.grounding_for("imi")
    key, prompt_hash = captioner._cache_key("imi", [p.text for p in passages], 0)
    captioner.cache.put(key, finding="imi", knowledge_version=captioner.knowledge_version, model_id="rec-1",  # type: ignore[union-attr]
                        prompt_hash=prompt_hash, value=CachedDescription(IMI_WRONG, "llm", None, IMI_WRONG))
    description = captioner.describe("imi")
    assert description.source == "grounded" and "mix the inferior territory" in description.reason
    assert captioner.stats["cache_invalidated"] == 1 and captioner.stats["llm_calls"] == 0
    assert captioner.cache.get(key).source == "grounded"  # type: ignore[union-attr]


def test_paraphrase_variants_are_validated_cached_and_distinct(tmp_path: Path, make_store) -> None:  # type: ignore[no-untyped-def]
    other = ("Inferior myocardial infarction has ST elevation with upright or hyperacute T waves in II, III and "
             "aVF, and reciprocal ST depression in I and aVL.")
    model = Recorder([IMI_GOOD, IMI_WRONG, other, IMI_GOOD])
    captioner = _captioner(tmp_path, model, make_store())
    texts = finding_paraphrases(captioner, "imi", n=4)
    assert texts == [IMI_GOOD, other]  # variant 1 rejected (aVL), variant 3 a duplicate of variant 0
    assert len(model.prompts) == 4
    shown = [[m.content for m in prompt[2:-1:2]] for prompt in model.prompts]
    assert shown[0] != shown[1]  # each variant rewrites from other few-shot examples
    assert captioner.describe("imi").text == IMI_GOOD  # variant 0 is the caption's own description
    fresh = Recorder(["never used"])
    cached_only = _captioner(tmp_path, fresh, make_store())
    assert paraphrase_table(cached_only, ["imi", "imi"], n=4, generate=False) == {"imi": [IMI_GOOD, other]}
    assert finding_paraphrases(cached_only, "imi", n=6, generate=False) == [IMI_GOOD, other]
    assert not fresh.prompts
    assert finding_paraphrases(Captioner(), "imi") == []  # grounded-only: no LLM views
    with pytest.raises(KeyError):
        finding_paraphrases(captioner, "no_such_finding")


class WordTokenizer:
    """A stand-in tokenizer: one id per (leading-space, word or punctuation) piece."""

    eos_token_id = 0

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<|im_end|>": 0}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        import re

        return [self.ids.setdefault(piece, len(self.ids)) for piece in re.findall(r" ?[\w′']+| ?[^\w\s]", text)]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.ids.get(token, -1)

    def __len__(self) -> int:
        return len(self.ids)


def test_vocabulary_constraint_allows_only_the_features_words() -> None:
    import torch

    from cqa.constrain import CONNECTIVES, VocabularyConstraint, allowed_token_ids

    tokenizer = WordTokenizer()
    allowed = set(allowed_token_ids(tokenizer, ["Inferior myocardial infarction", "reciprocal ST depression in I, aVL"]))
    for piece in (" reciprocal", "Reciprocal", " depression", " aVL", " Inferior", ",", " shows"):
        assert tokenizer.ids[piece] in allowed, piece
    assert 0 in allowed  # end of turn
    invented = tokenizer.encode(" elevation aVF")  # words the features do not have
    assert not set(invented) & allowed
    assert "shows" in CONNECTIVES
    scores = torch.zeros(1, len(tokenizer))
    masked = VocabularyConstraint(sorted(allowed), len(tokenizer))(torch.zeros(1, 1, dtype=torch.long), scores)
    assert torch.isinf(masked[0, invented]).all() and not torch.isinf(masked[0, sorted(allowed)]).any()


def test_no_repeat_counts_only_the_models_own_output_and_spares_lead_lists() -> None:
    import torch

    from cqa.constrain import NoRepeatInOutput

    prompt = [7, 8, 9, 7, 8]  # the prompt may contain any n-gram: copying it stays allowed
    processor = NoRepeatInOutput(n=3)
    first = processor(torch.tensor([prompt]), torch.zeros(1, 20))
    assert not torch.isinf(first).any() and processor.prompt_length == len(prompt)
    scores = processor(torch.tensor([prompt + [7, 8, 9, 7, 8]]), torch.zeros(1, 20))
    assert torch.isinf(scores[0, 9]) and torch.isinf(scores).sum() == 1  # "7 8 9" again is blocked
    exempt = NoRepeatInOutput(n=3, exempt={8})  # e.g. the tokens of "V1–V3"
    exempt(torch.tensor([prompt]), torch.zeros(1, 20))
    assert not torch.isinf(exempt(torch.tensor([prompt + [7, 8, 9, 7, 8]]), torch.zeros(1, 20))).any()


@pytest.mark.parametrize(("entry_id", "index", "note"), [
    ("imi", 0, "ST elevation with upright or hyperacute T waves in the acute phase in II, III and aVF"),
    ("lbbb", 0, "QRS duration 120 ms or longer"),
    ("junctional_rhythm", 3, "rhythm regular at 40–60 bpm"),
    ("lowt", 1, "T wave nearly isoelectric in lateral or inferior leads"),
    # a feature with lead lists of its own keeps its leads in front, so lists never stack
    ("hvolt", 0, "in V1–V6, large QRS amplitude, with tall R in V5–V6 and deep S in V1–V2"),
])
def test_feature_bullets_are_rendered_as_copyable_notes(entry_id: str, index: int, note: str) -> None:
    assert render_note(entry_by_id()[entry_id].waveform_features[index]) == note
