"""The prompt path's whole-tensor rewrites (issue 29) against the formulas they replace, written out
here: the spatial prompt scaled per cell without a pixel mask, the layers' prompt slots and global
tokens written as ``hidden * keep + update``, and the per-shape layout cache."""

from __future__ import annotations

import pytest
import torch

from stop_lightning.models.layouts import LayoutCache, keep_factors
from stop_lightning.models.spatial import scale_by_cells
from stop_lightning.models.video_encoder import STOPVideoModel, _ForwardState

NO_TEXT = ("text_prompts.enabled=false", "adapter.enabled=false", "shared_latent=none")


@pytest.mark.parametrize("layout", ["block", "lattice"])
@pytest.mark.parametrize(("B", "T", "g", "P"), [(1, 1, 3, 5), (2, 3, 2, 4), (1, 2, 4, 1), (3, 1, 1, 7)])
def test_scale_by_cells_is_the_pixel_mask_product(layout, B, T, g, P):
    gen = torch.Generator().manual_seed(B * 100 + T * 10 + g)
    p = torch.randn(B, T, 3, g * P, g * P, generator=gen)
    mask = (torch.rand(B, T, g, g, generator=gen) > 0.5).float()
    alpha = 0.37
    # The old formula: a pixel mask [B, T, H, W] (each pixel looks its cell up), then alpha*p*(1+m).
    rows = torch.arange(g * P)
    cell = rows // P if layout == "block" else rows % g  # block: h // P; lattice: h mod g
    pixel_mask = mask[:, :, cell[:, None], cell[None, :]]  # [B, T, H, W]
    expected = alpha * p * (1 + pixel_mask.unsqueeze(2))
    got = scale_by_cells(p, (alpha * (1 + mask)).unsqueeze(2), P, layout)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()  # alpha and 2*alpha: exact scalings


def _old_write(hidden, slots, own, G, T, K, keep_globals):
    """The per-layer sequence surgery before: slice the frames out, concatenate CLS + slots + patches,
    then the global tokens (added to the carried ones, or replacing them) in front."""
    B = own.shape[0] if G else hidden.shape[0] // T
    D = hidden.shape[-1]
    frames = hidden[:, G:].reshape(B * T, -1, D) if G else hidden  # [B*T, S, D]
    if slots is not None:
        frames = torch.cat([frames[:, :1], slots.reshape(B * T, K, D), frames[:, 1 + K :]], dim=1)
    if not G:
        return frames
    globals_ = hidden[:, :G] + own if keep_globals else own
    return torch.cat([globals_, frames.reshape(B, -1, D)], dim=1)


@pytest.mark.parametrize("per_layer", ["add", "replace"])
@pytest.mark.parametrize(("B", "T", "extra"), [(1, 1, 0), (2, 3, 3), (3, 2, 1)])
def test_writing_prompts_equals_slicing_and_concatenating(tiny_clip, model_cfg, per_layer, B, T, extra):
    """Values and gradients (to the hidden states, the local prompt tokens, the global tokens), in a
    layer that writes slots and one past the slots' depth that only updates the globals; also without
    global prompts. ``extra`` pads the frame length beyond 1 + K + N (odd lengths)."""
    cfg = model_cfg(
        "dgl",
        *NO_TEXT,
        f"global_prompts.per_layer={per_layer}",
        "global_prompts.num_tokens=2",
        "local_prompts.depth=1",
    )
    for globals_on in (True, False):
        cfg.global_prompts.enabled = globals_on
        cfg.aggregation.output = "global_prompt0" if globals_on else "mean_cls"
        model = STOPVideoModel(cfg, tiny_clip(), num_frames=T).train()
        K, G, D = model.num_slots, model.num_global, model.width
        S = 1 + K + model.num_patches + extra
        for layer in (0, 1):
            if not G and layer >= model.slot_depth:
                continue  # nothing is written there
            gen = torch.Generator().manual_seed(layer + 10 * B + 100 * T)
            shape = (B, G + T * S, D) if G else (B * T, S, D)
            hidden = torch.randn(shape, generator=gen, requires_grad=True)
            model._state = _ForwardState(
                batch=B,
                frames=T,
                local=model.local_prompts().unbind(0),
                global_tokens=model.global_prompts.tokens.unbind(0) if G else None,
            )
            got = model._write_prompts(layer, hidden)
            slots = model._state.local[layer].expand(B, T, K, D) if layer < model.slot_depth else None
            own = model.global_prompts.tokens[layer].expand(B, G, D) if G else None
            keep_globals = per_layer == "add" and layer > 0
            expected = _old_write(hidden, slots, own, G, T, K, keep_globals)
            model._state = None
            assert got.shape == expected.shape
            assert (got - expected).abs().max() <= 1e-6
            upstream = torch.randn(shape, generator=gen)
            params = [hidden, model.local_prompts.tokens] + ([model.global_prompts.tokens] if G else [])
            g_new = torch.autograd.grad(got, params, upstream, allow_unused=True)
            g_old = torch.autograd.grad(expected, params, upstream, allow_unused=True)
            for a, b in zip(g_new, g_old):
                assert (a is None and b is None) or (a - b).abs().max() <= 1e-5


def test_the_layout_cache_is_keyed_by_shape_device_dtype_and_inference_mode():
    cache, built = LayoutCache(), []

    def get(G, T, S, K, dtype=torch.float32):
        build = keep_factors(G, T, S, K, True)
        return cache.get(
            ("keep", G, T, S, K), torch.device("cpu"), dtype, lambda d, t: built.append(1) or build(d, t)
        )

    first = get(1, 2, 5, 2)
    assert get(1, 2, 5, 2) is first and len(built) == 1  # built once
    # [G + T*S, 1]: the global kept, CLS and patches kept, the 2 slots after each CLS zeroed
    assert first.squeeze(-1).tolist() == [1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    other = get(1, 3, 5, 2)  # another T: its own, not the stale one
    assert other.shape == (16, 1) and len(built) == 2
    assert get(1, 2, 5, 2, torch.bfloat16).dtype == torch.bfloat16 and len(built) == 3
    with torch.inference_mode():
        inference = get(1, 2, 5, 2)
    assert inference is not first and len(built) == 4
    # The training-mode one still serves a backward after an inference-mode call.
    x = torch.randn(2, 11, 3, requires_grad=True)
    torch.addcmul(torch.zeros(2, 11, 3), x, get(1, 2, 5, 2)).sum().backward()
    assert x.grad[0, :, 0].tolist() == first.squeeze(-1).tolist()


def test_a_model_first_run_without_gradient_still_trains(tiny_clip, model_cfg, make_video):
    """Validation (inference mode) before the first training step: the cached layouts of one do not
    leak into the other."""
    model = STOPVideoModel(model_cfg("stop_fast", *NO_TEXT), tiny_clip(), num_frames=2)
    video = make_video(batch=1, frames=2)
    with torch.inference_mode():
        reference = model.eval()(video).embeds
    model.train()
    out = model(video).embeds
    out.sum().backward()
    assert model.global_prompts.tokens.grad is not None
    model.eval()
    with torch.no_grad():
        assert (model(video).embeds - reference).abs().max() <= 1e-6


def _block_attention_by_mask(query, key, value, G, T, S, scale):
    """The video block layout written out: a dense score matrix over ``[G globals, T frames of S]``,
    a frame's tokens seeing their own frame and the globals, the globals seeing everything."""
    L = G + T * S
    frame_of = torch.cat([torch.full((G,), -1), torch.arange(T).repeat_interleave(S)])  # [L]
    allowed = (frame_of[:, None] == frame_of[None, :]) | (frame_of[:, None] < 0) | (frame_of[None, :] < 0)
    scores = (query @ key.transpose(-1, -2)) * scale  # [B, H, L, L]
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1) @ value  # [B, H, L, d]
    assert allowed.shape == (L, L)
    return out.transpose(1, 2)  # [B, L, H, d], the layout HF's attention functions return


@pytest.mark.parametrize(
    ("B", "H", "G", "T", "S", "d"),
    [(2, 3, 2, 4, 5, 8), (1, 1, 1, 1, 1, 4), (3, 2, 0, 4, 5, 8), (1, 4, 3, 1, 7, 16), (2, 2, 1, 3, 1, 8)],
)
def test_video_block_attention_equals_the_masked_scores(B, H, G, T, S, d):
    """Values and gradients of the split-and-concatenate form against the dense masked formula, with
    awkward shapes: one frame, one token a frame, no globals, one head."""
    from stop_lightning.models.global_prompts import video_block_attention

    gen = torch.Generator().manual_seed(B + 10 * G + 100 * T + 1000 * S)
    L = G + T * S
    qkv = torch.randn(3, B, H, L, d, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(B, L, H, d, generator=gen, dtype=torch.float64)
    scale = d**-0.5
    got, _ = video_block_attention(None, *qkv, None, scaling=scale, video_blocks=(G, T, S))
    want = _block_attention_by_mask(*qkv, G, T, S, scale)
    assert got.shape == want.shape == (B, L, H, d)
    (grad_got,) = torch.autograd.grad(got, qkv, upstream)
    (grad_want,) = torch.autograd.grad(want, qkv, upstream)
    # float64 throughout: the two orders of summation agree to ~1e-15; 1e-10 leaves room and still
    # fails on any misplaced key (an error of order 1).
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad_got, grad_want, rtol=0, atol=1e-10)
