"""Pictures of what the prompts do: the spatial prompt mask over a clip's frames and the
frame-variation weights of the temporal prompts.

The figure functions serve the training callback (:class:`stop_lightning.callbacks.PromptImageLogger`:
PNG files in the run folder, images in W&B), ``notebooks/explore_checkpoint.ipynb`` and the sweep
plot. They draw on standalone matplotlib ``Figure`` objects (Agg), never on pyplot's global state,
so they are safe in worker threads and headless runs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from stop_lightning.fileio import atomic_write

MASK_COLOR = (255, 40, 40)
MASK_OPACITY = 0.45


# ------------------------------------------------------------------------------ arrays
def denormalize(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """CLIP-normalised frames ``[T, 3, H, W]`` -> displayable uint8 ``[T, H, W, 3]``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = video.detach().float().cpu() * std_t + mean_t  # back to [0, 1]
    return (
        (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    )  # [T, 3, H, W] -> [T, H, W, 3]


def upsample_mask(mask: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray:
    """Patch mask ``[T, g, g]`` -> pixel mask ``[T, H, W]`` in [0, 1] (each patch covers its pixels)."""
    m = (
        mask.detach().float().cpu().numpy()
        if isinstance(mask, torch.Tensor)
        else np.asarray(mask, dtype=np.float32)
    )
    g_rows, g_cols = m.shape[-2:]
    rows = np.arange(height) * g_rows // height  # pixel row -> patch row
    cols = np.arange(width) * g_cols // width
    return m[:, rows][:, :, cols].clip(0, 1)


def overlay_mask(
    frames: np.ndarray,
    mask: np.ndarray | torch.Tensor,
    color: Sequence[int] = MASK_COLOR,
    opacity: float = MASK_OPACITY,
) -> np.ndarray:
    """Tint the masked patches of uint8 frames ``[T, H, W, 3]``; pixels outside the mask are unchanged."""
    t, h, w, _ = frames.shape
    m = upsample_mask(mask, h, w)[..., None] * opacity  # [T, H, W, 1]
    tinted = frames.astype(np.float32) * (1 - m) + np.asarray(color, dtype=np.float32) * m
    return tinted.round().astype(np.uint8)


# ------------------------------------------------------------------------------ figures
def spatial_mask_figure(
    frames: np.ndarray, mask: np.ndarray | torch.Tensor | None, title: str = ""
) -> Figure:
    """One panel per frame: the frame with its spatial prompt mask (the top-k patches) tinted."""
    shown = overlay_mask(frames, mask) if mask is not None else frames
    t = shown.shape[0]
    fig = Figure(figsize=(1.6 * t, 2.0), layout="constrained")
    axes = fig.subplots(1, t, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.imshow(shown[i])
        ax.set_title(f"t={i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title or "spatial prompt mask (tinted: top-k patches)", fontsize=9)
    return fig


def frame_weight_figure(weights: np.ndarray | torch.Tensor, title: str = "") -> Figure:
    """Bar per frame: the frame variation w_t in [0, 1] that scales the temporal prompts by (1 + w_t)."""
    w = (
        weights.detach().float().cpu().numpy()
        if isinstance(weights, torch.Tensor)
        else np.asarray(weights, dtype=np.float32)
    )
    fig = Figure(figsize=(max(3.0, 0.45 * len(w) + 1.5), 2.4), layout="constrained")
    ax = fig.subplots()
    ax.bar(np.arange(len(w)), w, color="tab:blue")
    ax.set_xticks(np.arange(len(w)))
    ax.set_xlabel("frame t")
    ax.set_ylabel("w_t")
    ax.set_ylim(0, max(1.0, float(w.max()) if len(w) else 1.0) * 1.05)
    ax.set_title(title or "frame variation weights (temporal prompts x (1 + w_t))", fontsize=9)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG, atomically."""
    return atomic_write(path, figure_png(fig, dpi))
