"""STOPVideoModel: stock equality with prompts off, training touches only prompts,
order, layout, precision."""

from __future__ import annotations

import pytest
import torch

from stop_lightning.models.hooks import vision_parts
from stop_lightning.models.video_encoder import STOPVideoModel, VideoOutput
from stop_lightning.schema import ConfigError

T = 3
NO_TEXT = ("text_prompts.enabled=false", "adapter.text=false")


def stock_image_features(clip, video):
    with torch.no_grad():
        return clip.get_image_features(pixel_values=video.flatten(0, 1)).pooler_output


def record_layer_inputs(model):
    """Hidden states entering every vision layer, after the model's own pre-hooks.

    Returns (store, handles)."""
    store, handles = {}, []
    for i, layer in enumerate(model.parts.layers):

        def hook(module, args, kwargs, i=i):
            store[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return store, handles


@pytest.mark.parametrize("patch, size", [(32, 64), (16, 32), (14, 28)])
def test_prompts_off_equal_stock_clip(tiny_clip, model_cfg, make_video, patch, size):
    clip = tiny_clip(width=32, layers=2, patch_size=patch, image_size=size)
    model = STOPVideoModel(model_cfg("zero_shot"), clip, num_frames=T)
    video = make_video(batch=2, frames=T, size=size)
    with torch.no_grad():
        out = model(video)
    assert isinstance(out, VideoOutput) and out.frame_weights is None and out.spatial_mask is None
    torch.testing.assert_close(out.frame_embeds.flatten(0, 1), stock_image_features(clip, video))
    torch.testing.assert_close(out.embeds, out.frame_embeds.mean(1))
    ids = torch.tensor([[3, 5, 7, 9], [3, 4, 9, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(ids, torch.ones_like(ids)), clip.get_text_features(input_ids=ids).pooler_output
        )
    assert model.trainable_parameter_count()[0] == 0 and not model.text_side_trains


def test_one_optimiser_step_changes_only_prompt_parameters(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    model = STOPVideoModel(model_cfg("stop_fast", "shared_latent=none"), clip, num_frames=T).train()
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not n.startswith("clip.") for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    out = model(make_video(frames=T))
    ids = torch.tensor([[3, 5, 7, 63], [3, 4, 63, 0]])
    loss = out.embeds.square().mean() + model.encode_text(ids, torch.ones_like(ids)).square().mean()
    loss.backward()
    assert all(p.grad is None for p in clip.parameters())
    opt.step()
    for key, value in clip.state_dict().items():
        assert torch.equal(value, before[key]), f"CLIP weight {key} changed"
    changed = {n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])}
    for component in (
        "spatial.generator",
        "temporal.generator",
        "local_prompts",
        "global_prompts",
        "aggregator",
        "text_encoder.prompts",
    ):
        assert any(n.startswith(component) for n in changed), f"no parameter of {component} trained"
    assert not clip.training and not any(m.training for m in clip.modules())


def test_trainable_count_matches_hand_count(tiny_clip, model_cfg):
    clip = tiny_clip(width=32, layers=2, projection_dim=24)
    cfg = model_cfg(
        "zero_shot", "local_prompts.enabled=true", "global_prompts.enabled=true", "aggregation.head=true"
    )
    model = STOPVideoModel(cfg, clip, num_frames=T)
    L, K, G, D, E = 2, 4, 4, 32, 24
    trainable, frozen = model.trainable_parameter_count()
    assert trainable == L * K * D + L * G * D + (E * E + E)
    assert frozen == sum(p.numel() for p in clip.parameters())


def test_train_mode_keeps_clip_in_eval(tiny_clip, model_cfg):
    model = STOPVideoModel(model_cfg("stop_fast", *NO_TEXT), tiny_clip(), num_frames=T)
    model.train()
    assert model.training and model.spatial.training
    assert not any(m.training for m in model.clip.modules())


def test_reversed_clip_differs_with_stop_not_with_meanp(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    video = make_video(batch=2, frames=4)
    stop = STOPVideoModel(model_cfg("stop_fast", *NO_TEXT), clip, num_frames=4).eval()
    with torch.no_grad():
        forward, backward = stop(video).embeds, stop(video.flip(1)).embeds
    assert (forward - backward).abs().max() > 1e-4
    stop.remove_hooks()
    meanp = STOPVideoModel(model_cfg("clip4clip_meanp"), clip, num_frames=4).eval()
    assert meanp.trainable_parameter_count()[0] > 0  # the identity video head
    with torch.no_grad():
        torch.testing.assert_close(meanp(video).embeds, meanp(video.flip(1)).embeds)


def test_token_layout_and_replacement_at_every_layer(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2, patch_size=16, image_size=64)
    cfg = model_cfg("zero_shot", "local_prompts.enabled=true", "global_prompts.enabled=true")
    model = STOPVideoModel(cfg, clip, num_frames=T)
    store, handles = record_layer_inputs(model)
    with torch.no_grad():
        out = model(make_video(batch=2, frames=T))
    K, G, N, D = 4, 4, 16, 32
    S = 1 + K + N
    for layer in range(2):
        hidden = store[layer]
        assert hidden.shape == (2, G + T * S, D)  # [B, G + T*(CLS + K + N), D]
        slots = hidden[:, G:].reshape(2, T, S, D)[:, :, 1 : 1 + K]  # [B, T, K, D]
        torch.testing.assert_close(
            slots, model.local_prompts.tokens[layer].expand(2, T, K, D), rtol=0, atol=0
        )
    for h in handles:
        h.remove()
    assert out.frame_embeds.shape == (2, T, clip.config.projection_dim)


def test_depth_limits_the_replaced_layers(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    model = STOPVideoModel(
        model_cfg("zero_shot", "local_prompts.enabled=true", "local_prompts.depth=1"), clip, num_frames=T
    )
    assert model.local_prompts.tokens.shape[0] == 1
    store, handles = record_layer_inputs(model)
    with torch.no_grad():
        model(make_video(frames=T))
    slots_layer1 = store[1][:, 1:5]  # carried from layer 0's output, not replaced
    assert not torch.allclose(slots_layer1, model.local_prompts.tokens[0, 0].expand_as(slots_layer1))
    for h in handles:
        h.remove()
    with pytest.raises(ConfigError, match="local_prompts.depth"):
        STOPVideoModel(
            model_cfg("zero_shot", "local_prompts.enabled=true", "local_prompts.depth=3"), clip, num_frames=T
        )


def test_hard_insertion_fills_only_the_top_m_frames(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    cfg = model_cfg(
        "zero_shot",
        "temporal.enabled=true",
        "temporal.insertion=hard",
        "temporal.hard_top_m=1",
        "temporal.conv_kernel=[3,5,5]",
    )
    model = STOPVideoModel(cfg, clip, num_frames=4)
    torch.nn.init.normal_(model.temporal.generator.patch_mlp[-1].weight)  # a trained, non-zero generator
    store, handles = record_layer_inputs(model)
    with torch.no_grad():
        out = model(make_video(batch=2, frames=4))
    slots = store[0].reshape(2, 4, -1, 32)[:, :, 1:5]  # [B, T, K, D]
    has_prompt = slots.abs().sum((2, 3)) > 0
    assert torch.equal(has_prompt, torch.nn.functional.one_hot(out.frame_weights.argmax(1), 4).bool())
    for h in handles:
        h.remove()


def test_outputs_and_config_errors(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    for output in ("global_prompt0", "global_mean", "global_and_cls", "mean_cls"):
        model = STOPVideoModel(
            model_cfg("dgl", *NO_TEXT, "shared_latent=none", f"aggregation.output={output}"),
            clip,
            num_frames=T,
        )
        with torch.no_grad():
            assert model(make_video(frames=T)).embeds.shape == (2, clip.config.projection_dim)
        model.remove_hooks()
    with pytest.raises(ConfigError, match="global_prompts.enabled"):
        STOPVideoModel(model_cfg("zero_shot", "aggregation.output=global_prompt0"), clip, num_frames=T)
    with pytest.raises(ConfigError, match="num_tokens"):
        STOPVideoModel(model_cfg("stop_fast", "temporal.num_tokens=2"), clip, num_frames=T)


def test_bf16_autocast_forward_backward(tiny_clip, model_cfg, make_video):
    model = STOPVideoModel(
        model_cfg("stop", *NO_TEXT, "shared_latent=none"), tiny_clip(), num_frames=T
    ).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_video(frames=T))
        loss = out.embeds.float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.spatial.generator.convs[0].weight.grad is not None


def test_remove_hooks_restores_stock_clip(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    video = make_video(frames=T)
    ids = torch.tensor([[3, 5, 7, 63]])
    stock = stock_image_features(clip, video)
    with torch.no_grad():
        stock_text = clip.get_text_features(input_ids=ids).pooler_output
    model = STOPVideoModel(model_cfg("stop_fast", "shared_latent=none"), clip, num_frames=T)
    with torch.no_grad():
        model.vision_adapters[0].up.weight.normal_()  # make the adapters do something
        assert not torch.allclose(model(video).frame_embeds.flatten(0, 1), stock)
    model.remove_hooks()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in clip.modules())
    assert torch.equal(stock_image_features(clip, video), stock)
    with torch.no_grad():
        assert torch.equal(clip.get_text_features(input_ids=ids).pooler_output, stock_text)


def test_prompt_hooks_pass_through_when_clip_is_called_directly(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    video = make_video(frames=T)
    stock = stock_image_features(clip, video)
    model = STOPVideoModel(model_cfg("stop_fast", "adapter.enabled=false", *NO_TEXT), clip, num_frames=T)
    assert len(model.hooks) > 0
    assert torch.equal(stock_image_features(clip, video), stock)


def test_shared_latent_space_feeds_both_towers(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=32, layers=2)
    model = STOPVideoModel(model_cfg("dgl", "adapter.enabled=false"), clip, num_frames=T)
    assert model.local_prompts is None and model.shared_space is not None
    store, handles = record_layer_inputs(model)
    out = model(make_video(frames=T))
    visual, _ = model.shared_space()
    G = model.num_global
    slots = store[1][:, G:].reshape(2, T, -1, 32)[:, :, 1:5]
    torch.testing.assert_close(slots, visual[1].expand(2, T, 4, 32).detach(), rtol=0, atol=0)
    for h in handles:
        h.remove()
    ids = torch.tensor([[3, 5, 7, 63]])
    text = model.encode_text(ids, torch.ones_like(ids))
    with torch.no_grad():
        assert not torch.allclose(text, clip.get_text_features(input_ids=ids).pooler_output)
    out.embeds.sum().backward()
    video_grad = model.shared_space.source.grad.clone()
    model.shared_space.source.grad = None
    text.sum().backward()
    assert video_grad.abs().sum() > 0 and model.shared_space.source.grad.abs().sum() > 0


def test_vision_sizes_come_from_the_config(tiny_clip, model_cfg, make_video):
    clip = tiny_clip(width=64, layers=1, patch_size=14, image_size=28, heads=2)
    model = STOPVideoModel(model_cfg("stop_fast", *NO_TEXT), clip, num_frames=2)
    with torch.no_grad():
        out = model(make_video(batch=1, frames=2, size=28))
    assert out.spatial_mask.shape == (1, 2, 2, 2) and out.frame_weights.shape == (1, 2)
    assert model.temporal.generator.num_patches == 4 and len(vision_parts(clip).layers) == 1
