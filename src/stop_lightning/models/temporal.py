"""Inter-frame temporal prompts (METHOD.md section 2).

From the patch tokens after CLIP's pre-LayerNorm, :class:`TemporalPromptGenerator` makes K prompt
tokens per frame, :class:`FrameVariation` says how much each frame differs from the previous one,
and :func:`weight_temporal_prompts` scales the tokens by ``(1 + w_t)`` (soft) or keeps them only in
the top-m most varying frames (hard). The video model adds the result to the deep prompt slots.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Below this spread of raw frame variation a clip counts as static: normalising would blow
# floating-point noise up to [0, 1].
_STATIC_RANGE = 1e-5


def _same_padding(kernel: tuple[int, ...]) -> tuple[int, ...]:
    for k in kernel:
        if k % 2 == 0:
            raise ValueError(f"model.temporal.conv_kernel = {list(kernel)}: every kernel size must be odd (same padding)")
    return tuple(k // 2 for k in kernel)


CONV_IMPLS = ("fft", "direct")


def _fft_size(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3 and 5 (sizes the FFT is fast at)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=k // 2)`` (odd kernels, stride 1) computed with FFTs, in float32.

    ``x [B, C_in, T, N, D]``, ``weight [C_out, C_in, kt, kn, kd]`` -> ``[B, C_out, T, N, D]`` in x's dtype.
    The same linear map as the direct convolution (equal up to float rounding, gradients included);
    it pays off for the large, few-channel kernels of the temporal prompts ((3, 15, 25) over
    (T, N, D)), whose direct backward runs ~10x slower than its forward on CPU.
    """
    dims = (-3, -2, -1)
    sizes = x.shape[-3:]
    pads = [k // 2 for k in weight.shape[-3:]]
    # Circular convolution of length >= L + k//2 leaves the "same" window [k//2, k//2 + L) free of wrap-around.
    fft_sizes = [_fft_size(n + p) for n, p in zip(sizes, pads)]
    xf = torch.fft.rfftn(x.float(), s=fft_sizes, dim=dims)  # [B, C_in, *F]
    # Cross-correlation = convolution with the flipped kernel.
    wf = torch.fft.rfftn(weight.float().flip(dims), s=fft_sizes, dim=dims)  # [C_out, C_in, *F]
    yf = (xf.unsqueeze(1) * wf.unsqueeze(0)).sum(2)  # [B, C_out, C_in, *F] -> [B, C_out, *F]
    y = torch.fft.irfftn(yf, s=fft_sizes, dim=dims)
    y = y[..., pads[0]:pads[0] + sizes[0], pads[1]:pads[1] + sizes[1], pads[2]:pads[2] + sizes[2]]
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1, 1)
    return y.to(x.dtype)


def volume_conv(conv: nn.Conv3d, x: torch.Tensor, impl: str) -> torch.Tensor:
    """Apply a same-padded ``conv`` by the chosen implementation (``model.temporal.conv_impl``)."""
    if impl == "direct":
        return conv(x)
    if impl == "fft":
        return fft_conv3d(x, conv.weight, conv.bias)
    raise ValueError(f"model.temporal.conv_impl = {impl!r}; expected one of {', '.join(CONV_IMPLS)}")


def minmax_normalize(w: torch.Tensor, per: str) -> torch.Tensor:
    """Min-max to [0, 1] per video (``per='video'``) or over the whole batch (``per='batch'``). ``[B, T] -> [B, T]``."""
    if per == "video":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    elif per == "batch":
        lo, hi = w.amin(), w.amax()
    else:
        raise ValueError(f"model.temporal.normalize = {per!r}; expected 'video' or 'batch'")
    spread = hi - lo
    return torch.where(spread > _STATIC_RANGE, (w - lo) / spread.clamp_min(_STATIC_RANGE), torch.zeros_like(w))


class FrameVariation(nn.Module):
    """How much each frame differs from the previous one, in [0, 1]: ``w [B, T]``.

    ``similarity`` (default): 1 - cos between consecutive frames' mean patch tokens, frame 0 takes
    frame 1's value. ``reference``: a learned Conv3d(1 -> 1, (5, 11, 11)) over the generator's
    attended tokens ``[B, 1, T, N, D]``, plus itself times the spatial mask, averaged over (N, D).
    """

    reference_kernel = (5, 11, 11)

    def __init__(self, mode: str = "similarity", normalize: str = "video", conv_impl: str = "fft"):
        super().__init__()
        if mode not in ("similarity", "reference"):
            raise ValueError(f"model.temporal.variation = {mode!r}; expected 'similarity' or 'reference'")
        self.mode, self.normalize, self.conv_impl = mode, normalize, conv_impl
        self.conv = nn.Conv3d(1, 1, self.reference_kernel, padding=_same_padding(self.reference_kernel)) if mode == "reference" else None

    def raw(self, tokens: torch.Tensor, attended: torch.Tensor | None = None, spatial_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = tokens.shape[:2]
        if self.conv is None:
            if T == 1:
                return tokens.new_zeros(B, 1, dtype=torch.float32)
            f = tokens.float().mean(2)  # [B, T, N, D] -> [B, T, D]
            change = 1 - F.cosine_similarity(f[:, 1:], f[:, :-1], dim=-1)  # [B, T-1]
            return torch.cat([change[:, :1], change], dim=1)  # [B, T]
        x = attended if attended is not None else tokens
        c = volume_conv(self.conv, x.unsqueeze(1).to(self.conv.weight.dtype), self.conv_impl).squeeze(1)  # [B, 1, T, N, D] -> [B, T, N, D]
        if spatial_mask is not None:
            c = c + c * spatial_mask.unsqueeze(-1).to(c.dtype)  # mask [B, T, N]
        return c.float().mean((2, 3))  # [B, T]

    def forward(self, tokens: torch.Tensor, attended: torch.Tensor | None = None, spatial_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens [B, T, N, D]`` (patch tokens), optional ``attended [B, T, N, D]``, ``spatial_mask [B, T, N]`` -> ``[B, T]``."""
        return minmax_normalize(self.raw(tokens, attended, spatial_mask), self.normalize)


class TemporalPromptGenerator(nn.Module):
    """Cross-frame attention, a 3D conv over the (T, N, D) volume, an MLP over the patch axis to K tokens.

    Args:
        width: D, the vision width. heads: D / 64 (at least 1).
        num_patches: N = (image_size / patch_size)^2, from the CLIP config.
        num_tokens: K prompt tokens per frame.
        conv_channels, conv_kernel: the (T, N, D) conv, reference 9 and (3, 15, 25).
        conv_impl: ``fft`` (default) or ``direct``: how that conv is computed; same parameters, same map.
    """

    def __init__(self, width: int, num_patches: int, num_tokens: int = 4, conv_channels: int = 9,
                 conv_kernel: tuple[int, int, int] = (3, 15, 25), dropout: float = 0.0, mlp_hidden: int = 16,
                 conv_impl: str = "fft"):
        super().__init__()
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"model.temporal.conv_impl = {conv_impl!r}; expected one of {', '.join(CONV_IMPLS)}")
        self.conv_impl = conv_impl
        heads = max(1, width // 64)
        while width % heads:  # odd widths (tiny test models): the largest divisor below D/64
            heads -= 1
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        kernel = tuple(int(k) for k in conv_kernel)
        self.conv = nn.Sequential(
            nn.Conv3d(1, conv_channels, kernel, padding=_same_padding(kernel)),
            nn.PReLU(),
            nn.Conv3d(conv_channels, 1, 1),  # channel mix back to one volume
        )
        self.patch_mlp = nn.Sequential(nn.Linear(num_patches, mlp_hidden), nn.PReLU(), nn.Linear(mlp_hidden, num_tokens))
        # Zero-initialised output: the prompts start at exactly zero and grow only along directions
        # the loss rewards. A random start injects label-independent noise into every frame that
        # training first has to suppress, and that suppresses the frame-order signal with it
        # (seen on the synthetic motion-direction task: from a random start the order signal
        # shrank over the first epochs in some seeds and never recovered; from zero it grew).
        nn.init.zeros_(self.patch_mlp[-1].weight)
        nn.init.zeros_(self.patch_mlp[-1].bias)
        self.dropout = nn.Dropout(dropout)
        self.num_patches = num_patches

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens [B, T, N, D]`` -> (prompts ``q [B, T, K, D]``, attended tokens ``[B, T, N, D]``)."""
        B, T, N, D = tokens.shape
        if N != self.num_patches:
            raise ValueError(f"temporal prompt generator built for {self.num_patches} patches per frame, got {N}")
        x = tokens.reshape(B, T * N, D)  # [B, T, N, D] -> [B, T*N, D]
        mixed, _ = self.attn(x, x, x, need_weights=False)
        # Residual: at initialisation the attention is near uniform and its output is almost the
        # same vector for every (t, n); without the skip the conv below would see no frame order.
        attended = (x + mixed).view(B, T, N, D)
        v = self.conv[1](volume_conv(self.conv[0], attended.unsqueeze(1), self.conv_impl))  # [B, 1, T, N, D] -> [B, C, T, N, D]
        v = self._mix_channels(v)  # [B, C, T, N, D] -> [B, T, N, D]
        q = self.patch_mlp(self.dropout(v).transpose(-1, -2))  # [B, T, D, N] -> [B, T, D, K]
        return q.transpose(-1, -2), attended  # [B, T, K, D]


    def _mix_channels(self, v: torch.Tensor) -> torch.Tensor:
        """The 1x1x1 conv back to one volume. ``fft`` computes it as a weighted sum over channels: the same
        numbers, without the CPU Conv3d backward that costs more than the FFT convolution itself."""
        mix = self.conv[2]
        if self.conv_impl == "direct":
            return mix(v).squeeze(1)
        w = mix.weight.view(-1).to(v.dtype)  # [1, C, 1, 1, 1] -> [C]
        return torch.einsum("bctnd,c->btnd", v, w) + mix.bias.to(v.dtype)


def weight_temporal_prompts(q: torch.Tensor, w: torch.Tensor, insertion: str = "soft", top_m: int = 4) -> torch.Tensor:
    """Dynamic insertion. ``q [B, T, K, D]``, ``w [B, T]`` -> ``[B, T, K, D]``.

    ``soft``: ``q_t * (1 + w_t)``. ``hard``: ``q_t`` in the ``top_m`` most varying frames, zero elsewhere.
    """
    if insertion == "soft":
        return q * (1 + w.to(q.dtype))[:, :, None, None]
    if insertion == "hard":
        m = min(int(top_m), w.shape[1])
        # Stable sort: on ties (frame 0 always ties frame 1) the earlier frame wins, on every device.
        top = w.sort(dim=1, descending=True, stable=True).indices[:, :m]
        keep = torch.zeros_like(w).scatter_(1, top, 1.0)  # [B, T]
        return q * keep.to(q.dtype)[:, :, None, None]
    raise ValueError(f"model.temporal.insertion = {insertion!r}; expected 'soft' or 'hard'")


class TemporalPrompter(nn.Module):
    """Frame variation + generator + insertion: patch tokens ``[B, T, N, D]`` -> ``alpha * weighted q [B, T, K, D]``."""

    def __init__(self, cfg: Any, width: int, num_patches: int):
        super().__init__()
        self.alpha = float(cfg.alpha)
        self.insertion, self.top_m = str(cfg.insertion), int(cfg.hard_top_m)
        # Configs saved before conv_impl existed get the default.
        conv_impl = str(getattr(cfg, "conv_impl", "fft"))
        self.variation = FrameVariation(cfg.variation, cfg.normalize, conv_impl)
        self.generator = TemporalPromptGenerator(
            width, num_patches, int(cfg.num_tokens), int(cfg.conv_channels), tuple(cfg.conv_kernel), float(cfg.dropout),
            conv_impl=conv_impl,
        )
        self.last_weights: torch.Tensor | None = None  # [B, T]

    def forward(self, tokens: torch.Tensor, spatial_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (prompts ``[B, T, K, D]`` already scaled by alpha, frame weights ``w [B, T]``)."""
        q, attended = self.generator(tokens)
        w = self.variation(tokens, attended, spatial_mask)
        self.last_weights = w.detach()
        return self.alpha * weight_temporal_prompts(q, w, self.insertion, self.top_m), w
