"""Global prompts (METHOD.md section 3): G tokens per video that see every frame.

The stock CLIP encoder layers run on one sequence per video, ``[G, frame_1, ..., frame_T]``,
with a block attention mask: a frame's tokens attend to their own frame and to the G global
tokens; the global tokens attend to everything. With G = 0 this is exactly per-frame attention.
"""

from __future__ import annotations

import torch
from torch import nn


def block_attention_mask(num_global: int, num_frames: int, frame_len: int, attn_implementation: str,
                         device: torch.device | None = None) -> torch.Tensor:
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
    allowed = allowed[None, None]
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    raise ValueError(
        f"global prompts need an attention mask; model.clip.attn_implementation = {attn_implementation!r} "
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

    def __init__(self, num_tokens: int, layers: int, width: int, per_layer: str = "add", init_std: float = 0.02):
        super().__init__()
        if per_layer not in ("add", "replace"):
            raise ValueError(f"model.global_prompts.per_layer = {per_layer!r}; expected 'add' or 'replace'")
        self.per_layer = per_layer
        self.num_tokens = num_tokens
        tokens = torch.zeros(layers, num_tokens, width)
        nn.init.normal_(tokens[0] if per_layer == "add" else tokens, std=init_std)
        self.tokens = nn.Parameter(tokens)

    def at_layer(self, layer: int, carried: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Global slots entering ``layer``: ``carried [B, G, D]`` (None at layer 0) -> ``[B, G, D]``."""
        own = self.tokens[layer].unsqueeze(0).expand(batch, -1, -1)
        if carried is None or self.per_layer == "replace":
            return own.to(carried.dtype) if carried is not None else own
        return carried + own.to(carried.dtype)
