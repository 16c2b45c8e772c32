"""Inter-frame temporal prompts (docs/method.md, "Temporal prompts").

From the patch tokens after CLIP's pre-LayerNorm, :class:`TemporalPromptGenerator` makes K prompt
tokens per frame, :class:`FrameVariation` says how much each frame differs from the previous one,
and :func:`weight_temporal_prompts` scales the tokens by ``(1 + w_t)`` (soft) or keeps them only in
the top-m most varying frames (hard). The video model adds the result to the deep prompt slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stop_lightning.choices import check_choice
from stop_lightning.models.layers import attention_heads, same_padding
from stop_lightning.schema import TemporalPromptConfig

# Below this spread of raw frame variation a clip counts as static: normalising would blow
# floating-point noise up to [0, 1].
_STATIC_RANGE = 1e-5


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
    # Circular convolution of length >= L + k//2 leaves the "same" window [k//2, k//2 + L) free of
    # wrap-around.
    fft_sizes = [_fft_size(n + p) for n, p in zip(sizes, pads)]
    xf = torch.fft.rfftn(x.float(), s=fft_sizes, dim=dims)  # [B, C_in, *F]
    # Cross-correlation = convolution with the flipped kernel.
    wf = torch.fft.rfftn(weight.float().flip(dims), s=fft_sizes, dim=dims)  # [C_out, C_in, *F]
    yf = (xf.unsqueeze(1) * wf.unsqueeze(0)).sum(2)  # [B, C_out, C_in, *F] -> [B, C_out, *F]
    y = torch.fft.irfftn(yf, s=fft_sizes, dim=dims)
    y = y[..., pads[0] : pads[0] + sizes[0], pads[1] : pads[1] + sizes[1], pads[2] : pads[2] + sizes[2]]
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1, 1)
    return y.to(x.dtype)


def volume_conv(conv: nn.Conv3d, x: torch.Tensor, impl: str) -> torch.Tensor:
    """Apply a same-padded ``conv`` by the chosen implementation (``model.temporal.conv_impl``)."""
    if check_choice("model.temporal.conv_impl", impl) == "direct":
        return conv(x)
    return fft_conv3d(x, conv.weight, conv.bias)


def minmax_normalize(w: torch.Tensor, per: str) -> torch.Tensor:
    """Min-max to [0, 1] per video (``per='video'``) or over the whole batch (``per='batch'``).
    ``[B, T] -> [B, T]``."""
    if check_choice("model.temporal.normalize", per) == "video":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    else:
        lo, hi = w.amin(), w.amax()
    spread = hi - lo
    return torch.where(
        spread > _STATIC_RANGE, (w - lo) / spread.clamp_min(_STATIC_RANGE), torch.zeros_like(w)
    )


class FrameVariation(nn.Module):
    """How much each frame differs from the previous one, in [0, 1]: ``w [B, T]``.

    ``similarity`` (default): 1 - cos between consecutive frames' mean patch tokens, frame 0 takes
    frame 1's value. ``reference``: a learned Conv3d(1 -> 1, (5, 11, 11)) over the generator's
    attended tokens ``[B, 1, T, N, D]``, plus itself times the spatial mask, averaged over (N, D).
    """

    reference_kernel = (5, 11, 11)

    def __init__(self, cfg: TemporalPromptConfig):
        super().__init__()
        self.mode = check_choice("model.temporal.variation", cfg.variation)
        self.normalize = check_choice("model.temporal.normalize", cfg.normalize)
        self.conv_impl = check_choice("model.temporal.conv_impl", cfg.conv_impl)
        pad = same_padding(self.reference_kernel, "FrameVariation.reference_kernel")
        self.conv = nn.Conv3d(1, 1, self.reference_kernel, padding=pad) if self.mode == "reference" else None

    def raw(
        self,
        tokens: torch.Tensor,
        attended: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T = tokens.shape[:2]
        if self.conv is None:
            if T == 1:
                return tokens.new_zeros(B, 1, dtype=torch.float32)
            f = tokens.float().mean(2)  # [B, T, N, D] -> [B, T, D]
            change = 1 - F.cosine_similarity(f[:, 1:], f[:, :-1], dim=-1)  # [B, T-1]
            return torch.cat([change[:, :1], change], dim=1)  # [B, T]
        x = attended if attended is not None else tokens
        c = volume_conv(self.conv, x.unsqueeze(1).to(self.conv.weight.dtype), self.conv_impl).squeeze(
            1
        )  # [B, 1, T, N, D] -> [B, T, N, D]
        if spatial_mask is not None:
            c = c + c * spatial_mask.unsqueeze(-1).to(c.dtype)  # mask [B, T, N]
        return c.float().mean((2, 3))  # [B, T]

    def forward(
        self,
        tokens: torch.Tensor,
        attended: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``tokens [B, T, N, D]`` (patch tokens), optional ``attended [B, T, N, D]``,
        ``spatial_mask [B, T, N]`` -> ``[B, T]``."""
        return minmax_normalize(self.raw(tokens, attended, spatial_mask), self.normalize)


class TemporalPromptGenerator(nn.Module):
    """Cross-frame attention, two 3D convs over the (T, N, D) volume, an MLP over the patch axis to K tokens.

    Args:
        cfg: the ``model.temporal`` section: ``num_tokens`` (K), ``conv_channels`` and ``conv_kernel``
            (reference 9 and (3, 15, 25)), ``out_conv`` (the second conv: ``pointwise`` 1x1x1, or
            ``full`` with ``conv_kernel`` as in the authors' code), ``attention_residual``,
            ``zero_init``, ``dropout``, ``conv_impl`` (``fft`` or ``direct``: same parameters, same map).
        width: D, the vision width (heads: :func:`~stop_lightning.models.layers.attention_heads`).
        num_patches: N = (image_size / patch_size)^2, from the CLIP config.
    """

    mlp_hidden = 16

    def __init__(self, cfg: TemporalPromptConfig, width: int, num_patches: int):
        super().__init__()
        self.conv_impl = check_choice("model.temporal.conv_impl", cfg.conv_impl)
        self.out_conv = check_choice("model.temporal.out_conv", cfg.out_conv)
        self.attention_residual = bool(cfg.attention_residual)
        channels = int(cfg.conv_channels)
        self.attn = nn.MultiheadAttention(width, attention_heads(width), batch_first=True)
        kernel = tuple(int(k) for k in cfg.conv_kernel)
        pad = same_padding(kernel, "model.temporal.conv_kernel")
        self.conv_in = nn.Conv3d(1, channels, kernel, padding=pad)
        self.act = nn.PReLU()
        # Back to one volume: a channel mix (pointwise) or a second full-kernel conv (the authors').
        if self.out_conv == "pointwise":
            self.conv_out = nn.Conv3d(channels, 1, 1)
        else:
            self.conv_out = nn.Conv3d(channels, 1, kernel, padding=pad)
        hidden = self.mlp_hidden
        K = int(cfg.num_tokens)
        self.patch_mlp = nn.Sequential(nn.Linear(num_patches, hidden), nn.PReLU(), nn.Linear(hidden, K))
        if cfg.zero_init:
            # Zero-initialised output: the prompts start at exactly zero and grow only along directions
            # the loss rewards. A random start injects label-independent noise into every frame that
            # training first has to suppress, and that suppresses the frame-order signal with it
            # (seen on the synthetic motion-direction task: from a random start the order signal
            # shrank over the first epochs in some seeds and never recovered; from zero it grew).
            nn.init.zeros_(self.patch_mlp[-1].weight)
            nn.init.zeros_(self.patch_mlp[-1].bias)
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.num_patches = num_patches

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens [B, T, N, D]`` -> (prompts ``q [B, T, K, D]``, attended tokens ``[B, T, N, D]``)."""
        B, T, N, D = tokens.shape
        if N != self.num_patches:
            raise ValueError(
                f"temporal prompt generator built for {self.num_patches} patches per frame, got {N}"
            )
        x = tokens.reshape(B, T * N, D)  # [B, T, N, D] -> [B, T*N, D]
        mixed, _ = self.attn(x, x, x, need_weights=False)
        # Residual (default): at initialisation the attention is near uniform and its output is almost
        # the same vector for every (t, n); without the skip the conv below would see no frame order.
        attended = (x + mixed if self.attention_residual else mixed).view(B, T, N, D)
        v = self.act(volume_conv(self.conv_in, attended.unsqueeze(1), self.conv_impl))  # [B, C, T, N, D]
        v = self._to_one_volume(v)  # [B, C, T, N, D] -> [B, T, N, D]
        q = self.patch_mlp(self.dropout(v).transpose(-1, -2))  # [B, T, D, N] -> [B, T, D, K]
        return q.transpose(-1, -2), attended  # [B, T, K, D]

    def _to_one_volume(self, v: torch.Tensor) -> torch.Tensor:
        """``conv_out``. Pointwise under ``fft`` is computed as a weighted sum over channels: the same
        numbers, without the CPU Conv3d backward that costs more than the FFT convolution itself."""
        if self.out_conv == "full" or self.conv_impl == "direct":
            return volume_conv(self.conv_out, v, self.conv_impl).squeeze(1)
        w = self.conv_out.weight.view(-1).to(v.dtype)  # [1, C, 1, 1, 1] -> [C]
        return torch.einsum("bctnd,c->btnd", v, w) + self.conv_out.bias.to(v.dtype)


def weight_temporal_prompts(
    q: torch.Tensor, w: torch.Tensor, insertion: str = "soft", top_m: int = 4
) -> torch.Tensor:
    """Dynamic insertion. ``q [B, T, K, D]``, ``w [B, T]`` -> ``[B, T, K, D]``.

    ``soft``: ``q_t * (1 + w_t)``. ``hard``: ``q_t`` in the ``top_m`` most varying frames, zero elsewhere.
    """
    if check_choice("model.temporal.insertion", insertion) == "soft":
        return q * (1 + w.to(q.dtype))[:, :, None, None]
    m = min(int(top_m), w.shape[1])
    # Stable sort: on ties (frame 0 always ties frame 1) the earlier frame wins, on every device.
    top = w.sort(dim=1, descending=True, stable=True).indices[:, :m]
    keep = torch.zeros_like(w).scatter_(1, top, 1.0)  # [B, T]
    return q * keep.to(q.dtype)[:, :, None, None]


class TemporalPrompter(nn.Module):
    """Frame variation + generator + insertion: patch tokens ``[B, T, N, D]`` ->
    ``alpha * weighted q [B, T, K, D]``."""

    def __init__(self, cfg: TemporalPromptConfig, width: int, num_patches: int):
        super().__init__()
        self.alpha = float(cfg.alpha)
        self.insertion = check_choice("model.temporal.insertion", cfg.insertion)
        self.top_m = int(cfg.hard_top_m)
        self.variation = FrameVariation(cfg)
        self.generator = TemporalPromptGenerator(cfg, width, num_patches)
        self.last_weights: torch.Tensor | None = None  # [B, T]

    def forward(
        self, tokens: torch.Tensor, spatial_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (prompts ``[B, T, K, D]`` already scaled by alpha, frame weights ``w [B, T]``)."""
        q, attended = self.generator(tokens)
        w = self.variation(tokens, attended, spatial_mask)
        self.last_weights = w.detach()
        return self.alpha * weight_temporal_prompts(q, w, self.insertion, self.top_m), w
