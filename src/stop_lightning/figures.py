"""Pictures of what the prompts do (the spatial prompt mask over a clip's frames and the
frame-variation weights of the temporal prompts) and of a run (its training curve and its test
confusion matrix).

The figure functions serve the training callbacks (:class:`stop_lightning.callbacks.PromptImageLogger`:
PNG files in the run folder, images in W&B and TensorBoard; :class:`~stop_lightning.callbacks.RunFigures`),
``notebooks/explore_checkpoint.ipynb`` and the sweep plot. They draw on standalone matplotlib ``Figure``
objects (Agg), never on pyplot's global state, so they are safe in worker threads and headless runs.
A title is wrapped to its figure's width (:func:`wrap_to_width`), so a long clip id is never cut off.
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
TITLE_SIZE = 9  # points
TITLE_FILL = 0.92  # of the figure's width a title line may take (the rest is margin)
LINE_HEIGHT_IN = 0.17  # inches a further title line adds to a figure's height
CONFUSION_CMAP = "Blues"
CONFUSION_NUMBERS_UP_TO = 25  # classes: more, and the cells are too small for their counts
CONFUSION_NAMES_UP_TO = 60  # classes: more, and the axes show class indices without names


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


# ------------------------------------------------------------------------------ titles
def text_width_pt(text: str, size: float) -> float:
    """Width of one line of ``text`` in points at font ``size``, by the default font's metrics."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    width, _, _ = text_to_path.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return width


def wrap_to_width(text: str, width_in: float, size: float = TITLE_SIZE) -> str:
    """``text`` broken into lines that fit ``TITLE_FILL`` of ``width_in`` inches: at spaces, and inside
    a word (a long clip id or path) only where the word alone is too wide."""
    room = width_in * 72 * TITLE_FILL
    space = text_width_pt("a a", size) - text_width_pt("aa", size)
    lines: list[tuple[str, float]] = []  # (line, its width in points)
    for word in text.split():
        width = text_width_pt(word, size)
        if lines and lines[-1][1] + space + width <= room:
            lines[-1] = (f"{lines[-1][0]} {word}", lines[-1][1] + space + width)
            continue
        while width > room and len(word) > 1:  # the longest head of the word that fits, found by halving
            low, high = 1, len(word) - 1
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if text_width_pt(word[:mid], size) <= room else (low, mid - 1)
            lines.append((word[:low], 0.0))
            word = word[low:]
            width = text_width_pt(word, size)
        lines.append((word, width))
    return "\n".join(line for line, _ in lines)


def titled_size(title: str, width_in: float, height_in: float) -> tuple[str, tuple[float, float]]:
    """The wrapped title and a figure size grown by its extra lines."""
    wrapped = wrap_to_width(title, width_in)
    return wrapped, (width_in, height_in + LINE_HEIGHT_IN * wrapped.count("\n"))


# ------------------------------------------------------------------------------ figures
def spatial_mask_figure(
    frames: np.ndarray, mask: np.ndarray | torch.Tensor | None, title: str = ""
) -> Figure:
    """One panel per frame: the frame with its spatial prompt mask (the top-k patches) tinted."""
    shown = overlay_mask(frames, mask) if mask is not None else frames
    t = shown.shape[0]
    title, size = titled_size(title or "spatial prompt mask (tinted: top-k patches)", 1.6 * t, 2.0)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, t, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.imshow(shown[i])
        ax.set_title(f"t={i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def frame_weight_figure(weights: np.ndarray | torch.Tensor, title: str = "") -> Figure:
    """Bar per frame: the frame variation w_t in [0, 1] that scales the temporal prompts by (1 + w_t)."""
    w = (
        weights.detach().float().cpu().numpy()
        if isinstance(weights, torch.Tensor)
        else np.asarray(weights, dtype=np.float32)
    )
    title, size = titled_size(
        title or "frame variation weights (temporal prompts x (1 + w_t))", max(3.0, 0.45 * len(w) + 1.5), 2.4
    )
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    ax.bar(np.arange(len(w)), w, color="tab:blue")
    ax.set_xticks(np.arange(len(w)))
    ax.set_xlabel("frame t")
    ax.set_ylabel("w_t")
    ax.set_ylim(0, max(1.0, float(w.max()) if len(w) else 1.0) * 1.05)
    fig.suptitle(title, fontsize=TITLE_SIZE)  # centred on the figure, whose width it was wrapped to
    return fig


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """``counts [C, C + 1]`` (rows: true class; columns: predicted class, then the clips whose video
    could not be read) as a heat map, each cell's count written in it while there are few classes."""
    counts = np.asarray(counts)
    num_classes = counts.shape[0]
    side = float(np.clip(0.35 * num_classes + 2.5, 4.0, 16.0))
    total = int(counts.sum())
    title, size = titled_size(
        title or f"confusion matrix, {total} test clips (rows: true class, columns: predicted)", side, side
    )
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    top = max(int(counts.max()) if counts.size else 0, 1)
    ax.imshow(counts, cmap=CONFUSION_CMAP, vmin=0, vmax=top, interpolation="nearest", aspect="auto")
    if num_classes <= CONFUSION_NUMBERS_UP_TO:
        for (row, col), value in np.ndenumerate(counts):
            color = "white" if value > top / 2 else "black"
            ax.text(col, row, str(int(value)), ha="center", va="center", fontsize=7, color=color)
    if num_classes <= CONFUSION_NAMES_UP_TO:
        ax.set_yticks(np.arange(num_classes), list(class_names), fontsize=7)
        ax.set_xticks(np.arange(num_classes + 1), [*class_names, "unreadable"], fontsize=7, rotation=90)
    ax.set_xlabel("predicted class" + ("" if num_classes <= CONFUSION_NAMES_UP_TO else " (index)"))
    ax.set_ylabel("true class" + ("" if num_classes <= CONFUSION_NAMES_UP_TO else " (index)"))
    fig.suptitle(title, fontsize=TITLE_SIZE)  # centred on the figure, whose width it was wrapped to
    return fig


def training_curve_figure(
    losses: dict[str, list[tuple[float, float]]], metric: str, points: list[tuple[float, float]], title: str
) -> Figure:
    """Two panels against the optimiser step: each loss series in ``losses`` (name -> [(step, value)]),
    and the validation ``metric`` at each ``points`` (step, value)."""
    title, size = titled_size(title, 8.0, 3.2)
    fig = Figure(figsize=size, layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    for name, series in losses.items():
        loss_ax.plot(*zip(*series), label=name, linewidth=1.2)
    loss_ax.set_ylabel("loss")
    if metric and points:
        metric_ax.plot(*zip(*points), marker="o", color="tab:orange", label=metric)
    else:
        metric_ax.text(0.5, 0.5, f"no {metric or 'validation metric'} logged", ha="center", va="center")
    metric_ax.set_ylabel(metric or "validation metric")
    for ax in (loss_ax, metric_ax):
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_rgb(fig: Figure, dpi: int = 100) -> np.ndarray:
    """The figure as pixels, uint8 ``[H, W, 3]`` (what TensorBoard's ``add_image`` takes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # [H, W, 4] -> [H, W, 3]


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG, atomically."""
    return atomic_write(path, figure_png(fig, dpi))
