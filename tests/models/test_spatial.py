"""Spatial prompts: generators, both region scorers on a moving square, and the patch-embedding hook."""

from __future__ import annotations

import pytest
import torch

from stop_lightning.models.hooks import HookSet, vision_parts
from stop_lightning.models.spatial import (
    AttentionScorer,
    FastSpatialGenerator,
    ReferenceScorer,
    ReferenceSpatialGenerator,
    SpatialPrompter,
    num_kept_patches,
    temporal_patch_variation,
    topk_patch_mask,
)
from stop_lightning.schema import SpatialPromptConfig

P, SIZE, FRAMES = 16, 64, 4
GRID = SIZE // P
ROW = 1  # the square moves along this patch row, one patch per frame


def moving_square(batch: int = 1) -> torch.Tensor:
    """Static random texture; a bright P x P square at patch (ROW, t) in frame t. ``[B, T, 3, H, W]``."""
    background = torch.randn(batch, 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    video = background.repeat(1, FRAMES, 1, 1, 1)
    for t in range(FRAMES):
        video[:, t, :, ROW * P : (ROW + 1) * P, t * P : (t + 1) * P] = 3.0
    return video


def untouched_patches() -> list[int]:
    return [r * GRID + c for r in range(GRID) for c in range(GRID) if r != ROW]


def patch_embeds(clip, video: torch.Tensor) -> torch.Tensor:
    conv = vision_parts(clip).embeddings.patch_embedding
    B, T = video.shape[:2]
    with torch.no_grad():
        e = conv(video.flatten(0, 1))  # [B*T, D, g, g]
    return e.flatten(2).transpose(1, 2).reshape(B, T, GRID * GRID, -1)


@pytest.mark.parametrize("generator", ["reference", "fast"])
def test_generators_keep_the_video_shape_and_depend_on_it(generator):
    cfg = SpatialPromptConfig()
    gen = ReferenceSpatialGenerator(cfg) if generator == "reference" else FastSpatialGenerator(cfg, 14)
    gen.eval()
    video = torch.randn(1, 3, 3, 28, 28)
    p = gen(video)
    assert p.shape == video.shape
    assert not torch.allclose(p, gen(video.flip(1)).flip(1))


def test_reference_generator_has_the_reference_layout():
    gen = ReferenceSpatialGenerator(SpatialPromptConfig())
    convs = [m for m in gen.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 9, (3, 11, 11)),
        (9, 9, (3, 11, 11)),
        (9, 9, (3, 11, 11)),
        (9, 16, (3, 11, 11)),
    ]
    assert gen.dropout.p == 0.5
    assert (gen.mlp.fc1.in_features, gen.mlp.fc1.out_features, gen.mlp.fc2.out_features) == (16, 16, 3)


def test_mask_size_follows_the_ratio():
    assert num_kept_patches(6 / 49, 49) == 6
    assert num_kept_patches(6 / 49, 16) == 2
    assert num_kept_patches(0.0, 16) == 1
    scores = torch.tensor([[[0.1, 0.9, 0.5, 0.2]]])
    assert topk_patch_mask(scores, 2).tolist() == [[[0.0, 1.0, 1.0, 0.0]]]


def test_static_patches_have_no_variation(tiny_clip):
    clip = tiny_clip(width=32, patch_size=P, image_size=SIZE)
    e = patch_embeds(clip, moving_square())
    v = temporal_patch_variation(e)  # [1, T, N]
    assert v[0, :, untouched_patches()].abs().max() < 1e-5
    assert v[0, 1, ROW * GRID + 1] > 0.1


def test_attention_scorer_puts_the_moving_square_in_the_mask(tiny_clip):
    clip = tiny_clip(width=32, patch_size=P, image_size=SIZE)
    video = moving_square()
    scores = AttentionScorer(vision_parts(clip))(video, patch_embeds(clip, video))
    mask = topk_patch_mask(scores, num_kept_patches(6 / 49, GRID * GRID))  # k = 2
    for t in range(FRAMES):
        assert mask[0, t, ROW * GRID + t] == 1, f"square patch missing from frame {t}'s mask"
    assert mask[0, :, untouched_patches()].sum() == 0


def test_reference_scorer_puts_the_moving_square_in_the_mask():
    scorer = ReferenceScorer(GRID, "patch")
    # Its random init carries no meaning (it never trains); give it a frame-difference kernel
    # to check the conv -> patch average -> top-k path.
    with torch.no_grad():
        scorer.conv.weight.zero_()
        scorer.conv.bias.zero_()
        scorer.conv.weight[0, :, 2] = 1.0  # frame t
        scorer.conv.weight[0, :, 1] = -1.0  # frame t-1
    video = moving_square()
    mask = topk_patch_mask(scorer(video, None), 1)
    for t in range(FRAMES):
        assert mask[0, t].nonzero().flatten().tolist() == [ROW * GRID + t]
    assert not any(p.requires_grad for p in scorer.parameters())


@pytest.mark.parametrize("generator", ["fast", "reference"])
def test_hook_equals_prompting_the_pixels(tiny_clip, generator):
    """embeddings(x) with the hook == embeddings(x + alpha*p + alpha*p*m) without it."""
    clip = tiny_clip(width=32, patch_size=P, image_size=SIZE)
    parts = vision_parts(clip)
    cfg = SpatialPromptConfig(generator=generator, alpha=0.5)
    prompter = SpatialPrompter(cfg, parts).eval()
    video = moving_square(batch=2)
    delta, mask = prompter(video, patch_embeds(clip, video))
    assert mask.shape == (2, FRAMES, GRID, GRID) and mask.sum(dim=(-1, -2)).eq(2).all()
    outside = (mask.repeat_interleave(P, -2).repeat_interleave(P, -1) == 0).unsqueeze(2).expand_as(delta)
    inside_ratio = (delta[~outside] ** 2).mean() / (delta[outside] ** 2).mean()
    assert 2.0 < inside_ratio < 6.0  # alpha*p*(1+m): twice the prompt inside the mask (4x the energy)

    with torch.no_grad():
        expected = parts.embeddings((video + delta).flatten(0, 1))
        hooks = HookSet()
        prompter.attach(parts, hooks, lambda: FRAMES)
        got = parts.embeddings(video.flatten(0, 1))
        hooks.remove()
        stock = parts.embeddings(video.flatten(0, 1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prompter.last_mask, mask)
    assert not torch.allclose(stock, got)
