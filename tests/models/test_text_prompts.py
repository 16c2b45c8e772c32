"""Deep text prompts on the HF text tower: stock equality, token counts, pooling, the caption cap."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from stop_lightning.models.hooks import HookSet, freeze, text_parts
from stop_lightning.models.text_prompts import (
    PromptedTextEncoder,
    PromptLayout,
    checked_eot_positions,
    eot_positions,
)
from stop_lightning.models.tiny_clip import make_tiny_clip
from stop_lightning.schema import ModelConfig

CAPTIONS = ["a video of a person", "red square moves left", "the blue square moves up and down"]
CAP = 32


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_clip")
    make_tiny_clip(out, seed=0)
    return out


@pytest.fixture(scope="module")
def tokenizer(clip_dir):
    return CLIPTokenizer.from_pretrained(clip_dir)


def load_clip(clip_dir, attn: str = "sdpa") -> CLIPModel:
    return freeze(CLIPModel.from_pretrained(clip_dir, attn_implementation=attn))


@pytest.fixture
def clip(clip_dir):
    return load_clip(clip_dir)


@pytest.fixture
def batch(tokenizer):
    return tokenizer(CAPTIONS, padding="max_length", max_length=CAP, truncation=True, return_tensors="pt")


def model_cfg(prompts: bool = True, adapters: bool = False, shared: str = "none") -> ModelConfig:
    cfg = ModelConfig()
    cfg.text_prompts.enabled = prompts
    cfg.adapter.enabled = adapters
    cfg.shared_latent = shared
    return cfg


def stock_features(clip, batch) -> torch.Tensor:
    return clip.get_text_features(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).pooler_output


def test_disabled_equals_stock(clip, batch):
    encoder = PromptedTextEncoder(clip, model_cfg(prompts=False), HookSet())
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch.input_ids), stock_features(clip, batch), rtol=0, atol=0)
    assert sum(p.numel() for p in encoder.parameters()) == 0


def test_hooks_idle_outside_forward(clip, batch):
    """The prompt hooks stay on the tower but only act inside PromptedTextEncoder.forward."""
    with torch.no_grad():
        before = stock_features(clip, batch)
        hooks = HookSet()
        encoder = PromptedTextEncoder(clip, model_cfg(), hooks)
        prompted = encoder(batch.input_ids)
        torch.testing.assert_close(stock_features(clip, batch), before, rtol=0, atol=0)
        assert not torch.allclose(prompted, before)
        hooks.remove()
        torch.testing.assert_close(stock_features(clip, batch), before, rtol=0, atol=0)


@pytest.mark.parametrize("part", ["prefix", "postfix"])
def test_changing_prompts_changes_caption_feature(clip, batch, part):
    cfg = model_cfg()
    encoder = PromptedTextEncoder(clip, cfg, HookSet())
    rows = slice(0, cfg.text_prompts.prefix) if part == "prefix" else slice(cfg.text_prompts.prefix, None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = encoder(batch.input_ids)
        for layer in range(encoder.num_layers):
            changed = encoder.prompts.detach().clone()
            # random, not a constant shift: LayerNorm would erase a shift shared by all features
            changed[layer, rows] += torch.randn(changed[layer, rows].shape, generator=generator)
            after = encoder(batch.input_ids, text_prompts=changed)
            # every caption's feature moves, whichever layer's prompts change
            assert ((after - before).abs().amax(dim=-1) > 1e-4).all(), (part, layer)


def test_token_count_and_replacement_at_every_layer(clip, batch):
    cfg = model_cfg()
    hooks = HookSet()
    encoder = PromptedTextEncoder(clip, cfg, hooks)
    P, Q = cfg.text_prompts.prefix, cfg.text_prompts.postfix
    seen_in, seen_out = [], []

    def record_in(module, args, kwargs):
        seen_in.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    for layer in text_parts(clip).layers:  # registered after the encoder's: sees the filled slots
        hooks.forward_pre(layer, record_in, with_kwargs=True)
        hooks.forward(layer, lambda m, a, out: seen_out.append(out.shape))
    with torch.no_grad():
        encoder(batch.input_ids)

    assert len(seen_in) == encoder.num_layers == len(seen_out)
    assert [tuple(h.shape[:2]) for h in seen_in] == [(len(CAPTIONS), CAP + P + Q)] * encoder.num_layers
    assert [tuple(s[:2]) for s in seen_out] == [(len(CAPTIONS), CAP + P + Q)] * encoder.num_layers

    eot = eot_positions(batch.input_ids, clip.config.text_config.eos_token_id)
    for layer, hidden in enumerate(seen_in):
        for n, e in enumerate(eot.tolist()):
            # replaced, not accumulated: exactly this layer's tokens, prefix after SOT, postfix before EOT
            torch.testing.assert_close(
                hidden[n, 1 : 1 + P], encoder.prompts[layer, :P].detach(), rtol=0, atol=0
            )
            torch.testing.assert_close(
                hidden[n, P + e : P + e + Q], encoder.prompts[layer, P:].detach(), rtol=0, atol=0
            )
    hooks.remove()


def manual_feature(clip, ids: torch.Tensor, prompts: torch.Tensor, P: int) -> torch.Tensor:
    """One unpadded caption ``[S]`` built and run by hand: ``[SOT, prefix, words, postfix, EOT]``, causal."""
    parts = text_parts(clip)
    S, Q = ids.shape[0], prompts.shape[1] - P
    emb = parts.embeddings(input_ids=ids[None])[0]  # [S, D]
    hidden = torch.cat(
        [emb[:1], torch.zeros(P, emb.shape[1]), emb[1:-1], torch.zeros(Q, emb.shape[1]), emb[-1:]]
    )
    length = S + P + Q
    causal = torch.full((length, length), torch.finfo(emb.dtype).min).triu(1)[None, None]  # [1, 1, S', S']
    for layer_index, layer in enumerate(parts.layers):
        hidden = hidden.clone()
        hidden[1 : 1 + P] = prompts[layer_index, :P]
        hidden[S - 1 + P : S - 1 + P + Q] = prompts[layer_index, P:]
        hidden = layer(hidden[None], causal)[0]
    pooled = parts.final_layernorm(hidden)[-1]  # EOT is last
    return parts.projection(pooled)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pooling_matches_manual_sequence(clip_dir, batch, attn):
    """Padded batch through the hooks == each caption assembled and run by hand (EOT index shifted by P+Q)."""
    clip = load_clip(clip_dir, attn)
    cfg = model_cfg()
    encoder = PromptedTextEncoder(clip, cfg, HookSet())
    P = cfg.text_prompts.prefix
    with torch.no_grad():
        features = encoder(batch.input_ids)
        eot = eot_positions(batch.input_ids, clip.config.text_config.eos_token_id)
        for n, e in enumerate(eot.tolist()):
            expected = manual_feature(clip, batch.input_ids[n, : e + 1], encoder.prompts, P)
            torch.testing.assert_close(features[n], expected, rtol=1e-5, atol=1e-5)


def test_layout_positions():
    eot = torch.tensor([3, 6])
    layout = PromptLayout.build(eot, seq_len=8, num_prefix=2, num_postfix=1)
    # caption 0: SOT w1 w2 EOT pad*4 -> SOT p0 p1 w1 w2 q0 EOT pad*4
    assert layout.token_index[0].tolist() == [0, 0, 0, 1, 2, 0, 3, 4, 5, 6, 7]
    assert layout.is_prompt[0].tolist() == [False, True, True, False, False, True] + [False] * 5
    assert layout.prompt_index[0].tolist() == [0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 0]
    assert layout.pool_index.tolist() == [6, 9]


def test_caption_cap(clip, tokenizer):
    encoder = PromptedTextEncoder(clip, model_cfg(), HookSet())
    long_caption = " ".join(["the red square moves left"] * 10)
    ids = tokenizer(
        [long_caption], padding="max_length", max_length=CAP + 8, truncation=True, return_tensors="pt"
    )
    with pytest.raises(ValueError, match=r"cap is 32.*max_length=32"):
        encoder(ids.input_ids)
    capped = tokenizer(
        [long_caption], padding="max_length", max_length=CAP, truncation=True, return_tensors="pt"
    )
    assert capped.input_ids.shape == (1, CAP) and capped.input_ids[0, -1] == tokenizer.eos_token_id
    assert encoder(capped.input_ids).shape == (1, clip.config.projection_dim)
    short = tokenizer(["a video"], return_tensors="pt")  # S < cap works too
    assert encoder(short.input_ids).shape == (1, clip.config.projection_dim)


def test_prompt_errors(clip, batch):
    shared = PromptedTextEncoder(clip, model_cfg(shared="linear"), HookSet())
    assert shared.prompts is None  # the shared space owns them
    with pytest.raises(ValueError, match="SharedPromptSpace"):
        shared(batch.input_ids)
    with pytest.raises(ValueError, match="expected"):
        shared(batch.input_ids, text_prompts=torch.zeros(1, 8, 32))
    disabled = PromptedTextEncoder(clip, model_cfg(prompts=False), HookSet())
    with pytest.raises(ValueError, match="enabled is false"):
        disabled(batch.input_ids, text_prompts=torch.zeros(2, 8, 32))
    no_eot = batch.input_ids.clone()
    no_eot[0, :] = 300
    with pytest.raises(ValueError, match=r"captions \[0\] have no end-of-text"):
        checked_eot_positions(no_eot, clip.config.text_config.eos_token_id)
    with pytest.raises(RuntimeError, match="no end-of-text"):  # on the device, without a host read
        eot_positions(no_eot, clip.config.text_config.eos_token_id)


def test_gradient_reaches_prompts_only(clip, batch):
    encoder = PromptedTextEncoder(clip, model_cfg(adapters=True), HookSet())
    encoder(batch.input_ids).square().sum().backward()
    assert encoder.prompts.grad is not None and encoder.prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
    names = {n for n, _ in encoder.named_parameters()}
    assert "prompts" in names and any(n.startswith("adapters.") for n in names)
    assert not any(n.startswith("clip") for n in encoder.state_dict())  # CLIP is the owner's
