"""From frame features (and prompt/global tokens) to one video vector.

Optionally a trainable self-attention block mixes the projected frame CLS features, the temporal
prompt tokens and the global tokens (its residual branches start at zero, so it starts as the
identity); then ``aggregation.output`` picks the video vector. A projection head initialised to
the identity gives the CLIP4Clip meanP baseline something to train.
"""

from __future__ import annotations

import torch
from torch import nn

from stop_lightning.choices import OUTPUTS
from stop_lightning.models.layers import attention_heads
from stop_lightning.schema import AggregationConfig, ConfigError

NEEDS_GLOBAL = ("global_prompt0", "global_mean", "global_and_cls")


def masked_frame_mean(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``frames [B, T, E]``, ``mask`` bool ``[B, T]`` (True: a real frame) -> mean of the real frames
    ``[B, E]``."""
    weights = mask.to(frames.dtype).unsqueeze(-1)  # [B, T, 1]
    return (frames * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class MSABlock(nn.Module):
    """Pre-norm transformer block over video tokens; frame position is added to queries and keys only.

    The attention output projection and the MLP's last layer start at zero: the block is the
    identity until it learns otherwise.
    """

    def __init__(self, width: int, max_frames: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, attention_heads(width), batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.frame_position = nn.Parameter(
            torch.randn(max_frames + 1, width) * width**-0.5
        )  # row 0: no frame (globals)
        for layer in (self.attn.out_proj, self.mlp[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """``tokens [B, M, E]``, ``frame_ids [M]`` (0 for global tokens, t+1 for frame t) -> ``[B, M, E]``."""
        h = self.norm1(tokens)
        qk = h + self.frame_position[frame_ids].to(h.dtype)
        tokens = tokens + self.attn(qk, qk, h, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class VideoAggregator(nn.Module):
    """``aggregation`` config -> video vector. See :meth:`forward` for shapes."""

    def __init__(self, cfg: AggregationConfig, width: int, max_frames: int, has_global: bool):
        super().__init__()
        self.output = str(cfg.output)
        if self.output not in OUTPUTS:
            raise ConfigError(
                f"model.aggregation.output = {self.output!r} is not one of: {', '.join(OUTPUTS)}"
            )
        if self.output in NEEDS_GLOBAL and not has_global:
            raise ConfigError(
                f"model.aggregation.output = {self.output!r} reads the global prompt tokens, but "
                f"model.global_prompts.enabled is false. "
                f"Enable them or use model.aggregation.output=mean_cls."
            )
        self.max_frames = max_frames
        self.blocks = (
            nn.ModuleList(MSABlock(width, max_frames) for _ in range(int(cfg.msa_layers)))
            if cfg.msa
            else nn.ModuleList()
        )
        self.head: nn.Linear | None = None
        if cfg.head:
            self.head = nn.Linear(width, width)
            with torch.no_grad():
                self.head.weight.copy_(torch.eye(width))
                self.head.bias.zero_()

    def forward(
        self,
        frames: torch.Tensor,
        prompts: torch.Tensor | None = None,
        globals_: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``frames [B, T, E]`` (projected frame CLS), ``prompts [B, T, K, E]``, ``globals_ [B, G, E]``
        -> ``[B, E]``.

        ``frame_mask [B, T]`` (True: a real frame, False: padding repeated by fps sampling) makes
        the plain mean over frames (meanP) skip the padding.
        """
        B, T, E = frames.shape
        if len(self.blocks):
            if T > self.max_frames:
                raise ValueError(
                    f"aggregation block built for at most {self.max_frames} frames, got a clip of {T}"
                )
            frame_index = torch.arange(1, T + 1, device=frames.device)
            parts, ids = [frames], [frame_index]
            if prompts is not None:
                K = prompts.shape[2]
                parts.append(prompts.reshape(B, T * K, E))  # [B, T, K, E] -> [B, T*K, E]
                ids.append(frame_index.repeat_interleave(K))
            if globals_ is not None:
                parts.append(globals_)
                ids.append(torch.zeros(globals_.shape[1], dtype=torch.long, device=frames.device))
            tokens, frame_ids = torch.cat(parts, dim=1), torch.cat(ids)  # [B, M, E]
            for block in self.blocks:
                tokens = block(tokens, frame_ids)
            frames = tokens[:, :T]
            globals_ = tokens[:, tokens.shape[1] - globals_.shape[1] :] if globals_ is not None else None

        pools_plain_frames = not len(self.blocks)  # after the MSA block every token has seen the padding
        if self.output == "mean_cls":
            video = (
                masked_frame_mean(frames, frame_mask)
                if frame_mask is not None and pools_plain_frames
                else frames.mean(1)
            )
        elif self.output == "global_prompt0":
            video = globals_[:, 0]
        elif self.output == "global_mean":
            video = globals_.mean(1)
        else:  # global_and_cls
            video = 0.5 * (globals_.mean(1) + frames.mean(1))
        return self.head(video) if self.head is not None else video
