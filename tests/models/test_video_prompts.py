"""VoP's video prompts (models/video_prompts.py, local_prompts.per_frame): shapes, NumPy references, and
that each changes with its input as the paper describes (docs/fidelity.md, "VoP")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from stop_lightning.config import ConfigError, ContextPromptConfig, FunctionPromptConfig
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.models.video_prompts import ContextPrompts, FunctionPrompts

T = 4
_erf = np.vectorize(math.erf)


def np_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def np_linear(x: np.ndarray, layer: torch.nn.Linear) -> np.ndarray:
    return x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter normal (the zero-initialised last layers included), so outputs are not trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# -- context-specific (VoP-C) -------------------------------------------------------------------------


def np_context(module: ContextPrompts, cls: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    B, _, D = cls.shape
    x = (cls - cls.mean(-1, keepdims=True)) / np.sqrt(cls.var(-1, keepdims=True) + 1e-5)
    w = np.ones(cls.shape[:2]) if mask is None else mask.astype(np.float64)
    context = (x * w[..., None]).sum(1) / np.maximum(w.sum(1), 1.0)[:, None]
    out = np_linear(np_gelu(np_linear(context, module.down)), module.up)
    return out.reshape(B, module.num_tokens, D)


@pytest.mark.parametrize("seed", range(6))
def test_context_prompts_match_numpy(seed):
    g = torch.Generator().manual_seed(seed)
    B, frames, K, D = 1 + seed % 3, 1 + seed, 1 + seed % 4, 8 * (1 + seed % 2)
    module = ContextPrompts(ContextPromptConfig(enabled=True, bottleneck=3 + seed), K, D).double()
    cls = torch.randn(B, frames, D, generator=g, dtype=torch.float64) * (1 + 5 * seed)
    mask = torch.rand(B, frames, generator=g) > 0.4
    mask[0] = False  # a clip with no real frame: context 0, the generator's value at 0
    with torch.no_grad():
        assert torch.count_nonzero(module(cls)) == 0  # zero-initialised: a fresh VoP-C is VoP
        randomise(module, seed)
        for m in (None, mask):
            out = module(cls, m)
            assert out.shape == (B, K, D)
            expected = np_context(module, cls.numpy(), None if m is None else m.numpy())
            np.testing.assert_allclose(out.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_context_prompts_differ_between_clips_and_match_for_identical_ones():
    torch.manual_seed(0)
    module = ContextPrompts(ContextPromptConfig(enabled=True, bottleneck=8), 3, 16)
    randomise(module, 1)
    a, b = torch.randn(2, T, 16)
    with torch.no_grad():
        out = module(torch.stack([a, b, a.clone()]))  # [3, K, D]
        masked = module(torch.stack([a, a]), torch.tensor([[True] * T, [True] * (T - 1) + [False]]))
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert (masked[0] - masked[1]).abs().max() > 1e-4  # a padded frame leaves the context


def test_context_prompts_in_the_model_follow_the_clip(tiny_clip, model_cfg, make_video):
    """Prompt slots entering a layer: the same for every clip under `vop`, clip-specific under `vop_c`
    (and equal for two copies of one clip in the batch)."""
    video = make_video(batch=2, frames=T, size=32)
    video = torch.cat([video, video[:1]])  # clip 2 is a copy of clip 0
    slots = {}
    for preset in ("vop", "vop_c"):
        clip = tiny_clip(width=32, layers=3, patch_size=16, image_size=32)
        model = STOPVideoModel(model_cfg(preset, "local_prompts.num_tokens=2"), clip, num_frames=T)
        if model.context_prompts is not None:
            randomise(model.context_prompts, 3)
        seen = {}

        def record(module, args, kwargs, seen=seen):
            seen["slots"] = (args[0] if args else kwargs["hidden_states"])[:, 1:3].detach().clone()

        model.parts.layers[1].register_forward_pre_hook(
            record, with_kwargs=True
        )  # runs after the model's own
        with torch.no_grad():
            model(video)
        slots[preset] = seen["slots"].view(3, T, 2, -1)
    base, ctx = slots["vop"], slots["vop_c"]
    torch.testing.assert_close(base[0], base[1], rtol=0, atol=0)  # static prompts: no clip in them
    torch.testing.assert_close(ctx[0], ctx[2], rtol=0, atol=0)
    assert (ctx[0] - ctx[1]).abs().max() > 1e-3
    torch.testing.assert_close(ctx[0, 0], ctx[0, -1], rtol=0, atol=0)  # per video: every frame the same term


# -- function-specific (VoP-F) ------------------------------------------------------------------------


def np_mixer(mixer, x: np.ndarray) -> np.ndarray:
    """down, a same-padded convolution over the frame axis, GELU, up: ``[B, T, K, D] -> [B, T, K, D]``."""
    h = np_linear(x, mixer.down)  # [B, T, K, r]
    w = mixer.conv.weight.detach().double().numpy()  # [r_out, r_in, k]
    bias = mixer.conv.bias.detach().double().numpy()
    k = w.shape[-1]
    pad = np.pad(h, ((0, 0), (k // 2, k // 2), (0, 0), (0, 0)))
    frames = h.shape[1]
    conv = np.stack(
        [np.einsum("bjkr,ojr->bko", pad[:, t : t + k], w.transpose(0, 2, 1)) for t in range(frames)], 1
    )
    return np_linear(np_gelu(conv + bias), mixer.up)


@pytest.mark.parametrize("seed, kernel", [(0, 3), (1, 1), (2, 5), (3, 3)])
def test_function_prompts_match_numpy(seed, kernel):
    g = torch.Generator().manual_seed(seed)
    B, frames, K, D, layers = 2, 1 + 2 * seed, 1 + seed % 3, 8, 4
    module = FunctionPrompts(
        FunctionPromptConfig(enabled=True, bottleneck=5, kernel=kernel), layers, D
    ).double()
    assert len(module.mixers) == layers - 1
    x = torch.randn(B, frames, K, D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.count_nonzero(module.at_layer(1, x)) == 0  # zero-initialised: a fresh VoP-F is VoP
        randomise(module, seed)
        for layer in range(1, layers):
            out = module.at_layer(layer, x)
            assert out.shape == (B, frames, K, D)
            np.testing.assert_allclose(
                out.numpy(), np_mixer(module.mixers[layer - 1], x.numpy()), rtol=1e-9, atol=1e-9
            )
    with pytest.raises(ValueError, match="layers 1..3"):
        module.at_layer(0, x)


def test_function_prompts_differ_between_layers_and_mix_neighbouring_frames():
    torch.manual_seed(0)
    module = FunctionPrompts(FunctionPromptConfig(enabled=True, bottleneck=6, kernel=3), 4, 16)
    randomise(module, 2)
    x = torch.randn(2, 5, 3, 16)
    with torch.no_grad():
        per_layer = [module.at_layer(layer, x) for layer in (1, 2, 3)]
        moved = x.clone()
        moved[:, 0] += 1.0  # change frame 0 only
        changed = module.at_layer(1, moved) - per_layer[0]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert (per_layer[a] - per_layer[b]).abs().max() > 1e-3, (
            f"layers {a + 1} and {b + 1} give the same prompts"
        )
    assert changed[:, 1].abs().max() > 1e-4  # frame 1 hears about frame 0 (kernel 3)...
    assert changed[:, 2:].abs().max() == 0  # ...frames 2.. do not


def test_function_prompts_in_the_model_take_the_previous_layers_slots(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=3, patch_size=16, image_size=32)
    model = STOPVideoModel(model_cfg("vop_f", "local_prompts.num_tokens=2"), clip, num_frames=T)
    randomise(model.function_prompts, 4)
    entering = {}
    for i, layer in enumerate(model.parts.layers):

        def record(module, args, kwargs, i=i):
            entering[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        layer.register_forward_pre_hook(record, with_kwargs=True)
    leaving = {}
    model.parts.layers[0].register_forward_hook(lambda m, a, out: leaving.setdefault(0, out.detach().clone()))
    with torch.no_grad():
        model(make_video(batch=2, frames=T, size=32))
        previous = leaving[0][:, 1:3].reshape(2, T, 2, -1)
        expected = model.local_prompts.tokens[1] + model.function_prompts.at_layer(
            1, previous
        )  # [B, T, K, D]
    torch.testing.assert_close(entering[1][:, 1:3], expected.reshape(2 * T, 2, -1))
    torch.testing.assert_close(entering[0][:, 1:3], model.local_prompts.tokens[0].expand(2 * T, 2, -1))


# -- the presets together ------------------------------------------------------------------------------


def test_fresh_vop_variants_compute_vop(tiny_clip, model_cfg, make_video):
    """The generated terms start at zero: with VoP's prompts copied in, VoP-C, VoP-F and VoP-F+C
    give VoP's features."""
    video = make_video(batch=2, frames=T, size=32)
    ids = torch.tensor([[3, 5, 7, 63], [3, 4, 63, 0]])
    outputs = {}
    reference = None
    for preset in ("vop", "vop_c", "vop_f", "vop_fc"):
        clip = tiny_clip(width=32, layers=2, patch_size=16, image_size=32)
        model = STOPVideoModel(model_cfg(preset), clip, num_frames=T)
        if reference is None:
            reference = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
            assert set(reference) == {"local_prompts.tokens", "text_encoder.prompts"}
        else:
            model.load_state_dict(reference, strict=False)
        with torch.no_grad():
            outputs[preset] = (model(video).embeds, model.encode_text(ids, torch.ones_like(ids)))
    for preset in ("vop_c", "vop_f", "vop_fc"):
        torch.testing.assert_close(outputs[preset], outputs["vop"], rtol=0, atol=0)


def test_position_specific_prompts_tell_frame_positions_apart(tiny_clip, model_cfg, make_video):
    """A clip of one frame repeated: `vop` gives every position the same feature, `vop_p` does not."""
    still = make_video(batch=1, frames=1, size=32).expand(1, T, -1, -1, -1)
    features = {}
    for preset in ("vop", "vop_p"):
        clip = tiny_clip(width=32, layers=2, patch_size=16, image_size=32)
        model = STOPVideoModel(model_cfg(preset), clip, num_frames=T)
        with torch.no_grad():
            features[preset] = model(still).frame_embeds[0]  # [T, E]
    assert model.local_prompts().shape[:3] == (2, T, 8)
    torch.testing.assert_close(features["vop"][0], features["vop"][-1])
    assert (features["vop_p"][0] - features["vop_p"][-1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match=f"made for {T} frames, the clip has {T + 1}"):
        model(make_video(batch=1, frames=T + 1, size=32))


@pytest.mark.parametrize("specific", [-1, 1, 3, 4, 8])
def test_position_specific_tokens_split_into_shared_and_per_frame(tiny_clip, model_cfg, specific):
    """VoP-P (paper Sec. 3.3 and 4.1): the last ``specific`` of the 8 tokens are per frame position, the
    others the same for every frame; the count is L*(8-P)*D + L*T*P*D (the text prompts aside)."""
    clip = tiny_clip(width=32, layers=2, patch_size=16, image_size=32)
    model = STOPVideoModel(
        model_cfg("vop_p", f"local_prompts.per_frame_tokens={specific}"), clip, num_frames=T
    )
    P = 8 if specific == -1 else specific
    tokens = model.local_prompts().detach().numpy()  # [L, T, 8, D]
    assert tokens.shape == (2, T, 8, 32)
    shared, per_frame = tokens[:, :, : 8 - P], tokens[:, :, 8 - P :]
    np.testing.assert_array_equal(shared, np.broadcast_to(shared[:, :1], shared.shape))
    for a in range(T):
        for b in range(a + 1, T):
            assert np.abs(per_frame[:, a] - per_frame[:, b]).min() > 0
    visual = sum(p.numel() for p in model.local_prompts.parameters())
    assert visual == 2 * (8 - P) * 32 + 2 * T * P * 32
    with torch.no_grad():
        model(torch.zeros(1, T, 3, 32, 32))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (("local_prompts.per_frame_tokens=0",), "per_frame_tokens = 0: expected -1 .all. or 1..8"),
        (("local_prompts.per_frame_tokens=9",), "per_frame_tokens = 9: expected -1 .all. or 1..8"),
        (("local_prompts.per_frame=false",), "set model.local_prompts.per_frame=true or per_frame_tokens=-1"),
        (("shared_latent=linear",), "per_frame needs the model's own local prompts"),
        (
            (
                "local_prompts.enabled=false",
                "local_prompts.per_frame=false",
                "local_prompts.per_frame_tokens=-1",
                "context_prompts.enabled=true",
            ),
            "model.context_prompts adds to the local prompt slots",
        ),
        (
            ("local_prompts.enabled=false", "local_prompts.per_frame=false", "function_prompts.enabled=true"),
            "model.function_prompts adds to the local prompt slots",
        ),
    ],
)
def test_vop_parts_without_their_slots_fail_with_the_key(tiny_clip, model_cfg, overrides, match):
    cfg = model_cfg("vop_p", *overrides)
    with pytest.raises(ConfigError, match=match):
        STOPVideoModel(cfg, tiny_clip(width=32, layers=2, patch_size=16, image_size=32), num_frames=T)


def test_vop_presets_are_on_the_schema(model_cfg):
    for preset in ("vop", "vop_p", "vop_c", "vop_f", "vop_fc"):
        cfg = model_cfg(preset)
        assert OmegaConf.select(cfg, "local_prompts.num_tokens") == 8
        assert (cfg.text_prompts.prefix, cfg.text_prompts.postfix) == (4, 4)
