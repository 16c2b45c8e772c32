"""VoP's two video prompts that need their own generators (docs/fidelity.md, "VoP").

VoP (Huang et al., "VoP: Text-Video Co-operative Prompt Tuning for Cross-Modal Retrieval", CVPR
2023, arXiv 2211.12764) adds three kinds of video prompts to deep text and visual prompts. The
position-specific ones (VoP-P) are the framework's local prompts with a frame axis
(``model.local_prompts.per_frame``, 4 of the 8 tokens: ``per_frame_tokens``), as the paper has
them. The other two are our own designs of the paper's ideas, not its forms (the paper's: a BiLSTM
over the frames' CLS tokens for VoP-C, attention across frames in the last 4 vision layers for
VoP-F; docs/fidelity.md rows V6-V7). They are generated here and added by the video model to the
prompt slots of every prompted layer, on top of the local prompts:

- :class:`ContextPrompts` (VoP-C, ``model.context_prompts``): from the video's own frames. The
  CLS tokens of all frames entering a layer, layer-normalised and averaged over the frames, pass a
  bottleneck ``D -> r -> K*D``: K tokens that depend on the clip, the same for its every frame, so
  each frame is prompted with what the whole video holds. One generator serves all layers (its
  input differs per layer).
- :class:`FunctionPrompts` (VoP-F, ``model.function_prompts``): each layer has its own temporal
  mixer (``D -> r``, a convolution over the frame axis, ``r -> D``) that turns the K prompt outputs
  of the previous layer, for all T frames, into that layer's prompt term. Frames exchange
  information through the prompts, and each layer does it with its own weights (the "function" of
  that layer), so the prompts differ from layer to layer even for the same input.

Both last layers start at zero: a fresh VoP-C / VoP-F model computes exactly what VoP does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stop_lightning.config import ContextPromptConfig, FunctionPromptConfig
from stop_lightning.models.layers import same_padding


class ContextPrompts(nn.Module):
    """Context-specific prompts: frame CLS tokens ``[B, T, D]`` -> K tokens per video ``[B, K, D]``."""

    def __init__(self, cfg: ContextPromptConfig, num_tokens: int, width: int):
        super().__init__()
        self.num_tokens, self.width = int(num_tokens), int(width)
        self.down = nn.Linear(width, int(cfg.bottleneck))
        self.act = nn.GELU()
        self.up = nn.Linear(int(cfg.bottleneck), self.num_tokens * width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, cls: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``cls [B, T, D]``, optional ``frame_mask [B, T]`` (True: a real frame) -> ``[B, K, D]``."""
        B, T, D = cls.shape
        if D != self.width:
            raise ValueError(f"context prompts built for width {self.width}, got frame tokens of width {D}")
        x = F.layer_norm(cls, (D,))  # the CLS norm grows with depth; the generator sees its direction
        if frame_mask is None:
            context = x.mean(1)  # [B, T, D] -> [B, D]
        else:
            weights = frame_mask.to(x.dtype).unsqueeze(-1)  # [B, T, 1]
            context = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.up(self.act(self.down(context))).view(B, self.num_tokens, D)


class _TemporalMixer(nn.Module):
    """One layer's mixer: prompt outputs ``[B, T, K, D]`` -> ``[B, T, K, D]``, frames mixed by a conv
    over T."""

    def __init__(self, width: int, bottleneck: int, kernel: int):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.conv = nn.Conv1d(
            bottleneck, bottleneck, kernel, padding=same_padding((kernel,), "model.function_prompts.kernel")
        )
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        B, T, K, _ = prompts.shape
        h = self.down(prompts)  # [B, T, K, r]
        h = h.permute(0, 2, 3, 1).reshape(
            B * K, -1, T
        )  # -> [B*K, r, T]: each slot's sequence over the frames
        h = self.act(self.conv(h)).reshape(B, K, -1, T).permute(0, 3, 1, 2)  # -> [B, T, K, r]
        return self.up(h)  # [B, T, K, D]


class FunctionPrompts(nn.Module):
    """Function-specific prompts: one temporal mixer per layer after the first (layer 0 has no earlier
    prompts)."""

    def __init__(self, cfg: FunctionPromptConfig, layers: int, width: int):
        super().__init__()
        self.mixers = nn.ModuleList(
            _TemporalMixer(width, int(cfg.bottleneck), int(cfg.kernel)) for _ in range(max(layers - 1, 0))
        )

    def at_layer(self, layer: int, previous: torch.Tensor) -> torch.Tensor:
        """Term for the slots entering ``layer`` (>= 1) from the slots leaving ``layer - 1``:
        ``[B, T, K, D]``."""
        if not 1 <= layer <= len(self.mixers):
            raise ValueError(
                f"function prompts exist for layers 1..{len(self.mixers)}, asked for layer {layer}"
            )
        return self.mixers[layer - 1](previous)
