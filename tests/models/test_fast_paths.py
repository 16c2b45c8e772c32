"""The faster computations `make bench` led to give the same numbers as the plain ones they replace.

FFT convolution of the temporal prompts, patch projection as a matmul, channels-last spatial
generators, trimmed text padding, per-frame + global attention instead of a masked whole-video one.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stop_lightning.models.global_prompts import VIDEO_BLOCK_ATTENTION, restore_attention
from stop_lightning.models.hooks import HookSet, vision_parts
from stop_lightning.models.spatial import FastSpatialGenerator, ReferenceSpatialGenerator, patch_projection
from stop_lightning.models.temporal import FrameVariation, TemporalPromptGenerator, fft_conv3d
from stop_lightning.models.text_prompts import PromptedTextEncoder
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.schema import SpatialPromptConfig, TemporalPromptConfig


def _grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


@pytest.mark.parametrize("kernel", [(3, 5, 7), (1, 3, 3), (5, 1, 9)])
def test_fft_conv3d_equals_conv3d_with_gradients(kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 5, 7, 9, generator=g, requires_grad=True)
    w = torch.randn(3, 2, *kernel, generator=g, requires_grad=True)
    b = torch.randn(3, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 5, 7, 9, generator=g)
    direct = F.conv3d(x, w, b, padding=[k // 2 for k in kernel])
    (direct * target).sum().backward()
    expected = _grads(x, w, b)
    fft = fft_conv3d(x, w, b)
    (fft * target).sum().backward()
    torch.testing.assert_close(fft, direct, rtol=1e-4, atol=1e-4)
    for got, want in zip(_grads(x, w, b), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_temporal_generator_fft_equals_direct():
    torch.manual_seed(0)
    direct = TemporalPromptGenerator(
        TemporalPromptConfig(num_tokens=3, conv_channels=2, conv_kernel=[3, 5, 7], conv_impl="direct"),
        width=32,
        num_patches=16,
    )
    nn.init.normal_(direct.patch_mlp[-1].weight)  # a non-zero output layer, so q carries the conv's result
    fft = copy.deepcopy(direct)
    fft.conv_impl = "fft"
    tokens = torch.randn(2, 4, 16, 32, requires_grad=True)
    outs, grads = [], []
    for gen in (direct, fft):
        q, attended = gen(tokens)
        (q.square().sum() + attended.sum()).backward()
        outs.append(q.detach())
        grads.append([tokens.grad.clone()] + [p.grad.clone() for p in gen.parameters()])
        tokens.grad = None
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_reference_variation_fft_equals_direct():
    torch.manual_seed(0)
    cfg = TemporalPromptConfig(variation="reference", normalize="batch", conv_impl="direct")
    direct = FrameVariation(cfg)
    fft = copy.deepcopy(direct)
    fft.conv_impl = "fft"
    tokens, mask = torch.randn(2, 6, 16, 32), (torch.rand(2, 6, 16) > 0.5).float()
    torch.testing.assert_close(
        fft.raw(tokens, tokens, mask), direct.raw(tokens, tokens, mask), rtol=1e-4, atol=1e-5
    )


def test_unknown_conv_impl_is_rejected():
    with pytest.raises(ValueError, match="conv_impl"):
        TemporalPromptGenerator(TemporalPromptConfig(conv_impl="winograd"), width=32, num_patches=16)


def test_patch_projection_equals_the_patch_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=False)
    pixels = torch.randn(2, 3, 32, 32, requires_grad=True)
    target = torch.randn(2, 16, 4, 4)
    (conv(pixels) * target).sum().backward()
    expected = _grads(pixels)[0]
    out = patch_projection(pixels, conv)
    (out * target).sum().backward()
    torch.testing.assert_close(out, conv(pixels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grads(pixels)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "generator",
    [
        ReferenceSpatialGenerator(SpatialPromptConfig(hidden_channels=4, conv_channels=3)),
        FastSpatialGenerator(SpatialPromptConfig(hidden_channels=4, conv_channels=3), patch_size=8),
    ],
)
def test_channels_last_generators_match_contiguous_convs(generator):
    generator.eval()
    video = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        got = generator(video)
        x = video.transpose(1, 2).contiguous()
        if isinstance(generator, FastSpatialGenerator):
            x = F.avg_pool3d(x, (1, generator.pool, generator.pool))
        p = generator.mlp(generator.convs(x))
        if isinstance(generator, FastSpatialGenerator):
            p = F.interpolate(p.flatten(0, 1), size=(32, 32), mode="bilinear", align_corners=False).view_as(
                video
            )
    torch.testing.assert_close(got, p, rtol=1e-5, atol=1e-5)


def test_trimmed_padding_gives_the_same_text_features(tiny_clip, model_cfg):
    clip = tiny_clip(width=32, layers=1, text_width=32, text_layers=2)
    eos = clip.config.text_config.eos_token_id
    ids = torch.randint(1, eos - 1, (3, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(ids)
    for row, n in enumerate((4, 7, 5)):
        ids[row, n - 1 :] = eos  # padded with the end-of-text id, as CLIP's tokenizer pads
        mask[row, :n] = 1
    cfg = model_cfg("dgl", "shared_latent=none", "adapter.enabled=false", "text_prompts.max_text_tokens=16")
    features = []
    for trim in (False, True):
        torch.manual_seed(0)
        encoder = PromptedTextEncoder(clip, cfg, HookSet(), trim_padding=trim)
        prepared = encoder.prepare(ids, mask)  # on the host, as the tasks' tokenize does
        assert prepared[0].shape == (3, 7 if trim else 16)
        with torch.no_grad():
            features.append(encoder(prepared[0]))
    torch.testing.assert_close(features[1], features[0], rtol=1e-5, atol=1e-5)


def test_video_block_attention_equals_the_block_mask(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    attn_config = vision_parts(clip).layers[0].self_attn.config
    cfg = model_cfg("dgl", "text_prompts.enabled=false", "adapter.enabled=false", "shared_latent=none")
    torch.manual_seed(0)
    model = STOPVideoModel(cfg, clip, num_frames=3).eval()
    assert attn_config._attn_implementation == VIDEO_BLOCK_ATTENTION
    video = make_video(batch=2, frames=3)
    with torch.no_grad():
        blocks = model(video).embeds
        restore_attention(attn_config)  # the hooks now fall back to the mask over the whole sequence
        assert attn_config._attn_implementation == "sdpa"
        masked = model(video).embeds
    torch.testing.assert_close(blocks, masked, rtol=1e-5, atol=1e-5)


def test_stock_clip_calls_and_remove_hooks_are_unaffected(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    pixels = make_video(batch=1, frames=2).flatten(0, 1)
    with torch.no_grad():
        before = clip.get_image_features(pixel_values=pixels).pooler_output
        model = STOPVideoModel(
            model_cfg("dgl", "text_prompts.enabled=false", "adapter.enabled=false", "shared_latent=none"),
            clip,
            num_frames=2,
        )
        during = clip.get_image_features(
            pixel_values=pixels
        ).pooler_output  # no video model state: plain attention
        model.remove_hooks()
        after = clip.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(during, before)
    torch.testing.assert_close(after, before)
    assert vision_parts(clip).layers[0].self_attn.config._attn_implementation == "sdpa"
