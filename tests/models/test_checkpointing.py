"""Activation checkpointing of the frozen vision layers: the same gradients, and the layers really re-run."""

from __future__ import annotations

import copy

import pytest
import torch

from stop_lightning.models.video_encoder import STOPVideoModel

T = 4
NO_TEXT = ("text_prompts.enabled=false", "adapter.text=false")


def gradients(model_cfg, tiny_clip, make_video, preset: str, checkpointing: bool, *overrides: str):
    """Every trainable parameter's gradient after one backward of a loss on the video features."""
    torch.manual_seed(0)  # the same prompt initialisation and dropout draws in both runs
    cfg = model_cfg(
        preset, *NO_TEXT, f"clip.activation_checkpointing={str(checkpointing).lower()}", *overrides
    )
    model = STOPVideoModel(cfg, tiny_clip(width=32, layers=3), num_frames=T).train()
    calls = {"mlp": 0}

    def count(module, args):
        calls["mlp"] += 1

    # A pre-hook: the recomputation stops as soon as the tensors the backward needs exist again,
    # which is before the layer's last module returns.
    handle = model.parts.layers[1].mlp.register_forward_pre_hook(count)
    out = model(make_video(batch=2, frames=T))
    weights = torch.linspace(-1.0, 1.0, out.embeds.numel()).view_as(out.embeds)
    (out.embeds * weights).sum().backward()
    handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return grads, trainable, calls["mlp"], model


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("stop_fast", ("shared_latent=none",)),  # spatial + temporal + local + global prompts, MSA head
        ("stop", ()),  # reference generators, shared latent space
        ("dgl", ("adapter.vision=true",)),  # adapters hooked onto each layer's mlp: re-run too
    ],
)
def test_same_gradients_with_and_without(model_cfg, tiny_clip, make_video, preset, overrides):
    plain, trainable, plain_calls, _ = gradients(model_cfg, tiny_clip, make_video, preset, False, *overrides)
    ckpt, _, ckpt_calls, model = gradients(model_cfg, tiny_clip, make_video, preset, True, *overrides)
    # Every trainable parameter the video side reaches has a gradient, in both runs, and they agree.
    assert plain.keys() == ckpt.keys() and plain
    text_side = ("text_encoder", "shared_space.prefix_map", "shared_space.postfix_map")
    assert all(n in plain for n in trainable if not n.startswith(text_side))
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-6, msg=name)
    # Without checkpointing the layer runs once; with it, once more in the backward pass.
    assert (plain_calls, ckpt_calls) == (1, 2)
    # A deep copy recomputes its own layers, not the original's.
    twin = copy.deepcopy(model)
    assert twin.parts.layers[0].forward.__self__ is twin.parts.layers[0]
    # remove_hooks() leaves the stock CLIP: the class's own forward again.
    layer = model.parts.layers[0]
    assert "forward" in layer.__dict__
    model.remove_hooks()
    assert "forward" not in layer.__dict__


def test_no_recompute_without_gradients(model_cfg, tiny_clip, make_video):
    cfg = model_cfg("stop_fast", *NO_TEXT, "shared_latent=none", "clip.activation_checkpointing=true")
    model = STOPVideoModel(cfg, tiny_clip(width=32, layers=2), num_frames=T).eval()
    reference = STOPVideoModel(
        model_cfg("stop_fast", *NO_TEXT, "shared_latent=none"), tiny_clip(width=32, layers=2), T
    )
    reference.load_state_dict(model.state_dict())
    video = make_video(batch=1, frames=T)
    with torch.no_grad():
        torch.testing.assert_close(model(video).embeds, reference.eval()(video).embeds, rtol=0, atol=0)
