"""stop_official: the authors' released prompt module, checked against facts read from their code.

Each test restates one fact of docs/fidelity.md and checks it against an independent computation
written here (NumPy, or plain functional torch following the authors' order of operations).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stop_lightning.models.hooks import vision_parts
from stop_lightning.models.official import (
    OfficialWeightsError,
    load_official_prompt_weights,
    official_state_dict,
    official_target,
)
from stop_lightning.models.spatial import (
    ReferenceScorer,
    ReferenceSpatialGenerator,
    SpatialPrompter,
    cells_to_pixels,
    num_kept_patches,
    pool_to_cells,
    strict_threshold_mask,
    topk_patch_mask,
)
from stop_lightning.models.temporal import FrameVariation, TemporalPrompter, TemporalPromptGenerator
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.schema import SpatialPromptConfig, TemporalPromptConfig

FRAMES = 3


def official(model_cfg):
    return model_cfg("stop_official")


# -- 4. the mask threshold ------------------------------------------------------------------------


def test_constant_frame_keeps_no_cell_official_and_six_under_stop():
    """ViT-B/32 sizes: 7 x 7 cells of 32 px. A zero scorer conv makes every cell score the bias."""
    k = num_kept_patches(6 / 49, 49)
    assert k == 6
    scorer = ReferenceScorer(7, "lattice")
    with torch.no_grad():
        scorer.conv.weight.zero_()
    scores = scorer(torch.randn(1, 2, 3, 224, 224), None)  # [1, 2, 49], all equal
    assert scores.shape == (1, 2, 49) and torch.all(scores == scores[0, 0, 0])
    assert strict_threshold_mask(scores, k).sum((0, 2)).tolist() == [0, 0]  # stop_official
    assert topk_patch_mask(scores, k).sum((0, 2)).tolist() == [6, 6]  # stop


@pytest.mark.parametrize("seed", range(6))
def test_strict_threshold_keeps_the_cells_above_the_seventh_score(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (2, 3, 49), generator=g).float()  # many ties
    got = strict_threshold_mask(scores, 6).numpy()
    for b in range(2):
        for t in range(3):
            row = scores[b, t].numpy()
            bar = np.sort(row)[::-1][6]
            np.testing.assert_array_equal(got[b, t], (row > bar).astype(np.float32))
            assert got[b, t].sum() <= 6


# -- 3 and 5. lattice pooling and the pixel mask ------------------------------------------------------


@pytest.mark.parametrize("grid, patch", [(7, 32), (4, 16), (3, 5), (2, 1), (5, 3)])
def test_pooling_into_cells_matches_numpy(grid, patch):
    x = torch.randn(2, grid * patch, grid * patch, generator=torch.Generator().manual_seed(grid * patch))
    lattice = pool_to_cells(x, grid, "lattice").numpy()
    block = pool_to_cells(x, grid, "patch").numpy()
    xn = x.numpy()
    for i in range(grid):
        for j in range(grid):
            # lattice: the pixels with h mod g = i and w mod g = j
            np.testing.assert_allclose(
                lattice[:, i, j], xn[:, i::grid, j::grid].mean((1, 2)), rtol=1e-5, atol=1e-6
            )
            # patch: the P x P block of patch (i, j)
            want = xn[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].mean((1, 2))
            np.testing.assert_allclose(block[:, i, j], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid, patch", [(7, 32), (4, 16), (3, 5)])
def test_pixel_mask_layouts_match_numpy(grid, patch):
    mask = (torch.rand(2, 3, grid, grid, generator=torch.Generator().manual_seed(grid)) > 0.6).float()
    lattice = cells_to_pixels(mask, patch, "lattice").numpy()
    block = cells_to_pixels(mask, patch, "block").numpy()
    H = grid * patch
    m = mask.numpy()
    h, w = np.arange(H)[:, None], np.arange(H)[None, :]
    np.testing.assert_array_equal(lattice, m[:, :, h % grid, w % grid])
    np.testing.assert_array_equal(block, m[:, :, h // patch, w // patch])


# -- 1 and 2. the generator ------------------------------------------------------------------------


def test_official_generator_kernels_and_no_first_activation():
    gen = ReferenceSpatialGenerator(SpatialPromptConfig(first_activation=False, output_dropouts=2))
    convs = [m for m in gen.convs if isinstance(m, torch.nn.Conv3d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 9, (3, 11, 11)),
        (9, 9, (3, 11, 11)),
        (9, 9, (3, 11, 11)),
        (9, 16, (3, 11, 11)),
    ]
    kinds = [type(m).__name__ for m in gen.convs]
    assert kinds == ["Conv3d", "Identity", "Conv3d", "PReLU", "Conv3d", "PReLU", "Conv3d"]
    stop = ReferenceSpatialGenerator(SpatialPromptConfig())
    assert type(stop.convs[1]).__name__ == "PReLU"


def zero_fraction(output_dropouts: int) -> float:
    torch.manual_seed(0)
    gen = ReferenceSpatialGenerator(
        SpatialPromptConfig(output_dropouts=output_dropouts, hidden_channels=4, conv_channels=3)
    )
    p = gen.train()(torch.randn(1, 4, 3, 24, 24))  # 6912 prompt values
    return (p == 0).float().mean().item()


def test_training_zeroes_three_quarters_of_the_official_prompt():
    # Dropout 0.5 applied twice after the MLP: a value survives both with probability 1/4.
    assert zero_fraction(2) == pytest.approx(0.75, abs=0.03)
    # stop drops the conv features before the MLP only: the MLP's bias refills them, no zeros.
    assert zero_fraction(0) < 0.01


def test_official_survivors_are_scaled_by_four():
    torch.manual_seed(0)
    gen = ReferenceSpatialGenerator(
        SpatialPromptConfig(output_dropouts=2, hidden_channels=4, conv_channels=3)
    ).train()
    inputs = []
    gen.dropout.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    p = gen(torch.randn(1, 2, 3, 16, 16))
    assert len(inputs) == 3  # once before the MLP (as stop), twice after it
    mlp_out = inputs[1]
    kept = p != 0
    torch.testing.assert_close(p[kept], 4 * mlp_out[kept])


# -- 6, 7, 8. the temporal module ------------------------------------------------------------------


def official_temporal_cfg(**kw) -> TemporalPromptConfig:
    base = dict(
        variation="reference", normalize="batch", out_conv="full", attention_residual=False, zero_init=False
    )
    return TemporalPromptConfig(**{**base, **kw})


def test_official_temporal_kernels():
    gen = TemporalPromptGenerator(official_temporal_cfg(), width=64, num_patches=49)
    assert gen.conv_in.weight.shape == (9, 1, 3, 15, 25)
    assert gen.conv_out.weight.shape == (1, 9, 3, 15, 25)  # stop: (1, 9, 1, 1, 1)
    assert [tuple(m.weight.shape) for m in gen.patch_mlp if isinstance(m, torch.nn.Linear)] == [
        (16, 49),
        (4, 16),
    ]
    assert gen.attn.num_heads == 1 and gen.patch_mlp[-1].weight.abs().sum() > 0  # no zero-init
    assert FrameVariation(official_temporal_cfg()).conv.weight.shape == (1, 1, 5, 11, 11)
    stop = TemporalPromptGenerator(TemporalPromptConfig(), width=64, num_patches=49)
    assert stop.conv_out.weight.shape == (1, 9, 1, 1, 1) and stop.patch_mlp[-1].weight.abs().sum() == 0


@pytest.mark.parametrize("residual", [False, True])
def test_attention_residual_switch(residual):
    torch.manual_seed(0)
    gen = TemporalPromptGenerator(
        official_temporal_cfg(attention_residual=residual, conv_kernel=[3, 3, 3]), 32, 4
    )
    tokens = torch.randn(2, 3, 4, 32)
    _, attended = gen(tokens)
    x = tokens.reshape(2, 12, 32)
    mixed = gen.attn(x, x, x)[0].view(2, 3, 4, 32)
    torch.testing.assert_close(attended, mixed + tokens if residual else mixed)


def test_official_frame_weights_are_min_max_over_the_whole_batch():
    torch.manual_seed(0)
    var = FrameVariation(official_temporal_cfg())
    tokens = torch.randn(3, 5, 16, 32)
    mask = (torch.rand(3, 5, 16) > 0.5).float()
    raw = var.raw(tokens, tokens, mask).detach().numpy()
    want = (raw - raw.min()) / (raw.max() - raw.min())
    got = var(tokens, tokens, mask).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.min() == 0 and got.max() == pytest.approx(1)
    assert sum(np.isclose(row.max(), 1) for row in got) == 1  # one 1 in the batch, not one per video
    # A clip's weights depend on its batch-mates.
    other = tokens.clone()
    other[2] = 5 * torch.randn(5, 16, 32)
    assert not torch.allclose(var(other, other, mask)[0], var(tokens, tokens, mask)[0])


# -- the whole module against a plain re-computation from the authors' order of operations --------


def authors_spatial(sd: dict, x: torch.Tensor, patch: int, grid: int, k: int = 6, alpha: float = 0.05):
    """Eval mode. ``x [B, T, 3, H, W]`` -> (pixel prompt delta, cell mask [B, T, g, g])."""
    B, T, _, H, W = x.shape
    pad = (1, 5, 5)
    h = x.permute(0, 2, 1, 3, 4)
    h = F.conv3d(h, sd["Conv.0.weight"], sd["Conv.0.bias"], padding=pad)
    h = F.conv3d(h, sd["Conv.1.weight"], sd["Conv.1.bias"], padding=pad)
    h = F.prelu(h, sd["Conv.2.weight"])
    h = F.conv3d(h, sd["Conv.3.weight"], sd["Conv.3.bias"], padding=pad)
    h = F.prelu(h, sd["Conv.4.weight"])
    h = F.conv3d(h, sd["Conv.5.weight"], sd["Conv.5.bias"], padding=pad)
    h = h.permute(0, 2, 3, 4, 1)
    h = F.linear(
        F.prelu(F.linear(h, sd["MLP.0.weight"], sd["MLP.0.bias"]), sd["MLP.1.weight"]),
        sd["MLP.2.weight"],
        sd["MLP.2.bias"],
    )
    p = h.permute(0, 1, 4, 2, 3)
    s = F.conv3d(
        x.permute(0, 2, 1, 3, 4), sd["Cal_Net.weight"], sd["Cal_Net.bias"], padding=(2, 5, 5)
    ).squeeze(1)
    s = s.reshape(B, T, patch, grid, patch, grid).mean(dim=(2, 4))
    bar = s.reshape(B, T, -1).sort(dim=2, descending=True)[0][:, :, k]
    m = s > bar[:, :, None, None]
    pixels = m.unsqueeze(2).unsqueeze(4).repeat(1, 1, patch, 1, patch, 1).reshape(B, T, H, W).unsqueeze(2)
    return p * alpha + p * pixels * alpha, m


def authors_temporal(
    sd: dict, tokens: torch.Tensor, cell_mask: torch.Tensor, heads: int, alpha: float = 0.05
):
    """Eval mode. ``tokens [B, T, N, D]``, ``cell_mask [B, T, g, g]`` -> (prompts [B, T, 4, D], w [B, T])."""
    B, T, N, D = tokens.shape
    x = tokens.reshape(B, T * N, D).permute(1, 0, 2)
    x = F.multi_head_attention_forward(
        x,
        x,
        x,
        D,
        heads,
        sd["Attention.in_proj_weight"],
        sd["Attention.in_proj_bias"],
        None,
        None,
        False,
        0.0,
        sd["Attention.out_proj.weight"],
        sd["Attention.out_proj.bias"],
        training=False,
        need_weights=False,
    )[0]
    x = x.permute(1, 0, 2).reshape(B, T, N, D).unsqueeze(1)
    c = F.conv3d(x, sd["Cal_Net_Inter.weight"], sd["Cal_Net_Inter.bias"], padding=(2, 5, 5)).squeeze(1)
    c = c + c * cell_mask.reshape(B, T, -1).unsqueeze(3).float()
    w = c.mean(dim=(2, 3))
    w = (w - w.min()) / (w.max() - w.min())
    pad = (1, 7, 12)
    v = F.conv3d(x, sd["InterConv.0.weight"], sd["InterConv.0.bias"], padding=pad)
    v = F.conv3d(
        F.prelu(v, sd["InterConv.1.weight"]), sd["InterConv.2.weight"], sd["InterConv.2.bias"], padding=pad
    )
    v = v.squeeze(1).permute(0, 1, 3, 2)
    v = F.linear(
        F.prelu(F.linear(v, sd["InterMLP.0.weight"], sd["InterMLP.0.bias"]), sd["InterMLP.1.weight"]),
        sd["InterMLP.2.weight"],
        sd["InterMLP.2.bias"],
    )
    v = v.permute(0, 1, 3, 2)
    return alpha * (v + v * w[:, :, None, None]), w


def authors_state_dict(model: STOPVideoModel, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Fresh random tensors under the authors' key names, with the shapes the model's CLIP implies."""
    g = torch.Generator().manual_seed(seed)
    return {
        prefix + k: 0.1 * torch.randn(v.shape, generator=g) for k, v in official_state_dict(model).items()
    }


AUTHORS_KEYS = {
    "Conv.0.weight",
    "Conv.0.bias",
    "Conv.1.weight",
    "Conv.1.bias",
    "Conv.2.weight",
    "Conv.3.weight",
    "Conv.3.bias",
    "Conv.4.weight",
    "Conv.5.weight",
    "Conv.5.bias",
    "MLP.0.weight",
    "MLP.0.bias",
    "MLP.1.weight",
    "MLP.2.weight",
    "MLP.2.bias",
    "Cal_Net.weight",
    "Cal_Net.bias",
    "Attention.in_proj_weight",
    "Attention.in_proj_bias",
    "Attention.out_proj.weight",
    "Attention.out_proj.bias",
    "InterConv.0.weight",
    "InterConv.0.bias",
    "InterConv.1.weight",
    "InterConv.2.weight",
    "InterConv.2.bias",
    "InterMLP.0.weight",
    "InterMLP.0.bias",
    "InterMLP.1.weight",
    "InterMLP.2.weight",
    "InterMLP.2.bias",
    "Cal_Net_Inter.weight",
    "Cal_Net_Inter.bias",
}


def test_converter_round_trips_the_authors_key_names(tiny_clip, model_cfg):
    model = STOPVideoModel(official(model_cfg), tiny_clip(), num_frames=FRAMES)
    assert set(official_state_dict(model)) == AUTHORS_KEYS
    theirs = authors_state_dict(model, seed=1, prefix="module.visual.prompt.")
    theirs["module.visual.prompt.Conv.0.weight_extra"] = torch.zeros(1)
    theirs["module.clip.visual.conv1.weight"] = torch.zeros(3)
    theirs["module.visual.prompt.Cal_Net.weight"] = torch.zeros(1, 3, 5, 11, 13)  # wrong shape
    report = load_official_prompt_weights(model, theirs, partial=True)
    assert len(report.loaded) == len(AUTHORS_KEYS) - 1
    assert set(report.unplaced) == {
        "module.visual.prompt.Conv.0.weight_extra",
        "module.clip.visual.conv1.weight",
        "module.visual.prompt.Cal_Net.weight",
    }
    assert "shape" in report.unplaced["module.visual.prompt.Cal_Net.weight"]
    assert report.missing == ["spatial.scorer.conv.weight"]
    back = official_state_dict(model)
    for key, tensor in back.items():
        if key != "Cal_Net.weight":
            assert torch.equal(tensor, theirs["module.visual.prompt." + key]), key
    assert "could not place 3 keys" in report.summary()


@pytest.mark.parametrize(
    "change, named",
    [
        ("missing", ["temporal.generator.patch_mlp.2.bias (not given: the authors' InterMLP.2.bias)"]),
        ("extra", ["Conv.0.weight_extra (the model has no spatial.generator.convs.0.weight_extra)"]),
        ("shape", ["Cal_Net.weight (shape (1, 3, 5, 11, 13), the model's spatial.scorer.conv.weight is"]),
    ],
)
def test_strict_load_refuses_a_partial_load_in_one_line(tiny_clip, model_cfg, change, named):
    model = STOPVideoModel(official(model_cfg), tiny_clip(), num_frames=FRAMES)
    before = {k: v.clone() for k, v in official_state_dict(model).items()}
    theirs = authors_state_dict(model, seed=1, prefix="module.visual.prompt.")
    theirs["module.clip.visual.conv1.weight"] = torch.zeros(3)  # outside the prompt module: ignored
    if change == "missing":
        del theirs["module.visual.prompt.InterMLP.2.bias"]
    elif change == "extra":
        theirs["module.visual.prompt.Conv.0.weight_extra"] = torch.zeros(1)
    else:
        theirs["module.visual.prompt.Cal_Net.weight"] = torch.zeros(1, 3, 5, 11, 13)
    with pytest.raises(OfficialWeightsError) as err:
        load_official_prompt_weights(model, theirs)
    message = str(err.value)
    assert "\n" not in message
    for part in named:
        assert part in message
    assert "partial=True" in message and "conv1" not in message
    after = official_state_dict(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused load copied tensors"
    report = load_official_prompt_weights(model, theirs, partial=True)  # asked for: what fits is loaded
    assert len(report.loaded) == len(AUTHORS_KEYS) - (change != "extra")


def test_strict_load_of_the_whole_prompt_module_ignores_the_rest(tiny_clip, model_cfg):
    model = STOPVideoModel(official(model_cfg), tiny_clip(), num_frames=FRAMES)
    theirs = authors_state_dict(model, seed=2)
    theirs["clip.visual.conv1.weight"] = torch.zeros(3)
    report = load_official_prompt_weights(model, theirs)
    assert len(report.loaded) == len(AUTHORS_KEYS) and not report.missing
    assert list(report.unplaced) == ["clip.visual.conv1.weight"]


def test_converter_names_what_a_stop_model_cannot_take(tiny_clip, model_cfg):
    official_model = STOPVideoModel(official(model_cfg), tiny_clip(), num_frames=FRAMES)
    stop = STOPVideoModel(model_cfg("stop", "spatial.scorer=attention"), tiny_clip(), num_frames=FRAMES)
    report = load_official_prompt_weights(stop, authors_state_dict(official_model, seed=0), partial=True)
    assert "model.preset=stop_official" in report.unplaced["Cal_Net.weight"]
    assert "shape" in report.unplaced["InterConv.2.weight"]  # stop's second conv is 1x1x1
    assert official_target("a.b.Attention.out_proj.weight") == "temporal.generator.attn.out_proj.weight"
    assert official_target("Conv.1.bias") == "spatial.generator.convs.2.bias"
    assert official_target("transformer.resblocks.0.attn.in_proj_weight") is None


def test_loaded_model_computes_the_authors_module(tiny_clip, model_cfg, make_video):
    """Eval mode: the prompted frames and the inter-frame prompts equal a plain re-computation."""
    clip = tiny_clip()
    cfg = official(model_cfg)
    model = STOPVideoModel(cfg, clip, num_frames=FRAMES).eval()
    sd = authors_state_dict(model, seed=3)
    assert not load_official_prompt_weights(model, sd).unplaced
    parts = vision_parts(clip)
    grid = parts.embeddings.image_size // parts.embeddings.patch_size
    patch = parts.embeddings.patch_size
    video = make_video(batch=2, frames=FRAMES, size=parts.embeddings.image_size, seed=4)
    k = num_kept_patches(cfg.spatial.topk_ratio, grid * grid)
    spatial: SpatialPrompter = model.spatial
    with torch.no_grad():
        delta, mask = spatial(video, None)
        want_delta, want_mask = authors_spatial(sd, video, patch, grid, k)
        torch.testing.assert_close(mask.bool(), want_mask)
        # Four stacked (3, 11, 11) convolutions (ours channels-last, a different oneDNN kernel) round
        # differently from these:
        # measured max |diff| / max |want| 2.2e-6 to 3.6e-6 over 6 seeds x 1-2 threads (values up to
        # ~12), so the absolute bound scales with the output; a wrong formula is off by O(1) of it.
        torch.testing.assert_close(delta, want_delta, rtol=1e-4, atol=2e-5 * want_delta.abs().max().item())
        tokens = torch.randn(2, FRAMES, grid * grid, model.width)
        temporal: TemporalPrompter = model.temporal
        prompts, w = temporal(tokens, mask.flatten(2))
        want_prompts, want_w = authors_temporal(
            sd, tokens, want_mask, heads=temporal.generator.attn.num_heads
        )
        torch.testing.assert_close(w, want_w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(prompts, want_prompts, rtol=1e-4, atol=1e-5)


def test_outputs_are_a_deterministic_function_of_the_weights(tiny_clip, model_cfg, make_video):
    cfg = official(model_cfg)
    a = STOPVideoModel(cfg, tiny_clip(), num_frames=FRAMES)
    torch.manual_seed(123)  # a different initialisation, then the same authors' weights
    b = STOPVideoModel(cfg, tiny_clip(), num_frames=FRAMES)
    sd = authors_state_dict(a, seed=5)
    load_official_prompt_weights(a, sd)
    load_official_prompt_weights(b, sd)
    b.load_state_dict(
        {k: v for k, v in a.state_dict().items() if not k.startswith(("spatial.", "temporal."))}, strict=False
    )
    video = make_video(batch=2, frames=FRAMES, seed=6)
    with torch.no_grad():
        first, again, other = a.eval()(video), a(video), b.eval()(video)
    assert torch.equal(first.embeds, again.embeds)
    torch.testing.assert_close(first.embeds, other.embeds)
    torch.testing.assert_close(first.frame_weights, other.frame_weights)


def flat(cfg, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if hasattr(value, "items"):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_difference_from_stop_is_a_named_key(model_cfg):
    stop, official_cfg = flat(model_cfg("stop")), flat(model_cfg("stop_official"))
    differ = {k for k in stop if stop[k] != official_cfg[k]}
    assert differ == {
        "spatial.first_activation",
        "spatial.output_dropouts",
        "spatial.scorer",
        "spatial.score_pooling",
        "spatial.threshold",
        "spatial.mask_layout",
        "temporal.attention_residual",
        "temporal.out_conv",
        "temporal.variation",
        "temporal.normalize",
        "temporal.zero_init",
        "shared_latent",
        "aggregation.output",
        "aggregation.msa",
    }
