"""The shared latent space: shapes at ViT-B/32 sizes, tying by gradients, counts,
end to end on the text tower."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from stop_lightning.models.hooks import HookSet, freeze
from stop_lightning.models.shared_latent import SharedPromptSpace
from stop_lightning.models.text_prompts import PromptedTextEncoder
from stop_lightning.models.tiny_clip import make_tiny_clip
from stop_lightning.schema import ModelConfig

# ViT-B/32: vision 12 x 768, text 12 x 512; K = 4 local tokens, T = 12 frames, 4 + 4 text prompts
B32 = dict(vision_width=768, vision_layers=12, text_width=512, text_layers=12, num_frames=12)


def cfg_for(variant: str, num_tokens: int = 4, prefix: int = 4, postfix: int = 4) -> ModelConfig:
    cfg = ModelConfig()
    cfg.shared_latent = variant
    cfg.local_prompts.num_tokens = num_tokens
    cfg.text_prompts.prefix, cfg.text_prompts.postfix = prefix, postfix
    return cfg


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize(("variant", "frames"), [("linear", 1), ("transformer", 12)])
def test_shapes_vit_b32(variant, frames):
    space = SharedPromptSpace(cfg_for(variant), **B32)
    visual, text = space()
    assert visual.shape == (12, frames, 4, 768)
    assert text.shape == (12, 8, 512)


@pytest.mark.parametrize("variant", ["linear", "transformer"])
@pytest.mark.parametrize("side", ["visual", "text"])
def test_both_outputs_reach_the_shared_source(variant, side):
    space = SharedPromptSpace(
        cfg_for(variant), vision_width=64, vision_layers=3, text_width=32, text_layers=3, num_frames=2
    )
    visual, text = space()
    (visual if side == "visual" else text).square().sum().backward()
    source = space.source if variant == "linear" else space.embedding
    assert source.grad is not None and source.grad.abs().sum() > 0
    if variant == "transformer" and side == "text":
        # the text gradient reaches the *visual* tokens' rows only through the shared transformer
        num_text = space.num_prefix + space.num_postfix
        assert (
            space.embedding.grad[num_text:].abs().sum() == 0
        )  # zero-init residual branches: not yet at step 0
        assert space.transformer.self_attn.out_proj.weight.grad.abs().sum() > 0  # but the tie is learnable


def test_transformer_ties_visual_and_text_tokens_after_training_starts():
    space = SharedPromptSpace(
        cfg_for("transformer"), vision_width=64, vision_layers=2, text_width=32, text_layers=2, num_frames=2
    )
    torch.nn.init.normal_(space.transformer.self_attn.out_proj.weight, std=0.02)  # as after a few steps
    _, text = space()
    text.square().sum().backward()
    num_text = space.num_prefix + space.num_postfix
    assert space.embedding.grad[num_text:].abs().sum() > 0  # text loss moves the visual tokens' source


def test_fresh_spaces_start_small():
    for variant in ("linear", "transformer"):
        space = SharedPromptSpace(
            cfg_for(variant), vision_width=64, vision_layers=2, text_width=32, text_layers=2, num_frames=3
        )
        with torch.no_grad():
            visual, text = space()
        assert visual.std() < 0.05 and text.abs().max() < 0.5, variant
    fresh = SharedPromptSpace(
        cfg_for("transformer"), vision_width=64, vision_layers=2, text_width=32, text_layers=2, num_frames=3
    )
    with torch.no_grad():
        visual, _ = fresh()
        # zero-init residual branches: the transformer passes the embedding through at step 0
        expected = fresh.embedding[8:].view(3 * 4, 2, 64).transpose(0, 1).reshape(2, 3, 4, 64)
    torch.testing.assert_close(visual, expected)


def test_uneven_depths_and_counts():
    # ViT-L/14-like depths (24 vision, 12 text) and a prompt count different from K
    space = SharedPromptSpace(
        cfg_for("linear", num_tokens=2, prefix=3, postfix=1),
        vision_width=32,
        vision_layers=24,
        text_width=16,
        text_layers=12,
        num_frames=4,
    )
    visual, text = space()
    assert visual.shape == (24, 1, 2, 32) and text.shape == (12, 4, 16)
    assert space.text_layer_index.tolist() == list(range(0, 24, 2))
    space = SharedPromptSpace(
        cfg_for("transformer", num_tokens=2, prefix=3, postfix=1),
        vision_width=32,
        vision_layers=24,
        text_width=16,
        text_layers=12,
        num_frames=4,
    )
    visual, text = space()
    assert visual.shape == (24, 4, 2, 32) and text.shape == (12, 4, 16)


def test_none_is_refused():
    with pytest.raises(ValueError, match="linear | transformer"):
        SharedPromptSpace(cfg_for("none"), **B32)


def test_parameter_counts_vit_b32():
    linear = SharedPromptSpace(cfg_for("linear"), **B32)
    transformer = SharedPromptSpace(cfg_for("transformer"), **B32)
    L, D, Dt, K, T, n_text = 12, 768, 512, 4, 12, 8
    expected_linear = K * L * D + 2 * (D * Dt + Dt)
    layer = 4 * D * D + 4 * D + 2 * (D * 4 * D) + 4 * D + D + 4 * D  # attention, MLP 4D, two LayerNorms
    expected_transformer = (n_text + K * T) * L * D + layer + (D * 2 * D + 2 * D) + (2 * D * Dt + Dt)
    assert count(linear) == expected_linear == 824_320
    assert count(transformer) == expected_transformer == 9_572_096


@pytest.mark.parametrize("variant", ["linear", "transformer"])
def test_text_tower_takes_the_shared_prompts(tmp_path, variant):
    """End to end: the shared text prompts drive PromptedTextEncoder and its loss reaches
    the shared source."""
    make_tiny_clip(tmp_path, seed=0)
    clip = freeze(CLIPModel.from_pretrained(tmp_path))
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    batch = tokenizer(
        ["a video of a person", "red square moves left"],
        padding="max_length",
        max_length=32,
        return_tensors="pt",
    )
    cfg = cfg_for(variant)
    text_cfg, vision_cfg = clip.config.text_config, clip.config.vision_config
    space = SharedPromptSpace(
        cfg,
        vision_cfg.hidden_size,
        vision_cfg.num_hidden_layers,
        text_cfg.hidden_size,
        text_cfg.num_hidden_layers,
        num_frames=2,
    )
    encoder = PromptedTextEncoder(clip, cfg, HookSet())
    _, text_prompts = space()
    encoder(batch.input_ids, text_prompts=text_prompts).square().sum().backward()
    source = space.source if variant == "linear" else space.embedding
    assert source.grad.abs().sum() > 0
