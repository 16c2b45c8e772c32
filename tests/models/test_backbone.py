"""Loading CLIP: OpenAI checkpoint conversion, the tiny source, clear errors, frozen weights."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from stop_lightning.models import backbone
from stop_lightning.models.backbone import (
    ClipLoadError,
    clip_from_openai_state_dict,
    config_hash,
    load_clip,
    read_openai_checkpoint,
)
from stop_lightning.models.hooks import text_parts, vision_parts
from stop_lightning.schema import ClipSource

SIZES = dict(
    width=64, layers=2, patch_size=16, image_size=32, heads=1, text_width=64, text_layers=2, projection_dim=24
)


def openai_layout(hf) -> dict[str, torch.Tensor]:
    """Write a HF CLIPModel's weights in OpenAI's key layout (the inverse of the converter, by hand)."""
    v, t = vision_parts(hf), text_parts(hf)
    sd = {
        "visual.conv1.weight": v.embeddings.patch_embedding.weight,
        "visual.class_embedding": v.embeddings.class_embedding,
        "visual.positional_embedding": v.embeddings.position_embedding.weight,
        "visual.ln_pre.weight": v.pre_layernorm.weight,
        "visual.ln_pre.bias": v.pre_layernorm.bias,
        "visual.ln_post.weight": v.post_layernorm.weight,
        "visual.ln_post.bias": v.post_layernorm.bias,
        "visual.proj": hf.visual_projection.weight.t(),
        "token_embedding.weight": t.embeddings.token_embedding.weight,
        "positional_embedding": t.embeddings.position_embedding.weight,
        "ln_final.weight": t.final_layernorm.weight,
        "ln_final.bias": t.final_layernorm.bias,
        "text_projection": hf.text_projection.weight.t(),
        "logit_scale": hf.logit_scale,
    }
    for prefix, layers in (("visual.transformer.resblocks.", v.layers), ("transformer.resblocks.", t.layers)):
        for i, layer in enumerate(layers):
            a, p = layer.self_attn, f"{prefix}{i}."
            sd[p + "attn.in_proj_weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            sd[p + "attn.in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = a.out_proj.weight, a.out_proj.bias
            sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = layer.layer_norm1.weight, layer.layer_norm1.bias
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = layer.mlp.fc1.weight, layer.mlp.fc1.bias
            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = layer.mlp.fc2.weight, layer.mlp.fc2.bias
            sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = layer.layer_norm2.weight, layer.layer_norm2.bias
    return {k: t_.detach().clone() for k, t_ in sd.items()}


@pytest.fixture
def hf_and_openai(tiny_clip):
    hf = tiny_clip(**SIZES)  # pools text at the last vocabulary id, as OpenAI's converted model must
    return hf, openai_layout(hf)


def features(model, pixels, ids):
    with torch.no_grad():
        return model.get_image_features(pixel_values=pixels).pooler_output, model.get_text_features(
            input_ids=ids
        ).pooler_output


def test_openai_state_dict_converts_to_same_features(hf_and_openai):
    hf, sd = hf_and_openai
    converted = clip_from_openai_state_dict(
        sd, vision_heads=1, text_heads=hf.config.text_config.num_attention_heads
    )
    vocab = hf.config.text_config.vocab_size
    assert converted.config.vision_config.image_size == 32 and converted.config.vision_config.patch_size == 16
    assert converted.config.projection_dim == 24 and converted.config.text_config.vocab_size == vocab
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.tensor([[vocab - 2, 5, 6, 7, vocab - 1, 0, 0], [vocab - 2, 9, vocab - 1, 0, 0, 0, 0]])
    for got, want in zip(features(converted, pixels, ids), features(hf, pixels, ids)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(converted.logit_scale, hf.logit_scale)


def test_load_clip_reads_an_openai_pt_file(hf_and_openai, tmp_path):
    hf, sd = hf_and_openai
    path = tmp_path / "ViT-tiny.pt"
    torch.save({k: v.half() for k, v in sd.items()}, path)  # OpenAI ships fp16 weights
    bundle = load_clip(
        OmegaConf.structured(ClipSource(source=str(path), attn_implementation="eager")), tmp_path
    )
    assert bundle.patch_size == 16 and bundle.image_size == 32 and bundle.tokenizer is None
    assert bundle.model.config.vision_config._attn_implementation == "eager"
    assert all(not p.requires_grad for p in bundle.model.parameters()) and not bundle.model.training
    assert next(bundle.model.parameters()).dtype == torch.float32
    assert len(bundle.config_hash) == 64


def test_torchscript_archive_is_read_with_jit(hf_and_openai, tmp_path):
    _, sd = hf_and_openai

    class Holder(torch.nn.Module):  # a scriptable module whose state_dict has OpenAI's keys
        def __init__(self, tensors):
            super().__init__()
            for key, value in tensors.items():
                owner = self
                *path, leaf = key.split(".")
                for name in path:
                    if not hasattr(owner, name):
                        owner.add_module(name, torch.nn.Module())
                    owner = getattr(owner, name)
                owner.register_buffer(leaf, value)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(Holder(sd)), str(path))
    state = read_openai_checkpoint(path)
    assert set(state) == set(sd) and torch.equal(state["visual.proj"], sd["visual.proj"])


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ClipLoadError, match="no such file"):
        load_clip(ClipSource(source=str(tmp_path / "missing.pt")), tmp_path)
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ClipLoadError, match="notes.pt: cannot be read as an OpenAI CLIP checkpoint"):
        load_clip(ClipSource(source=str(bad)), tmp_path)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ClipLoadError, match="visual.conv1.weight"):
        load_clip(ClipSource(source=str(other)), tmp_path)


def test_hub_id_without_network_says_what_to_do(tmp_path, monkeypatch):
    # What from_pretrained raises offline (the real call spends ~20 s on retries first).
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(backbone.CLIPModel, "from_pretrained", offline)
    with pytest.raises(ClipLoadError, match="point model.clip.source to a local directory"):
        load_clip(ClipSource(source="someone/clip-that-is-not-cached"), tmp_path)


def test_tiny_source_is_built_once_and_loaded(tmp_path):
    cfg = ClipSource(source="tiny", tiny_width=32, tiny_layers=1, tiny_patch_size=16, tiny_image_size=32)
    first = load_clip(cfg, tmp_path)
    second = load_clip(cfg, tmp_path)
    dirs = [p.name for p in tmp_path.iterdir()]
    assert dirs == ["tiny-clip-w32-l1-p16-i32"]
    assert first.config_hash == second.config_hash == config_hash(second.model.config)
    assert first.tokenizer is not None and first.image_size == 32 and first.patch_size == 16
    assert len(first.image_mean) == 3 and len(first.image_std) == 3
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
