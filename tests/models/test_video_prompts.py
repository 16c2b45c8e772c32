"""VoP's video prompts (models/video_prompts.py, local_prompts.per_frame) against the paper's forms
(docs/fidelity.md, "VoP"): NumPy references, what each prompt depends on, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import CLIPModel

from stop_lightning.models.hooks import freeze
from stop_lightning.models.tiny_clip import tiny_clip_config
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.models.video_prompts import ContextPrompts
from stop_lightning.schema import ConfigError, ContextPromptConfig

T = 4
TINY = dict(width=32, patch_size=16, image_size=32)


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter normal, so outputs are not trivially small."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def record_inputs(model: STOPVideoModel) -> dict[int, torch.Tensor]:
    """Hidden states entering each vision layer (seen after the model's own pre-hooks)."""
    seen: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(model.parts.layers):

        def hook(module, args, kwargs, i=i):
            seen[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        layer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def record_outputs(model: STOPVideoModel) -> dict[int, torch.Tensor]:
    """Hidden states leaving each vision layer (the last one after the model's own hook)."""
    seen: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(model.parts.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out.detach().clone()))
    return seen


# -- context-specific (VoP-C) -------------------------------------------------------------------------


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def np_lstm(x: np.ndarray, w_ih, w_hh, b_ih, b_hh) -> np.ndarray:
    """One LSTM direction over ``x [T, D]`` (gates in the order input, forget, cell, output) -> ``[T, H]``."""
    H = w_hh.shape[1]
    h, c, out = np.zeros(H), np.zeros(H), []
    for x_t in x:
        z = w_ih @ x_t + b_ih + w_hh @ h + b_hh
        i, f, g, o = (
            np_sigmoid(z[:H]),
            np_sigmoid(z[H : 2 * H]),
            np.tanh(z[2 * H : 3 * H]),
            np_sigmoid(z[3 * H :]),
        )
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out) if out else np.zeros((0, H))


def np_context(module: ContextPrompts, cls: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Eqs. 6-7: BiLSTM over each clip's real frames in order, then the FC; padded frames get FC(0)."""
    weights = {n: p.detach().double().numpy() for n, p in module.named_parameters()}
    B, T_, D = cls.shape
    P = module.num_tokens
    out = np.zeros((B, T_, P, D))
    for b in range(B):
        real = np.flatnonzero(mask[b])
        modulated = np.zeros((T_, 2 * weights["context.weight_hh_l0"].shape[1]))
        if len(real):
            x = cls[b, real]
            fwd = np_lstm(
                x, *(weights[f"context.{k}_l0"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            )
            bwd = np_lstm(
                x[::-1],
                *(
                    weights[f"context.{k}_l0_reverse"]
                    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ),
            )[::-1]
            modulated[real] = np.concatenate([fwd, bwd], axis=1)
        out[b] = (modulated @ weights["fc.weight"].T + weights["fc.bias"]).reshape(T_, P, D)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_context_prompts_match_numpy(seed):
    """BiLSTM + FC against a NumPy LSTM, on clips with padded frames anywhere (or none, or all)."""
    g = torch.Generator().manual_seed(seed)
    B, frames, P, D, H = 3, 1 + seed, 1 + seed % 4, 8 * (1 + seed % 2), 3 + seed
    module = ContextPrompts(ContextPromptConfig(enabled=True, num_tokens=P, hidden=H), D).double()
    randomise(module, seed)
    cls = torch.randn(B, frames, D, generator=g, dtype=torch.float64) * (1 + seed)
    mask = torch.rand(B, frames, generator=g) > 0.4
    mask[0] = True  # one whole clip
    if frames > 1:
        mask[1, 0] = False  # padding in front of a real frame
    with torch.no_grad():
        for m in (None, mask):
            out = module(cls, m)
            assert out.shape == (B, frames, P, D)
            m_np = np.ones((B, frames), bool) if m is None else m.numpy()
            expected = np_context(module, cls.numpy(), m_np)
            real = m_np[..., None, None].repeat(P, 2).repeat(D, 3)
            np.testing.assert_allclose(out.numpy()[real], expected[real], rtol=1e-9, atol=1e-9)


def test_context_prompts_use_the_whole_clip_in_order_and_ignore_padding():
    torch.manual_seed(0)
    module = ContextPrompts(ContextPromptConfig(enabled=True, num_tokens=2, hidden=6), 16)
    randomise(module, 1)
    a, b = torch.randn(2, T, 16)
    with torch.no_grad():
        out = module(torch.stack([a, b, a.clone()]))  # [3, T, P, D]
        later = a.clone()
        later[-1] += 1.0  # change the last frame only
        moved = module(later[None])[0] - out[0]
        earlier = a.clone()
        earlier[0] += 1.0
        moved_back = module(earlier[None])[0] - out[0]
        swapped = module(a[[1, 0, 2, 3]][None])[0]
        # Padding: whatever a padded frame holds, the real frames' prompts are those of the short clip.
        mask = torch.tensor([[True, False, True, False]])
        padded = module(torch.stack([a, b])[:1], mask)
        garbage = a.clone()
        garbage[[1, 3]] = torch.randn(2, 16) * 10
        padded_garbage = module(garbage[None], mask)
        short = module(a[[0, 2]][None])
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)  # the same clip, the same prompts
    assert (out[0] - out[1]).abs().min() > 0  # different clips: different prompts, every frame and token
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-3  # per frame, not one term for the clip
    assert moved[0].abs().max() > 1e-4  # frame 0 hears about the last frame (backward direction)...
    assert moved_back[-1].abs().max() > 1e-4  # ...and the last frame about frame 0 (forward direction)
    assert (swapped[2] - out[0, 2]).abs().max() > 1e-4  # order matters: frame 2's context changed
    torch.testing.assert_close(padded[0, [0, 2]], padded_garbage[0, [0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(padded[0, [0, 2]], short[0])


def test_context_prompts_in_the_model_come_from_one_module_at_every_layer(tiny_clip, model_cfg, make_video):
    """Slots entering each layer: the first 4 are the layer's shared tokens, the last 4 the one context
    module applied to the CLS tokens entering that layer; a copied clip gets the same, another clip
    (after the first layer) not."""
    video = make_video(batch=2, frames=T, size=32)
    video = torch.cat([video, video[:1]])  # clip 2 is a copy of clip 0
    model = STOPVideoModel(model_cfg("vop_c"), tiny_clip(layers=3, **TINY), num_frames=T)
    seen = record_inputs(model)
    with torch.no_grad():
        model(video)
    assert model.local_prompts.tokens.shape == (3, 1, 4, 32)
    for layer in range(3):
        slots = seen[layer][:, 1:9].view(3, T, 8, 32)
        cls = seen[layer][:, 0].view(3, T, 32)
        with torch.no_grad():
            context = model.context_prompts(cls)  # [3, T, 4, D]
        torch.testing.assert_close(slots[:, :, :4], model.local_prompts.tokens[layer].expand(3, T, 4, 32))
        torch.testing.assert_close(slots[:, :, 4:], context)
        torch.testing.assert_close(slots[0], slots[2], rtol=0, atol=0)
        # The CLS token entering layer 1 is CLIP's class embedding, the same for every clip (so are its
        # prompts, in the paper's form too); from layer 2 on it carries the frame.
        difference = (slots[0, :, 4:] - slots[1, :, 4:]).abs().max()
        assert difference > 1e-3 if layer else difference == 0


# -- function-specific (VoP-F) ------------------------------------------------------------------------


def np_free_reference(model: STOPVideoModel, video: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Eq. 9 written out with CLIP's layers called directly (the model's hooks do nothing outside its
    forward): shallow layers per frame with the local prompts; deep layers on one sequence per video
    made of the real frames only (frame position added) and that layer's video-level prompts. Returns
    the video vector, the mean of the real frames' projected CLS."""
    parts, K, split = model.parts, model.num_slots, model.split_layer
    B, T_ = video.shape[:2]
    with torch.no_grad():
        x = parts.pre_layernorm(parts.embeddings(video.flatten(0, 1)))  # [B*T, 1+N, D]
        local = model.local_prompts()  # [split, T or 1, K, D]
        for layer in range(split):
            prompts = local[layer].expand(T_, K, -1).repeat(B, 1, 1)  # [B*T, K, D]
            rest = x[:, 1:] if layer == 0 else x[:, 1 + K :]
            x = parts.layers[layer](torch.cat([x[:, :1], prompts, rest], dim=1), None)
        x = torch.cat([x[:, :1], x[:, 1 + K :]], dim=1)  # slots dropped: [B*T, S, D]
        S, D = x.shape[1:]
        x = x.view(B, T_, S, D) + model.function_prompts.frame_position[:, None]
        embeds = []
        for b in range(B):
            real = keep[b].nonzero().flatten()
            seq = x[b, real].reshape(1, -1, D)
            for layer in range(split, model.layers):
                tokens = model.function_prompts.tokens[layer - split][None]
                seq = parts.layers[layer](
                    torch.cat([tokens, seq[:, K:] if layer > split else seq], dim=1), None
                )
            cls = seq[0, K:].view(len(real), S, D)[:, 0]
            embeds.append(parts.projection(parts.post_layernorm(cls)).mean(0))
    return torch.stack(embeds)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("split", [1, 2])
def test_function_prompts_compute_eq9(tiny_clip, model_cfg, make_video, split, attn):
    """The video vector against Eq. 9 written out; padded frames masked out equal padded frames absent."""
    clip = tiny_clip(layers=3, **TINY)
    clip.config.vision_config._attn_implementation = attn
    model = STOPVideoModel(model_cfg("vop_f", f"function_prompts.split_layer={split}"), clip, num_frames=T)
    randomise(model.function_prompts, 2)
    video = make_video(batch=3, frames=T, size=32)
    mask = torch.tensor([[True] * T, [True, False, True, False], [True] * (T - 1) + [False]])
    with torch.no_grad():
        whole = model(video).embeds
        masked = model(video, mask).embeds
    torch.testing.assert_close(
        whole, np_free_reference(model, video, torch.ones_like(mask)), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(masked, np_free_reference(model, video, mask), atol=1e-5, rtol=1e-5)


def test_function_prompts_attend_across_frames_in_the_deep_layers_only(tiny_clip, model_cfg, make_video):
    """Changing frame 2's pixels changes frame 1's CLS after layer K^s + 1, not after layer K^s; under
    `vop` it never does. A padded frame changes nothing."""
    video = make_video(batch=1, frames=T, size=32)
    other = video.clone()
    other[:, 2] = torch.randn_like(other[:, 2])
    for preset, crosses in (("vop", False), ("vop_f", True)):  # the padding check below runs on vop_f
        model = STOPVideoModel(
            model_cfg(preset, "function_prompts.split_layer=2"), tiny_clip(layers=3, **TINY), T
        )
        leaving = record_outputs(model)
        cls = {}
        for name, clip_ in (("a", video), ("b", other)):
            with torch.no_grad():
                frames = model(clip_).frame_embeds[0]
            cls[name] = (leaving[1].view(T, -1, 32)[1, 0], frames[1])  # frame 1 after layer 2, at the end
        torch.testing.assert_close(cls["a"][0], cls["b"][0], rtol=0, atol=0)
        assert ((cls["a"][1] - cls["b"][1]).abs().max() > 1e-4) == crosses, preset
    mask = torch.tensor([[True, True, False, True]])
    with torch.no_grad():
        a, b = model(video, mask).frame_embeds, model(other, mask).frame_embeds
    torch.testing.assert_close(a[:, [0, 1, 3]], b[:, [0, 1, 3]])


def test_function_prompts_are_per_video_and_shallow_layers_are_vop(tiny_clip, model_cfg, make_video):
    """Deep layers see ``[K video-level prompts, T frames of (CLS, patches)]``, the prompts the same for
    every video; the shallow layers compute what `vop` computes with the same prompts."""
    video = make_video(batch=2, frames=T, size=32)
    models = {}
    for preset in ("vop", "vop_f"):
        models[preset] = STOPVideoModel(
            model_cfg(preset, "function_prompts.split_layer=2"), tiny_clip(layers=3, **TINY), T
        )
    vop, vop_f = models["vop"], models["vop_f"]
    assert vop_f.local_prompts.tokens.shape == (2, 1, 8, 32)  # the shallow layers only
    assert vop_f.function_prompts.tokens.shape == (1, 8, 32)
    with torch.no_grad():
        vop_f.local_prompts.tokens.copy_(vop.local_prompts.tokens[:2])
    entering, leaving = record_inputs(vop_f), record_outputs(vop_f)
    vop_leaving = record_outputs(vop)
    with torch.no_grad():
        vop(video), vop_f(video)
    torch.testing.assert_close(leaving[1], vop_leaving[1], rtol=0, atol=0)
    deep = entering[2]
    S = 1 + vop_f.num_patches
    assert deep.shape == (2, 8 + T * S, 32)
    for b in range(2):
        torch.testing.assert_close(deep[b, :8], vop_f.function_prompts.tokens[0], rtol=0, atol=0)
    frames = leaving[1][:, [0, *range(9, 9 + vop_f.num_patches)]].view(2, T, S, 32)
    expected = frames + vop_f.function_prompts.frame_position[:, None].detach()
    torch.testing.assert_close(deep[:, 8:], expected.reshape(2, T * S, 32))


def test_function_prompts_differ_between_deep_layers(tiny_clip, model_cfg, make_video):
    """Each deep layer gets its own video-level prompts (the "function" of that layer)."""
    model = STOPVideoModel(
        model_cfg("vop_f", "function_prompts.split_layer=1"), tiny_clip(layers=3, **TINY), T
    )
    entering = record_inputs(model)
    with torch.no_grad():
        model(make_video(batch=2, frames=T, size=32))
    for layer in (1, 2):
        torch.testing.assert_close(
            entering[layer][:, :8], model.function_prompts.tokens[layer - 1].expand(2, 8, 32), rtol=0, atol=0
        )
    assert (entering[1][:, :8] - entering[2][:, :8]).abs().min() > 0


def test_function_prompts_train_and_need_the_configured_frames(tiny_clip, model_cfg, make_video):
    model = STOPVideoModel(
        model_cfg("vop_f", "function_prompts.split_layer=1"), tiny_clip(layers=2, **TINY), T
    )
    model(make_video(batch=2, frames=T, size=32)).embeds.square().sum().backward()
    for p in (
        model.function_prompts.frame_position,
        model.function_prompts.tokens,
        model.local_prompts.tokens,
    ):
        assert p.requires_grad and p.grad is not None and p.grad.abs().min() > 0
    with pytest.raises(ValueError, match=f"clips of {T} frames .data.num_frames., this clip has {T + 1}"):
        model(make_video(batch=1, frames=T + 1, size=32))


# -- parameter counts (ViT-B/32, 12 frames) --------------------------------------------------------------


def test_vop_parameter_counts_on_vit_b32(model_cfg):
    """Counts from the formulas of the paper's forms (docs/fidelity.md V3, V5-V9), next to Table 1."""
    L, D, Dt, frames, K, P, Ks = 12, 768, 512, 12, 8, 4, 8
    H = D  # context_prompts.hidden: -1
    text = L * K * Dt
    lstm = 2 * (4 * H * (D + H) + 2 * 4 * H)  # two directions: input and hidden weights, two biases
    fc = 2 * H * P * D + P * D
    position = frames * D
    expected = {
        "vop": text + L * K * D,
        "vop_p": text + L * (K - P + frames * P) * D,
        "vop_c": text + L * (K - P) * D + lstm + fc,
        "vop_f": text + Ks * K * D + (L - Ks) * K * D + position,
        "vop_fp": text + Ks * (K - P + frames * P) * D + (L - Ks) * K * D + position,
        "vop_fc": text + Ks * (K - P) * D + lstm + fc + (L - Ks) * K * D + position,
    }
    config = tiny_clip_config(
        width=D,
        layers=L,
        patch_size=32,
        image_size=224,
        heads=12,
        text_width=Dt,
        text_layers=L,
        projection_dim=512,
    )
    with torch.device("meta"):
        clip = freeze(CLIPModel(config))
        for preset, count in expected.items():
            model = STOPVideoModel(model_cfg(preset), clip, num_frames=frames)
            assert model.trainable_parameter_count()[0] == count, preset
            model.remove_hooks()
    full = 119.8e6  # Table 1's 100%
    assert round(100 * expected["vop"] / full, 3) == 0.103
    assert (
        round(100 * (expected["vop_f"] - position) / full, 3) == 0.103
    )  # the paper leaves the embedding out
    assert round(100 * (expected["vop_fp"] - position) / full, 3) == 0.328
    assert round(expected["vop_c"] / 1e6, 1) == 14.3


# -- position-specific (VoP-P) and the presets together -----------------------------------------------------


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
            "model.context_prompts works with the model's own local prompt slots",
        ),
        (
            ("local_prompts.per_frame=false", "shared_latent=linear", "function_prompts.enabled=true"),
            "model.function_prompts works with the model's own local prompt slots",
        ),
        (("context_prompts.enabled=true",), "context_prompts and model.local_prompts.per_frame both"),
        (
            ("local_prompts.per_frame=false", "context_prompts.enabled=true", "context_prompts.num_tokens=9"),
            "context_prompts.num_tokens = 9: expected 1..8",
        ),
        (("function_prompts.enabled=true",), "split_layer = 8: expected 1..1 .the vision tower has 2 layers"),
        (
            (
                "function_prompts.enabled=true",
                "function_prompts.split_layer=1",
                "global_prompts.enabled=true",
            ),
            "set model.global_prompts.enabled=false",
        ),
        (
            (
                "function_prompts.enabled=true",
                "function_prompts.split_layer=1",
                "temporal.enabled=true",
                "temporal.num_tokens=8",
            ),
            "set model.temporal.enabled=false",
        ),
        (
            ("function_prompts.enabled=true", "function_prompts.split_layer=1", "local_prompts.depth=2"),
            "local_prompts.depth = 2: with model.function_prompts the local prompts serve layers 1..1",
        ),
    ],
)
def test_vop_parts_without_their_slots_fail_with_the_key(tiny_clip, model_cfg, overrides, match):
    cfg = model_cfg("vop_p", *overrides)
    with pytest.raises(ConfigError, match=match):
        STOPVideoModel(cfg, tiny_clip(width=32, layers=2, patch_size=16, image_size=32), num_frames=T)


def test_vop_presets_are_on_the_schema(model_cfg):
    for preset in ("vop", "vop_p", "vop_c", "vop_f", "vop_fc", "vop_fp"):
        cfg = model_cfg(preset)
        assert OmegaConf.select(cfg, "local_prompts.num_tokens") == 8
        assert (cfg.text_prompts.prefix, cfg.text_prompts.postfix) == (4, 4)
