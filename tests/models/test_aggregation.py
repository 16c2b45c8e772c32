"""Video aggregation: the MSA block starts as the identity, outputs pick the right tokens, the meanP head."""

from __future__ import annotations

import pytest
import torch

from stop_lightning.models.aggregation import VideoAggregator
from stop_lightning.schema import AggregationConfig, ConfigError

B, T, K, G, E = 2, 4, 3, 2, 16


def inputs():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(B, T, E, generator=g),
        torch.randn(B, T, K, E, generator=g),
        torch.randn(B, G, E, generator=g),
    )


@pytest.mark.parametrize("output", ["global_prompt0", "global_mean", "mean_cls", "global_and_cls"])
def test_fresh_block_is_identity_and_outputs_pick_their_tokens(output):
    frames, prompts, globals_ = inputs()
    agg = VideoAggregator(AggregationConfig(output=output, msa=True, msa_layers=2), E, T, has_global=True)
    expected = {
        "global_prompt0": globals_[:, 0],
        "global_mean": globals_.mean(1),
        "mean_cls": frames.mean(1),
        "global_and_cls": 0.5 * (globals_.mean(1) + frames.mean(1)),
    }[output]
    torch.testing.assert_close(agg(frames, prompts, globals_), expected)


def test_trained_block_mixes_frames_in_order():
    frames, prompts, globals_ = inputs()
    agg = VideoAggregator(AggregationConfig(output="mean_cls", msa=True), E, T, has_global=True)
    with torch.no_grad():
        for p in agg.blocks[0].attn.out_proj.parameters():
            p.normal_()
    forward = agg(frames, prompts, globals_)
    backward = agg(frames.flip(1), prompts.flip(1), globals_)
    assert (forward - backward).abs().max() > 1e-4  # frame positions make it order-aware
    with pytest.raises(ValueError, match="at most 4 frames"):
        agg(torch.randn(B, T + 1, E))


def test_meanp_head_starts_as_identity_and_is_order_invariant():
    frames, _, _ = inputs()
    agg = VideoAggregator(AggregationConfig(output="mean_cls", msa=False, head=True), E, T, has_global=False)
    assert sum(p.numel() for p in agg.parameters()) == E * E + E
    torch.testing.assert_close(agg(frames), frames.mean(1))
    torch.testing.assert_close(agg(frames.flip(1)), agg(frames))


def test_global_output_without_global_prompts_is_a_config_error():
    with pytest.raises(ConfigError, match="global_prompts.enabled is false"):
        VideoAggregator(AggregationConfig(output="global_mean"), E, T, has_global=False)
