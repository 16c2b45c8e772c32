"""The pictures a user looks at after a run: the confusion-matrix PNG beside its CSV, the training
curve, prompt images in TensorBoard, and titles that fit their figure. One tiny ``stop-lightning train``
through the CLI serves the end-to-end checks (with a TensorBoard logger when tensorboard is installed)."""

import csv
import importlib.util
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from stop_lightning.callbacks import RunFigures
from stop_lightning.figures import (
    confusion_figure,
    figure_png,
    frame_weight_figure,
    save_figure,
    spatial_mask_figure,
    training_curve_figure,
)
from stop_lightning.loggers import metric_series
from stop_lightning.tasks.recognition import read_confusion, save_confusion
from test_callbacks import png_size

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture(scope="module")
def cli_run(cache_dir, tmp_path_factory):
    """``stop-lightning train demo``: 4 classes, 1 epoch, prompt images every step, TensorBoard too
    when it is installed."""
    from stop_lightning.cli import main

    out = tmp_path_factory.mktemp("figures_run")
    board = ["loggers.tensorboard.class_path=lightning.pytorch.loggers.TensorBoardLogger"]
    argv = [
        "train",
        "demo",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "data.synthetic_clips_per_class=8",
        "data.synthetic_classes=4",
        "data.synthetic_looks=0",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "logger.wandb=false",
        "logger.log_images_every_n_steps=1",
        *(board if HAS_TENSORBOARD else []),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STOP_RUN_STAMP", "figs")
        assert main(argv) == 0
    return out / "demo" / "figs"


def parse_confusion(path: Path) -> tuple[list[str], np.ndarray]:
    """The test's own reading of a confusion CSV: names, counts [C, C + 1]."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r[0] for r in rows[1:]], np.array([[int(v) for v in r[1:]] for r in rows[1:]]).reshape(
        len(rows) - 1, len(rows[0]) - 1
    )


# ---------------------------------------------------------------------------------- titles
def fits(fig) -> None:
    """Everything drawn (title included) lies inside the canvas."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.get_tightbbox(renderer)  # inches
    width, height = fig.get_size_inches()
    assert box.x0 >= -0.01 and box.y0 >= -0.01 and box.x1 <= width + 0.01 and box.y1 <= height + 0.01, (
        box,
        (width, height),
    )


LONG_TITLES = [
    "frame variation weights, step 1200, clip v_ApplyEyeMakeup_g01_c01, class ApplyEyeMakeup (0)",
    "step 30, clip video7020: a man in a red shirt is explaining how to cook a vegetable curry on a stove",
    "step 4, clip " + "x" * 150,  # one word wider than the figure
    "W" * 90,
]


@pytest.mark.parametrize("title", LONG_TITLES)
def test_titles_are_never_cut_off(title):
    figures = [
        frame_weight_figure(np.linspace(0, 1, 1), title),  # the narrowest figure
        frame_weight_figure(np.linspace(0, 1, 32), title),
        spatial_mask_figure(np.zeros((2, 8, 8, 3), np.uint8), np.ones((2, 2, 2)), title),
        confusion_figure(np.ones((2, 3), int), ["a", "b"], title),
        training_curve_figure({"train/loss": [(0, 1.0), (1, 0.5)]}, "val/top1", [(1, 0.5)], title),
    ]
    for fig in figures:
        fits(fig)
        assert "".join(fig.get_suptitle().split()) == "".join(title.split())  # nothing dropped


# ---------------------------------------------------------------------------------- confusion matrix
def cell_colors(png: Path, fig, shape: tuple[int, int]) -> np.ndarray:
    """The colour of every cell of the heat map in the written PNG, ``[rows, cols, 3]`` in [0, 1], read
    near a cell's corner (its count is written in its centre)."""
    pixels = imread(png)[..., :3]  # [H, W, 3]
    ax = fig.axes[0]
    out = np.zeros((*shape, 3))
    for row in range(shape[0]):
        for col in range(shape[1]):
            x, y = ax.transData.transform((col - 0.38, row - 0.38))  # display: origin bottom left
            out[row, col] = pixels[pixels.shape[0] - 1 - int(y), int(x)]
    return out


@pytest.mark.parametrize(
    "counts, names",
    [
        ([[5, 0, 1, 2], [0, 0, 0, 0], [3, 1, 7, 0]], ["a, with comma", 'say "hi"', "c"]),  # a class unseen
        ([[0, 0]], ["only"]),  # one class, nothing tested
        ([[0, 0, 0], [0, 0, 9]], ["x", "y"]),  # every clip of y unreadable
    ],
)
def test_confusion_png_shows_the_counts_of_its_csv(counts, names, tmp_path):
    csv_path = save_confusion(torch.tensor(counts), names, tmp_path / "confusion_matrix.csv")
    expected_names, expected = parse_confusion(csv_path)
    read_names, read_counts = read_confusion(csv_path)
    assert read_names == expected_names == names and np.array_equal(read_counts.numpy(), expected)
    fig = confusion_figure(read_counts.numpy(), read_names)
    png = save_figure(fig, tmp_path / "confusion_matrix.png")
    cmap = matplotlib.colormaps["Blues"]
    want = np.array(cmap(expected / max(expected.max(), 1)))[..., :3]  # [rows, cols, 3]
    assert np.abs(cell_colors(png, fig, expected.shape) - want).max() <= 2 / 255


def test_motion_benchmark_reads_the_confusion_csv_in_any_class_order(tmp_path):
    from benchmarks.motion import read_confusion as benchmark_read

    path = save_confusion(torch.tensor([[1, 2, 0], [3, 4, 1]]), ["p, q", "r"], tmp_path / "c.csv")
    assert benchmark_read(path, ["r", "p, q"]).tolist() == [[4, 3], [2, 1]]


# ---------------------------------------------------------------------------------- training curve
def test_metric_series_reads_each_logged_value_at_its_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train/loss,val/top1,lr-AdamW\n"
        "0,0,2.5,,0.001\n"
        "0,1,,,0.001\n"  # a row without the loss
        "0,1,2.0,,\n"
        "0,1,,0.25,\n"  # validation at the end of epoch 0
        "1,3,1.5e-1,,\n"
        "1,3,,0.75,\n"
    )
    assert metric_series(path, ["train/loss", "val/top1", "absent"]) == {
        "train/loss": [(0.0, 2.5), (1.0, 2.0), (3.0, 0.15)],
        "val/top1": [(1.0, 0.25), (3.0, 0.75)],
        "absent": [],
    }


def expected_curve(run: Path) -> bytes:
    """The curve drawn from the test's own reading of the run's metrics.csv."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    loss = [(float(r["step"]), float(r["train/loss"])) for r in rows if r["train/loss"]]
    top1 = [(float(r["step"]), float(r["val/top1"])) for r in rows if r["val/top1"]]
    assert loss and top1
    title = "demo/figs: training loss and val/top1"
    return figure_png(training_curve_figure({"train/loss": loss}, "val/top1", top1, title))


@pytest.mark.slow
def test_a_cli_run_writes_the_training_curve_and_the_confusion_png(cli_run):
    curve = cli_run / RunFigures.CURVE_FILE
    width, height = png_size(curve)
    assert (width, height) == (800, 320)  # 8 x 3.2 inches at 100 dpi, a one-line title
    assert curve.read_bytes() == expected_curve(cli_run)
    names, counts = parse_confusion(cli_run / "confusion_matrix.csv")
    assert counts.sum() > 0 and len(names) == 4
    png = cli_run / "confusion_matrix.png"
    assert min(png_size(png)) >= 400  # 4 classes: at least 4 x 4 inches at 100 dpi
    assert png.read_bytes() == figure_png(confusion_figure(counts, names))
    assert not list(cli_run.rglob("*.tmp"))


# ---------------------------------------------------------------------------------- TensorBoard
@pytest.mark.slow
@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install tensorboard)")
def test_prompt_images_go_to_tensorboard(cli_run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    logged: dict[str, list] = {}
    files = sorted(cli_run.rglob("events.out.tfevents.*"))  # Lightning reopens the writer to test
    assert files
    for events in files:
        board = EventAccumulator(str(events), size_guidance={IMAGES: 0})  # 0: keep every image
        board.Reload()
        for tag in board.Tags()["images"]:
            logged.setdefault(tag, []).extend(board.Images(tag))
    assert set(logged) == {"prompts/spatial_mask", "prompts/frame_weights"}
    for name in ("spatial_mask", "frame_weights"):
        saved = sorted((cli_run / "images").glob(f"step*_{name}.png"))
        images = sorted(logged[f"prompts/{name}"], key=lambda e: e.step)
        # one image per saved PNG, at its step, with its size
        assert [e.step for e in images] == [int(p.name[4:10]) for p in saved] and saved
        assert [(e.width, e.height) for e in images] == [png_size(p) for p in saved]
