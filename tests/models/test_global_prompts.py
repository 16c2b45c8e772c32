"""Global prompts: the block mask reproduces per-frame attention, and frames talk only through the globals."""

from __future__ import annotations

import pytest
import torch

from stop_lightning.models.global_prompts import GlobalPrompts, block_attention_mask
from stop_lightning.models.hooks import vision_parts
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.schema import GlobalPromptConfig


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_block_mask_without_globals_equals_per_frame_attention(tiny_clip, attn):
    clip = tiny_clip(width=32, layers=1)
    clip.set_attn_implementation(attn)
    layer = vision_parts(clip).layers[0]
    B, T, S, D = 2, 3, 5, 32
    x = torch.randn(B * T, S, D)
    with torch.no_grad():
        per_frame = layer(x, None)
        one_sequence = layer(x.reshape(B, T * S, D), block_attention_mask(0, T, S, attn)).reshape(B * T, S, D)
    torch.testing.assert_close(one_sequence, per_frame, rtol=1e-5, atol=1e-6)


def test_block_mask_pattern():
    allowed = block_attention_mask(2, 2, 3, "sdpa")[0, 0]  # [2 + 2*3, 2 + 2*3]
    assert allowed[:2].all()  # globals see everything
    assert allowed[:, :2].all()  # everything sees the globals
    assert allowed[2:5, 2:5].all() and not allowed[2:5, 5:].any()  # frame 1 sees only itself
    additive = block_attention_mask(2, 2, 3, "eager")[0, 0]
    assert torch.equal(additive == 0, allowed)
    with pytest.raises(ValueError, match="attn_implementation"):
        block_attention_mask(2, 2, 3, "flash_attention_2")


def test_add_mode_carries_state_replace_mode_does_not():
    add = GlobalPrompts(GlobalPromptConfig(num_tokens=2, per_layer="add"), 3, 8)
    replace = GlobalPrompts(GlobalPromptConfig(num_tokens=2, per_layer="replace"), 3, 8)
    carried = torch.randn(1, 2, 8)
    assert torch.equal(add.at_layer(1, carried, 1), carried)  # later layers' own tokens start at zero
    assert torch.equal(replace.at_layer(1, carried, 1), replace.tokens[1].unsqueeze(0))
    assert add.tokens[1:].abs().sum() == 0 and add.tokens[0].abs().sum() > 0


def _cls_and_globals(model, video):
    """Frame CLS features and the last layer's global token outputs of one forward."""
    seen = {}
    handle = model.parts.layers[-1].register_forward_hook(lambda m, a, out: seen.setdefault("last", out))
    with torch.no_grad():
        out = model(video)
    handle.remove()
    G = model.num_global
    return out.frame_embeds, seen["last"][:, :G].clone() if G else None


@pytest.mark.parametrize(
    "layers, global_on, frame1_changes", [(2, False, False), (1, True, False), (2, True, True)]
)
def test_frames_see_each_other_only_through_global_tokens(
    tiny_clip, model_cfg, make_video, layers, global_on, frame1_changes
):
    """Perturb frame 2; frame 1's CLS changes only when global tokens carry it across a layer."""
    clip = tiny_clip(width=32, layers=layers)
    cfg = model_cfg("zero_shot", f"global_prompts.enabled={global_on}", "local_prompts.enabled=true")
    model = STOPVideoModel(cfg, clip, num_frames=3).eval()
    video = make_video(batch=1, frames=3)
    perturbed = video.clone()
    perturbed[:, 1] += torch.randn_like(perturbed[:, 1])
    cls_a, glob_a = _cls_and_globals(model, video)
    cls_b, glob_b = _cls_and_globals(model, perturbed)
    assert not torch.allclose(cls_a[:, 1], cls_b[:, 1])
    for other in (0, 2):
        delta = (cls_a[:, other] - cls_b[:, other]).abs().max()
        assert delta > 1e-4 if frame1_changes else delta < 1e-6
    if global_on:
        assert (glob_a - glob_b).abs().max() > 1e-4  # the globals attend to frame 2


def test_sdpa_and_eager_give_the_same_prompted_video(tiny_clip, model_cfg, make_video):
    video = make_video(batch=1, frames=3)
    outs = []
    for attn in ("sdpa", "eager"):
        clip = tiny_clip(width=32, layers=2)
        clip.set_attn_implementation(attn)
        cfg = model_cfg("dgl", "text_prompts.enabled=false", "adapter.enabled=false", "shared_latent=none")
        torch.manual_seed(0)
        model = STOPVideoModel(cfg, clip, num_frames=3).eval()
        with torch.no_grad():
            outs.append(model(video).embeds)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
