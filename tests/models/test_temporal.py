"""Temporal prompts: frame variation on hand-made clips, the generator's shapes, soft and hard insertion."""

from __future__ import annotations

import pytest
import torch

from stop_lightning.models.temporal import (
    FrameVariation,
    TemporalPrompter,
    TemporalPromptGenerator,
    minmax_normalize,
    weight_temporal_prompts,
)
from stop_lightning.schema import TemporalPromptConfig

B, T, N, D = 2, 6, 16, 32


def tokens_of(frames: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(frames, dim=1)  # T x [B, N, D] -> [B, T, N, D]


def test_static_frames_have_zero_variation():
    frame = torch.randn(B, N, D)
    w = FrameVariation(TemporalPromptConfig(variation="similarity"))(tokens_of([frame] * T))
    assert w.shape == (B, T)
    assert torch.equal(w, torch.zeros(B, T))


@pytest.mark.parametrize("cut", [2, 3, 5])
def test_scene_cut_gets_the_largest_variation(cut):
    g = torch.Generator().manual_seed(cut)
    a, b = torch.randn(B, N, D, generator=g), torch.randn(B, N, D, generator=g)
    jitter = [0.01 * torch.randn(B, N, D, generator=g) for _ in range(T)]
    frames = [(a if t < cut else b) + jitter[t] for t in range(T)]
    w = FrameVariation(TemporalPromptConfig(variation="similarity"))(tokens_of(frames))
    assert (w.argmax(1) == cut).all()
    assert torch.allclose(w.amax(1), torch.ones(B)) and torch.allclose(w.amin(1), torch.zeros(B))


def test_first_frame_takes_the_second_frames_value():
    frames = [torch.randn(1, N, D) for _ in range(T)]
    raw = FrameVariation(TemporalPromptConfig(variation="similarity")).raw(tokens_of(frames))
    assert raw[0, 0] == raw[0, 1]


def test_video_vs_batch_normalisation():
    w = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]])
    assert torch.allclose(minmax_normalize(w, "video"), torch.tensor([[0.0, 0.5, 1.0]] * 2))
    assert torch.allclose(minmax_normalize(w, "batch"), w / 12)


def test_reference_variation_is_learned_and_uses_the_spatial_mask():
    var = FrameVariation(TemporalPromptConfig(variation="reference", normalize="batch"))
    tokens = torch.randn(B, T, N, D, requires_grad=True)
    mask = torch.zeros(B, T, N)
    mask[:, :, :3] = 1
    w = var(tokens, tokens, mask)
    assert w.shape == (B, T) and w.min() == 0 and w.max() == 1
    assert not torch.allclose(var.raw(tokens, tokens, mask), var.raw(tokens, tokens, None))
    w.square().sum().backward()
    assert var.conv.weight.grad is not None


def test_generator_shapes_follow_the_config():
    cfg = TemporalPromptConfig(num_tokens=3, conv_channels=2, conv_kernel=[3, 5, 7])
    gen = TemporalPromptGenerator(cfg, width=128, num_patches=N)
    assert gen.attn.num_heads == 2  # D / 64
    q, attended = gen(torch.randn(B, T, N, 128))
    assert q.shape == (B, T, 3, 128) and attended.shape == (B, T, N, 128)
    assert gen.patch_mlp[0].in_features == N
    with pytest.raises(ValueError, match="built for 16 patches"):
        gen(torch.randn(B, T, 49, 128))
    with pytest.raises(ValueError, match="odd"):
        TemporalPromptGenerator(TemporalPromptConfig(conv_kernel=[3, 4, 5]), width=32, num_patches=N)


def test_soft_insertion_scales_by_one_plus_w():
    q = torch.ones(1, 3, 2, 4)
    w = torch.tensor([[0.0, 0.5, 1.0]])
    out = weight_temporal_prompts(q, w, "soft")
    assert out[0, :, 0, 0].tolist() == [1.0, 1.5, 2.0]


def test_hard_insertion_puts_prompts_only_in_the_top_m_frames():
    q = torch.randn(B, T, 4, D)
    w = torch.rand(B, T)
    out = weight_temporal_prompts(q, w, "hard", top_m=2)
    has_prompt = out.abs().sum((2, 3)) > 0  # [B, T]
    top = torch.zeros(B, T, dtype=torch.bool).scatter_(1, w.topk(2, dim=1).indices, True)
    assert torch.equal(has_prompt, top)


def test_prompter_returns_alpha_scaled_prompts_and_weights():
    cfg = TemporalPromptConfig(num_tokens=4, alpha=0.05, conv_kernel=[3, 5, 5], conv_channels=2)
    prompter = TemporalPrompter(cfg, width=D, num_patches=N)
    # The generator's output layer starts at zero (q = 0 at step 0); give it weights so the
    # weighting below is checked on non-zero prompts.
    torch.manual_seed(0)
    torch.nn.init.normal_(prompter.generator.patch_mlp[-1].weight)
    torch.nn.init.normal_(prompter.generator.patch_mlp[-1].bias)
    tokens = torch.randn(B, T, N, D)
    prompts, w = prompter(tokens)
    q, _ = prompter.generator(tokens)
    assert q.abs().min() > 0 and w.min() == 0 and w.max() == 1  # frames with w = 0 and w = 1 both occur
    expected = torch.empty_like(q)
    for b in range(B):  # alpha * q_t * (1 + w_t), frame by frame
        for t in range(T):
            expected[b, t] = 0.05 * q[b, t] * (1.0 + float(w[b, t]))
    torch.testing.assert_close(prompts, expected)
    assert torch.equal(prompter.last_weights, w)


def test_generator_starts_at_zero_and_gets_a_gradient():
    gen = TemporalPromptGenerator(TemporalPromptConfig(num_tokens=2, conv_kernel=[3, 3, 3]), 32, 4)
    tokens = torch.randn(2, 3, 4, 32)
    q, _ = gen(tokens)
    assert q.shape == (2, 3, 2, 32) and torch.count_nonzero(q) == 0  # stock CLIP + local prompts at step 0
    (q * torch.randn_like(q)).sum().backward()
    assert gen.patch_mlp[-1].weight.grad.abs().sum() > 0
