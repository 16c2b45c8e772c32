"""Intra-frame spatial prompts (docs/method.md, "Spatial prompts").

A generator turns the video into a pixel prompt ``p`` of the video's shape; a scorer picks the
top-k cells of every frame (salient and changing); the frames become ``x + alpha*p + alpha*p*m``.
A cell is a patch (``score_pooling=patch``, ``mask_layout=block``) or, as in the authors' released
code, a lattice of pixels spread over the frame (``lattice``; docs/fidelity.md).
Since CLIP's patch embedding is a linear convolution without bias, that equals adding
``patch_conv(alpha*p*(1+m))`` to the patch embeddings, which is how the hook applies it: the hook
also sees the clean patch embeddings the attention scorer needs, at no extra cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stop_lightning.choices import check_choice
from stop_lightning.models.hooks import HookSet, VisionParts
from stop_lightning.models.layers import same_padding
from stop_lightning.schema import SpatialPromptConfig

# Keeps attention as a tie-break when a frame has no temporal variation (static video, T = 1).
_VARIATION_FLOOR = 1e-6


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` stored channels-last: the same values, but CPU (oneDNN) Conv3d runs its
    backward ~5x faster in this layout (docs/benchmarks.md); the convs keep the layout they are given."""
    return x.contiguous(memory_format=torch.channels_last_3d)


class PixelMLP(nn.Module):
    """The per-pixel MLP both generators end with: hidden -> hidden, PReLU, -> 3 channels."""

    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.act = nn.PReLU()
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)  # [B, C, T, H, W] -> [B, T, H, W, C]
        x = self.fc2(self.act(self.fc1(x)))
        return x.movedim(-1, 2)  # [B, T, H, W, 3] -> [B, T, 3, H, W]


class ReferenceSpatialGenerator(nn.Module):
    """The paper's generator: four full-resolution Conv3d (3, 11, 11) layers 3 -> C -> C -> C -> hidden,
    dropout, the pixel MLP.

    ``first_activation`` puts a PReLU after the first conv (``stop``); the authors' code has none
    there. ``output_dropouts`` applies the dropout that many more times after the MLP (the authors'
    code: twice, so ~75% of the prompt values are zero in training, the rest scaled by 4).
    """

    kernel = (3, 11, 11)

    def __init__(self, cfg: SpatialPromptConfig):
        super().__init__()
        C, pad = int(cfg.conv_channels), same_padding(self.kernel, "ReferenceSpatialGenerator.kernel")
        self.convs = nn.Sequential(
            nn.Conv3d(3, C, self.kernel, padding=pad),
            nn.PReLU() if cfg.first_activation else nn.Identity(),
            nn.Conv3d(C, C, self.kernel, padding=pad),
            nn.PReLU(),
            nn.Conv3d(C, C, self.kernel, padding=pad),
            nn.PReLU(),
            nn.Conv3d(C, int(cfg.hidden_channels), self.kernel, padding=pad),
        )  # [B, 3, T, H, W] -> [B, hidden, T, H, W]
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.output_dropouts = int(cfg.output_dropouts)
        self.mlp = PixelMLP(int(cfg.hidden_channels))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = _channels_last(video.transpose(1, 2))  # [B, T, 3, H, W] -> [B, 3, T, H, W]
        p = self.mlp(self.dropout(self.convs(x)))  # [B, T, 3, H, W]
        for _ in range(self.output_dropouts):
            p = self.dropout(p)
        return p


class FastSpatialGenerator(nn.Module):
    """Same role, a fraction of the cost: factorised (2+1)D convs at 4 samples per patch side, upsampled.

    The video is average-pooled to ``4g x 4g`` (g = patch grid), passes a spatial (1, k, k) conv,
    a temporal (3, 1, 1) conv and a second spatial conv, the pixel MLP, and is upsampled
    bilinearly back to the frame size, so the prompt stays smooth inside each patch.
    """

    def __init__(self, cfg: SpatialPromptConfig, patch_size: int):
        super().__init__()
        channels, hidden, kernel = int(cfg.conv_channels), int(cfg.hidden_channels), int(cfg.fast_kernel)
        self.pool = max(1, patch_size // int(cfg.fast_samples_per_patch))
        spatial, temporal = (1, kernel, kernel), (3, 1, 1)
        pad = same_padding(spatial, "model.spatial.fast_kernel")
        self.convs = nn.Sequential(
            nn.Conv3d(3, channels, spatial, padding=pad),
            nn.PReLU(),
            nn.Conv3d(channels, channels, temporal, padding=same_padding(temporal, "temporal")),
            nn.PReLU(),
            nn.Conv3d(channels, hidden, spatial, padding=pad),
        )
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.mlp = PixelMLP(hidden)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B, T, _, H, W = video.shape
        x = video.transpose(1, 2)  # [B, T, 3, H, W] -> [B, 3, T, H, W]
        x = _channels_last(F.avg_pool3d(x, (1, self.pool, self.pool)))  # [B, 3, T, H/s, W/s]
        p = self.mlp(self.dropout(self.convs(x)))  # [B, T, 3, H/s, W/s]
        p = F.interpolate(p.flatten(0, 1), size=(H, W), mode="bilinear", align_corners=False)
        return p.view(B, T, 3, H, W)


def patch_projection(pixels: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """CLIP's patch embedding conv applied to ``pixels [M, 3, H, W]`` -> ``[M, D, g, g]``, as one matmul.

    The conv has stride = kernel = P and no bias, so it is a linear map of each P x P patch: the
    same numbers as ``F.conv2d``, but its backward (the gradient reaching the spatial prompt) is a
    matmul instead of a CPU transposed convolution, ~10x faster (docs/benchmarks.md).
    """
    M, C, H, W = pixels.shape
    D, _, P, Q = conv.weight.shape
    if (
        conv.bias is not None
        or tuple(conv.stride) != (P, Q)
        or H % P
        or W % Q
        or conv.padding not in ("valid", (0, 0), 0)
    ):
        return conv._conv_forward(pixels, conv.weight, conv.bias)  # not a patchify conv: the generic path
    gh, gw = H // P, W // Q
    patches = (
        pixels.view(M, C, gh, P, gw, Q).permute(0, 2, 4, 1, 3, 5).reshape(M, gh * gw, C * P * Q)
    )  # [M, N, 3*P*P]
    out = patches @ conv.weight.view(D, -1).t()  # [M, N, D]
    return out.transpose(1, 2).reshape(M, D, gh, gw)


def temporal_patch_variation(patch_embeds: torch.Tensor) -> torch.Tensor:
    """1 - cos(patch i at t, patch i at t-1); frame 0 takes frame 1's value. ``[B, T, N, D] -> [B, T, N]``."""
    B, T, N, _ = patch_embeds.shape
    if T == 1:
        return patch_embeds.new_zeros(B, T, N)
    e = patch_embeds.float()
    change = 1 - F.cosine_similarity(e[:, 1:], e[:, :-1], dim=-1)  # [B, T-1, N]
    return torch.cat([change[:, :1], change], dim=1).clamp_min(0)  # [B, T, N]


def _layer_norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class AttentionScorer(nn.Module):
    """Paper-style region score: (how much the frame's CLS attends to patch i) x (how much patch i changed).

    The attention is that of CLIP's first encoder layer, computed from the clean patch embeddings
    with the frozen weights (no parameters of its own, no gradient).
    """

    def __init__(self, parts: VisionParts):
        super().__init__()
        self._frozen = [parts]  # a list so the CLIP modules are not registered (and saved) twice

    @torch.no_grad()
    def cls_attention(self, patch_embeds: torch.Tensor) -> torch.Tensor:
        """``[M, N, D]`` patch embeddings (no position) -> ``[M, N]`` head-averaged CLS attention of
        layer 0."""
        parts = self._frozen[0]
        emb, attn = parts.embeddings, parts.layers[0].self_attn
        M, N, D = patch_embeds.shape
        pos = emb.position_embedding.weight  # [1 + N, D]
        cls = (emb.class_embedding + pos[0]).expand(M, 1, D)
        tokens = torch.cat([cls, patch_embeds + pos[1:]], dim=1)  # [M, 1 + N, D]
        # Functional calls: the modules themselves carry the video model's hooks.
        h = _layer_norm(parts.layers[0].layer_norm1, _layer_norm(parts.pre_layernorm, tokens))
        heads = attn.num_heads
        q = (
            F.linear(h[:, :1], attn.q_proj.weight, attn.q_proj.bias).view(M, 1, heads, -1).transpose(1, 2)
        )  # [M, heads, 1, D/heads]
        k = (
            F.linear(h[:, 1:], attn.k_proj.weight, attn.k_proj.bias).view(M, N, heads, -1).transpose(1, 2)
        )  # [M, heads, N, D/heads]
        weights = (q.float() @ k.float().transpose(-1, -2) * attn.scale).softmax(-1)  # [M, heads, 1, N]
        return weights.mean(1).squeeze(1)  # [M, N]

    @torch.no_grad()
    def forward(self, video: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        B, T, N, D = patch_embeds.shape
        attention = self.cls_attention(patch_embeds.flatten(0, 1)).view(B, T, N)
        return attention * (temporal_patch_variation(patch_embeds) + _VARIATION_FLOOR)  # [B, T, N]


def pool_to_cells(pixels: torch.Tensor, grid: int, layout: str) -> torch.Tensor:
    """Average ``pixels [M, H, W]`` into ``[M, g, g]`` cells (H = P * g).

    ``patch``: cell (i, j) is patch (i, j), the P x P block at rows ``i*P .. i*P+P-1``.
    ``lattice``: cell (i, j) holds the pixels with ``h mod g = i`` and ``w mod g = j``, a lattice
    spread over the whole frame (the authors' ``reshape(B, T, P, g, P, g).mean((2, 4))``).
    """
    M, H, W = pixels.shape
    P, Q = H // grid, W // grid
    if check_choice("model.spatial.score_pooling", layout) == "patch":
        return pixels.view(M, grid, P, grid, Q).mean((2, 4))  # [M, g, P, g, P] -> [M, g, g]
    return pixels.view(M, P, grid, Q, grid).mean((1, 3))  # [M, P, g, P, g] -> [M, g, g]


def cells_to_pixels(mask: torch.Tensor, patch_size: int, layout: str) -> torch.Tensor:
    """``mask [..., g, g]`` -> ``[..., g*P, g*P]``: ``block`` gives pixel (h, w) the cell (h // P, w // P),
    ``lattice`` the cell (h mod g, w mod g) (the layouts of :func:`pool_to_cells`)."""
    P = patch_size
    if check_choice("model.spatial.mask_layout", layout) == "block":
        return mask.repeat_interleave(P, dim=-2).repeat_interleave(P, dim=-1)
    return mask.repeat(*([1] * (mask.dim() - 2)), P, P)  # tiles the g x g mask P x P times


def scale_by_cells(pixels: torch.Tensor, cells: torch.Tensor, patch_size: int, layout: str) -> torch.Tensor:
    """Each pixel of ``pixels [..., H, W]`` times its cell's value in ``cells [..., g, g]`` (leading axes
    broadcast): ``pixels * cells_to_pixels(cells)`` as one broadcast multiplication, without the
    ``[..., H, W]`` pixel mask (two ``repeat_interleave`` and their copies) built every step."""
    H, W = pixels.shape[-2:]
    g, P = cells.shape[-1], patch_size
    lead = pixels.shape[:-2]
    if check_choice("model.spatial.mask_layout", layout) == "block":  # pixel (h, w) -> (h // P, w // P)
        x = pixels.reshape(*lead, g, P, g, P)  # [..., H, W] -> [..., g, P, g, P]
        c = cells.reshape(*cells.shape[:-2], g, 1, g, 1)
    else:  # lattice: pixel (h, w) -> (h mod g, w mod g)
        x = pixels.reshape(*lead, P, g, P, g)  # [..., H, W] -> [..., P, g, P, g]
        c = cells.reshape(*cells.shape[:-2], 1, g, 1, g)
    return (x * c).reshape(*lead, H, W)


class ReferenceScorer(nn.Module):
    """The reference scorer: Conv3d(3 -> 1, (5, 11, 11)) over the pixels, averaged into g x g cells.

    It sits behind a hard selection, so it never gets a gradient and keeps its random
    initialisation (in the authors' code too); its weights are frozen to say so.
    """

    kernel = (5, 11, 11)

    def __init__(self, grid: int, pooling: str):
        super().__init__()
        self.grid, self.pooling = grid, check_choice("model.spatial.score_pooling", pooling)
        self.conv = nn.Conv3d(3, 1, self.kernel, padding=same_padding(self.kernel, "ReferenceScorer.kernel"))
        self.conv.requires_grad_(False)

    @torch.no_grad()
    def forward(self, video: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        B, T = video.shape[:2]
        r = self.conv(video.transpose(1, 2).to(self.conv.weight.dtype))  # [B, 3, T, H, W] -> [B, 1, T, H, W]
        r = pool_to_cells(r.flatten(0, 2), self.grid, self.pooling)  # [B*T, g, g]
        return r.reshape(B, T, -1)  # [B, T, N]


def topk_patch_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1 for the k highest-scoring patches of each frame. ``[B, T, N] -> [B, T, N]`` (0/1, no gradient)."""
    idx = scores.detach().topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.float32).scatter_(-1, idx, 1.0)


def strict_threshold_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1 for the cells whose score is strictly above the (k+1)-th highest of their frame (the authors'
    ``x > sort(desc)[k]``): at most k cells, fewer on ties, none in a constant frame.
    ``[B, T, N] -> [B, T, N]``."""
    if k >= scores.shape[-1]:
        return torch.ones_like(scores, dtype=torch.float32)
    bar = scores.detach().sort(dim=-1, descending=True).values[..., k : k + 1]  # [B, T, 1]
    return (scores.detach() > bar).float()


def num_kept_patches(topk_ratio: float, num_patches: int) -> int:
    return max(1, min(num_patches, round(topk_ratio * num_patches)))


class SpatialPrompter(nn.Module):
    """Region-selective, video-dependent pixel prompts applied at CLIP's patch embedding.

    Args:
        cfg: the ``model.spatial`` section.
        parts: the frozen vision tower's parts (patch size, grid and the attention scorer's weights).
    """

    def __init__(self, cfg: SpatialPromptConfig, parts: VisionParts):
        super().__init__()
        emb = parts.embeddings
        self.patch_size = int(emb.patch_size)
        self.grid = int(emb.image_size) // self.patch_size
        self.alpha = float(cfg.alpha)
        self.k = num_kept_patches(float(cfg.topk_ratio), self.grid * self.grid)
        self.threshold = check_choice("model.spatial.threshold", cfg.threshold)
        self.mask_layout = check_choice("model.spatial.mask_layout", cfg.mask_layout)
        if check_choice("model.spatial.generator", cfg.generator) == "reference":
            self.generator: nn.Module = ReferenceSpatialGenerator(cfg)
        else:
            self.generator = FastSpatialGenerator(cfg, self.patch_size)
        if check_choice("model.spatial.scorer", cfg.scorer) == "attention":
            self.scorer: nn.Module = AttentionScorer(parts)
        else:
            self.scorer = ReferenceScorer(self.grid, cfg.score_pooling)
        self.last_mask: torch.Tensor | None = None  # [B, T, g, g], for visualisation

    def forward(self, video: torch.Tensor, patch_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``video [B, T, 3, H, W]``, clean ``patch_embeds [B, T, N, D]`` -> (pixel delta
        ``[B, T, 3, H, W]``, mask ``[B, T, g, g]``)."""
        B, T = video.shape[:2]
        g, P = self.grid, self.patch_size
        scores = self.scorer(video, patch_embeds)  # [B, T, N]
        select = topk_patch_mask if self.threshold == "topk" else strict_threshold_mask
        mask = select(scores, self.k).view(B, T, g, g)
        p = self.generator(video)  # [B, T, 3, H, W]
        # alpha*p + alpha*p*m = p * (alpha*(1+m)): alpha or 2*alpha per cell, exact in any float type
        scale = (self.alpha * (1 + mask)).to(p.dtype).unsqueeze(2)  # [B, T, 1, g, g]
        delta = scale_by_cells(p, scale, P, self.mask_layout)  # [B, T, 3, H, W]
        return delta, mask

    def attach(self, parts: VisionParts, hooks: HookSet, num_frames: Callable[[], int | None]) -> None:
        """Hook the patch convolution: embeds(x) -> embeds(x) + conv(alpha*p*(1+m)).

        ``num_frames`` is a zero-argument callable giving the T of the clip being encoded, or
        None when CLIP is called directly (then the hook leaves the embeddings alone).
        """
        conv = parts.embeddings.patch_embedding

        def add_prompt(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            T = num_frames()
            if T is None:
                return None
            pixels = args[0]  # [B*T, 3, H, W]
            BT, D, g, _ = output.shape
            video = pixels.view(BT // T, T, *pixels.shape[1:])  # [B, T, 3, H, W]
            patch_embeds = output.flatten(2).transpose(1, 2).reshape(BT // T, T, g * g, D)  # [B, T, N, D]
            delta, mask = self(video, patch_embeds)
            self.last_mask = mask.detach()
            prompt = patch_projection(delta.flatten(0, 1).to(module.weight.dtype), module)  # [B*T, D, g, g]
            return output + prompt.to(output.dtype)

        hooks.forward(conv, add_prompt)
