"""Global prompts (docs/method.md, "DGL base"): G tokens per video that see every frame.

The stock CLIP encoder layers run on one sequence per video, ``[G, frame_1, ..., frame_T]``: a
frame's tokens attend to their own frame and to the G global tokens; the global tokens attend to
everything. With G = 0 this is exactly per-frame attention. Two ways to get that pattern:

- :func:`video_block_attention`, an attention function registered with HF's ``AttentionInterface``:
  per-frame attention over ``[globals, frame]`` plus one attention of the globals over the whole
  video. Same math as the mask, ~T times less attention work (the default, see
  :func:`use_video_block_attention`).
- :func:`block_attention_mask` on the whole sequence (the fallback, e.g. when CLIP's attention
  implementation was changed after the video model was built).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stop_lightning.choices import check_choice
from stop_lightning.schema import GlobalPromptConfig

VIDEO_BLOCK_ATTENTION = "stop_video_blocks"
# id(vision config) -> (weak reference, the attention implementation it had before); calls without a
# video layout use that one. Configs are unhashable, hence the id.
_PREVIOUS_IMPLEMENTATION: dict[int, tuple[weakref.ref, str]] = {}


def _previous(config: Any) -> str | None:
    entry = _PREVIOUS_IMPLEMENTATION.get(id(config))
    return entry[1] if entry is not None and entry[0]() is config else None


def video_block_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    video_blocks: tuple[int, int, int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """HF attention function: ``query/key/value [B, H, G + T*S, d] -> ([B, G + T*S, H, d], None)``.

    ``video_blocks = (G, T, S)`` (passed by the video model's layer hooks) says the sequence is
    ``[G globals, T frames of S tokens]``; without it the call goes to CLIP's previous implementation.
    """
    if video_blocks is None:
        previous = _previous(getattr(module, "config", None)) or "sdpa"
        if previous == "eager":
            from transformers.models.clip.modeling_clip import eager_attention_forward as fallback
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            fallback = ALL_ATTENTION_FUNCTIONS[previous]
        return fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    G, T, S = video_blocks
    B, H, L, d = query.shape
    if L != G + T * S:
        raise ValueError(f"video block attention: sequence of {L} tokens, expected G + T*S = {G} + {T}*{S}")
    # Whole-tensor form, few kernels each way: ``split`` (one ``cat`` in the backward, where slicing
    # costs a zero-filled tensor and an add per slice), the frames kept head-major so that the
    # per-frame keys are one ``cat`` and the output one ``cat`` straight into the layout HF expects.
    q_g, q_f = query.split((G, T * S), dim=2)  # [B, H, G, d], [B, H, T*S, d]
    k_g, k_f = key.split((G, T * S), dim=2)
    v_g, v_f = value.split((G, T * S), dim=2)

    def frame_keys(g: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # [B, H, G, d] + [B, H, T*S, d] -> [B, H*T, G + S, d]: each frame's keys after the globals'
        g = g.unsqueeze(2).expand(B, H, T, G, d)
        return torch.cat([g, f.unflatten(2, (T, S))], dim=3).view(B, H * T, G + S, d)

    per_frame = F.scaled_dot_product_attention(
        q_f.reshape(B, H * T, S, d),  # [B, H, T*S, d] -> [B, H*T, S, d]
        frame_keys(k_g, k_f),
        frame_keys(v_g, v_f),
        dropout_p=dropout,
        scale=scaling,
    ).view(B, H, T * S, d)  # [B, H*T, S, d] -> [B, H, T*S, d]
    if not G:
        return per_frame.transpose(1, 2).contiguous(), None
    globals_ = F.scaled_dot_product_attention(
        q_g, key, value, dropout_p=dropout, scale=scaling
    )  # [B, H, G, d]
    # [B, G, H, d] + [B, T*S, H, d] -> [B, G + T*S, H, d]
    return torch.cat([globals_.transpose(1, 2), per_frame.transpose(1, 2)], dim=1), None


def use_video_block_attention(vision_config: Any) -> bool:
    """Route the vision tower's attention through :func:`video_block_attention`; False if this
    transformers release has no ``AttentionInterface`` (the block mask is used then). Undo with
    :func:`restore_attention`."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(VIDEO_BLOCK_ATTENTION, video_block_attention)
    current = getattr(vision_config, "_attn_implementation", None) or "eager"
    if current != VIDEO_BLOCK_ATTENTION:
        _PREVIOUS_IMPLEMENTATION[id(vision_config)] = (weakref.ref(vision_config), current)
        vision_config._attn_implementation = VIDEO_BLOCK_ATTENTION
    return True


def base_attention_implementation(vision_config: Any) -> str:
    """CLIP's own attention implementation (``sdpa``/``eager``/...), also while video block attention
    is on."""
    current = getattr(vision_config, "_attn_implementation", None) or "eager"
    return (_previous(vision_config) or "sdpa") if current == VIDEO_BLOCK_ATTENTION else current


def restore_attention(vision_config: Any) -> None:
    if getattr(vision_config, "_attn_implementation", None) == VIDEO_BLOCK_ATTENTION:
        vision_config._attn_implementation = _previous(vision_config) or "sdpa"
        _PREVIOUS_IMPLEMENTATION.pop(id(vision_config), None)


def video_block_attention_active(vision_config: Any) -> bool:
    return getattr(vision_config, "_attn_implementation", None) == VIDEO_BLOCK_ATTENTION


def block_attention_mask(
    num_global: int,
    num_frames: int,
    frame_len: int,
    attn_implementation: str,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Mask ``[1, 1, G + T*S, G + T*S]`` for one video sequence.

    ``sdpa``: boolean, True where attention is allowed. ``eager``: additive float (0 / dtype min),
    which HF's eager attention adds to the scores.
    """
    G, T, S = num_global, num_frames, frame_len
    frame_of = torch.arange(T, device=device).repeat_interleave(S)  # [T*S]: which frame a token belongs to
    frame_of = torch.cat([torch.full((G,), -1, device=device), frame_of])  # globals are frame -1
    is_global_query = (frame_of == -1)[:, None]
    is_global_key = (frame_of == -1)[None, :]
    allowed = is_global_query | is_global_key | (frame_of[:, None] == frame_of[None, :])  # [L, L]
    return attention_mask(allowed[None, None], attn_implementation, "global prompts")


def attention_mask(allowed: torch.Tensor, attn_implementation: str, needed_by: str) -> torch.Tensor:
    """A boolean mask (True: the query may attend to the key) in the form CLIP's attention takes.

    ``sdpa``: the boolean mask itself. ``eager``: additive float (0 / dtype min), which HF's eager
    attention adds to the scores. ``needed_by`` names the feature in the error for other backends.
    """
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min
        )
    raise ValueError(
        f"{needed_by} need an attention mask; model.clip.attn_implementation = {attn_implementation!r} "
        f"does not take one here. Use 'sdpa' or 'eager'."
    )


class GlobalPrompts(nn.Module):
    """Learnable global tokens for each layer: ``tokens [L, G, D]``.

    ``per_layer='add'`` (default): layer 0 inserts ``tokens[0]``; every later layer adds its own
    ``tokens[l]`` (zero at start) to the carried global states, so what the globals gathered from
    all frames reaches every frame in the next layer. ``per_layer='replace'``: VPT-deep style, each
    layer's global slots are overwritten by ``tokens[l]`` (frames then exchange nothing through them
    except in the last layer's global outputs).
    """

    no_weight_decay = ("tokens",)  # inputs of the frozen layers, not weights of a map

    def __init__(self, cfg: GlobalPromptConfig, layers: int, width: int):
        super().__init__()
        self.per_layer = check_choice("model.global_prompts.per_layer", cfg.per_layer)
        self.num_tokens = int(cfg.num_tokens)
        tokens = torch.zeros(layers, self.num_tokens, width)
        nn.init.normal_(tokens[0] if self.per_layer == "add" else tokens, std=float(cfg.init_std))
        self.tokens = nn.Parameter(tokens)

    def at_layer(
        self, layer: int, carried: torch.Tensor | None, batch: int, own: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Global slots entering ``layer``: ``carried [B, G, D]`` (None at layer 0) -> ``[B, G, D]``.
        ``own``: this layer's ``[G, D]`` when the caller split ``tokens`` already."""
        own = (self.tokens[layer] if own is None else own).unsqueeze(0).expand(batch, -1, -1)
        if carried is None or self.per_layer == "replace":
            return own.to(carried.dtype) if carried is not None else own
        return carried + own.to(carried.dtype)
