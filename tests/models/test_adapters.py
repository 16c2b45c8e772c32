"""Adapters beside the MLP: zero-init is stock CLIP, only adapters train, removal restores stock."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from stop_lightning.models.adapters import Adapter, adapter_parameter_count, attach_adapters
from stop_lightning.models.hooks import HookSet, freeze, same_state, text_parts, vision_parts
from stop_lightning.models.text_prompts import PromptedTextEncoder
from stop_lightning.models.tiny_clip import make_tiny_clip
from stop_lightning.schema import AdapterConfig, ModelConfig


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_clip")
    make_tiny_clip(out, seed=0)
    return out


@pytest.fixture
def clip(clip_dir):
    return freeze(CLIPModel.from_pretrained(clip_dir))


@pytest.fixture
def text_batch(clip_dir):
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    return tokenizer(
        ["a video of a person", "red square moves left"],
        padding="max_length",
        max_length=32,
        return_tensors="pt",
    )


@pytest.fixture
def pixels(clip):
    size = clip.config.vision_config.image_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def text_only_cfg() -> ModelConfig:
    cfg = ModelConfig()
    cfg.text_prompts.enabled = False
    cfg.shared_latent = "none"
    return cfg


def features(clip, text_batch, pixels) -> tuple[torch.Tensor, torch.Tensor]:
    text = clip.get_text_features(
        input_ids=text_batch.input_ids, attention_mask=text_batch.attention_mask
    ).pooler_output
    image = clip.get_image_features(pixel_values=pixels).pooler_output
    return text, image


def test_fresh_adapters_are_stock_in_both_towers(clip, text_batch, pixels):
    with torch.no_grad():
        stock_text, stock_image = features(clip, text_batch, pixels)
        hooks = HookSet()
        encoder = PromptedTextEncoder(clip, text_only_cfg(), hooks)
        vparts = vision_parts(clip)
        vision_adapters = attach_adapters(
            vparts.layers, clip.config.vision_config.hidden_size, AdapterConfig(), hooks
        )
        assert len(encoder.adapters) == len(text_parts(clip).layers) and len(vision_adapters) == len(
            vparts.layers
        )
        assert len(hooks) == len(encoder.adapters) + len(vision_adapters)
        text, image = features(clip, text_batch, pixels)
        torch.testing.assert_close(text, stock_text, rtol=0, atol=0)
        torch.testing.assert_close(image, stock_image, rtol=0, atol=0)
        torch.testing.assert_close(encoder(text_batch.input_ids), stock_text, rtol=0, atol=0)


def test_one_step_trains_adapters_only_and_removal_restores_stock(clip, text_batch, pixels):
    with torch.no_grad():
        stock_text, stock_image = features(clip, text_batch, pixels)
    clip_state = copy.deepcopy(clip.state_dict())
    hooks = HookSet()
    encoder = PromptedTextEncoder(clip, text_only_cfg(), hooks)
    vision_adapters = attach_adapters(
        vision_parts(clip).layers, clip.config.vision_config.hidden_size, AdapterConfig(), hooks
    )
    trainable = torch.nn.ModuleList([encoder.adapters, vision_adapters])
    before = copy.deepcopy(trainable.state_dict())
    optimiser = torch.optim.AdamW(trainable.parameters(), lr=1e-2)

    text = encoder(text_batch.input_ids)
    image = clip.get_image_features(pixel_values=pixels).pooler_output
    loss = torch.nn.functional.cross_entropy(image @ text.T, torch.arange(2))
    loss.backward()
    optimiser.step()

    after = trainable.state_dict()
    assert all(
        not torch.equal(before[k], after[k]) for k in after if ".up." in k
    )  # zero-init branch learns first
    assert same_state(clip_state, clip.state_dict())  # CLIP bit-identical
    with torch.no_grad():
        text, image = features(clip, text_batch, pixels)
        assert not torch.allclose(text, stock_text) and not torch.allclose(image, stock_image)
        hooks.remove()
        text, image = features(clip, text_batch, pixels)
    torch.testing.assert_close(text, stock_text, rtol=0, atol=0)
    torch.testing.assert_close(image, stock_image, rtol=0, atol=0)


def test_adapter_reads_the_mlp_input_of_the_post_attention_stream(clip):
    """Layer output == h + mlp(ln2(h)) + scale * adapter(ln2(h)), h = x + attn(ln1(x))."""
    layer = text_parts(clip).layers[0]
    width = clip.config.text_config.hidden_size
    cfg = AdapterConfig(scale=0.1)
    hooks = HookSet()
    (adapter, *_) = attach_adapters(torch.nn.ModuleList([layer]), width, cfg, hooks)
    torch.nn.init.normal_(adapter.up.weight)  # a trained-looking adapter
    x = torch.randn(2, 5, width)
    with torch.no_grad():
        hooked = layer(x, None)
        hooks.remove()  # the stock pieces below must not run the hook again
        h = x + layer.self_attn(layer.layer_norm1(x))[0]
        mlp_in = layer.layer_norm2(h)
        expected = h + layer.mlp(mlp_in) + 0.1 * adapter.up(adapter.act(adapter.down(mlp_in)))
    torch.testing.assert_close(hooked, expected)


def test_adapter_parameter_count():
    cfg = AdapterConfig()
    adapters = attach_adapters(_fake_layers(12, 768), 768, cfg, HookSet())
    assert sum(p.numel() for p in adapters.parameters()) == adapter_parameter_count(768, 12, cfg.bottleneck)
    # ViT-B/32 sizes: vision 12 x 768, text 12 x 512, bottleneck 32
    assert adapter_parameter_count(768, 12, 32) == 599_436
    assert adapter_parameter_count(512, 12, 32) == 399_756
    assert isinstance(adapters[0], Adapter)


def _fake_layers(count: int, width: int) -> torch.nn.ModuleList:
    layers = torch.nn.ModuleList()
    for _ in range(count):
        layer = torch.nn.Module()
        layer.mlp = torch.nn.Linear(width, width)
        layers.append(layer)
    return layers


def test_attach_requires_mlp():
    with pytest.raises(AttributeError, match="no 'mlp'"):
        attach_adapters(torch.nn.ModuleList([torch.nn.Linear(4, 4)]), 4, AdapterConfig(), HookSet())
