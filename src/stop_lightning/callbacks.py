"""Every callback of a run and the list a Trainer gets (:func:`build_callbacks`).

The project's own callbacks are always on: run info and RNG state in checkpoints, data health
counts, checkpoints, throughput, prompt images and the run's figures (training curve, confusion
matrix). The ``callbacks`` config section adds more (LearningRateMonitor by default;
:mod:`stop_lightning.config_entries`).
"""

from __future__ import annotations

import ast
import csv
import datetime
import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from stop_lightning.config_entries import build_components
from stop_lightning.data.datamodules import VideoDataModule
from stop_lightning.data.datasets import DataHealth
from stop_lightning.figures import (
    confusion_figure,
    denormalize,
    figure_rgb,
    frame_weight_figure,
    save_figure,
    spatial_mask_figure,
    training_curve_figure,
)
from stop_lightning.loggers import metric_series, metrics_csv, run_name
from stop_lightning.models.tiny_clip import CLIP_MEAN, CLIP_STD
from stop_lightning.preemption import PreemptionCheckpoint
from stop_lightning.provenance import RUN_INFO_FILE
from stop_lightning.tasks.recognition import CONFUSION_FILE, read_confusion

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ checkpoint contents
class RunInfoInCheckpoint(Callback):
    """Checkpoints carry the run's versions, git state and CLIP source for `eval` to compare."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        path = self.run_dir / RUN_INFO_FILE
        info = json.loads(path.read_text()) if path.is_file() else {}
        checkpoint.setdefault("stop_lightning", {})["run_info"] = info


class RngStateInCheckpoint(Callback):
    """Saves and restores the torch/python/numpy RNG states, so dropout and any other random
    draw in the model continue after a resume exactly as in an uninterrupted run."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "python": repr(random.getstate()),
            "numpy": {
                "keys": torch.from_numpy(keys.astype("int64")),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(ast.literal_eval(state["python"]))
        n = state["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"])
        )
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class SamplerPositionInCheckpoint(Callback):
    """A checkpoint written mid-epoch (preemption) records how many training batches of the epoch
    are done; resuming from it, the DataModule's sampler starts at the next batch of that epoch, so
    no batch is seen twice or skipped (the order is a function of seed, epoch and position)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if 0 < done < trainer.num_training_batches:
            checkpoint.setdefault("stop_lightning", {})["sampler"] = {
                "epoch": int(trainer.current_epoch),
                "batches": int(done),
            }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        position = checkpoint.get("stop_lightning", {}).get("sampler")
        dm = getattr(trainer, "datamodule", None)
        if position and dm is not None and hasattr(dm, "resume_at"):
            dm.resume_at = (int(position["epoch"]), int(position["batches"]))


# ------------------------------------------------------------------------------ logged in training
class DataHealthCallback(L.Callback):
    """Logs the DataModule's per-epoch counts (bad videos skipped, FFmpeg warnings/errors, frames
    repeated past a video's real end) as ``data/<stage>_<count>`` and resets them."""

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, VideoDataModule):
            return
        counts = dm.epoch_summary(stage)
        for key in DataHealth.REPORTED:
            pl_module.log(f"data/{stage}_{key}", float(counts[key]), sync_dist=True, reduce_fx="sum")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")


class Throughput(Callback):
    """Logs training clips/s (all ranks' clips) as ``perf/clips_per_s`` every ``log_every_n_steps``,
    on the progress bar and to every logger.

    Not Lightning's ``ThroughputMonitor``: that one gives no rate before a 100-batch window fills (a
    short run gets none), writes to the loggers only, and synchronises the GPU after every batch.
    """

    def __init__(self) -> None:
        self._start = None
        self._clips = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        video = batch["video"] if isinstance(batch, dict) else None
        self._clips += int(video.shape[0]) * trainer.world_size if video is not None else 0
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0 and self._start is not None:
            elapsed = time.perf_counter() - self._start
            if elapsed > 0:
                pl_module.log("perf/clips_per_s", self._clips / elapsed, prog_bar=True, rank_zero_only=True)
            self._start, self._clips = time.perf_counter(), 0


class TextLog(Callback):
    """Plain text lines for logs that go to a file (a cluster job's stdout), where a progress bar is
    one endless line: every ``every_n_steps`` optimiser steps and at each epoch end, one line with
    epoch, step, train loss, validation metrics (epoch end), lr, clips/s, ETA and peak GPU memory::

        epoch 2/5 [20/80] step 180 | train/loss 0.6931 | lr 1.00e-03 | 9.6 clips/s | eta 0:12:31 | mem 123 MiB
        epoch 2/5 done step 240 | train/loss 0.6532 | val/loss 0.6412 | val/top1 0.6250 | lr ... | eta ...

    ``build_callbacks`` adds it when stdout is not a terminal; the progress bar stays for terminals.
    """

    def __init__(self, every_n_steps: int, stream=None) -> None:
        self.every_n_steps = int(every_n_steps)
        self.stream = stream
        self._fit_start = self._window_start = None
        self._start_step = 0
        self._clips = 0
        self._validated = False  # a validation ran since the last epoch line

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = self._window_start = time.perf_counter()
        self._start_step = trainer.global_step  # a resumed run: ETA from this session's pace
        self._clips = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        video = batch.get("video") if isinstance(batch, dict) else None
        self._clips += int(video.shape[0]) * trainer.world_size if video is not None else 0
        step = trainer.global_step
        if (
            self.every_n_steps > 0
            and step % self.every_n_steps == 0
            and (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        ):
            where = (
                f"[{batch_idx + 1:>{len(str(trainer.num_training_batches))}}/{trainer.num_training_batches}]"
            )
            self._emit(trainer, where, prefix="train/")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # An epoch without validation (trainer.check_val_every_n_epoch > 1) shows no val/ figures:
        # the callback metrics still hold the last validation's, which are not this epoch's.
        validated, self._validated = self._validated, False
        self._emit(trainer, "done" if validated else "done (no validation)", prefix="", with_val=validated)

    def _emit(self, trainer, where: str, prefix: str, with_val: bool = False) -> None:
        if not trainer.is_global_zero:
            return
        wanted = prefix or (("train/", "val/") if with_val else ("train/",))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(wanted)}
        now = time.perf_counter()
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {where} step {trainer.global_step}"]
        parts += [f"{k} {metrics[k]:.4f}" for k in sorted(metrics) if not k.endswith("_step")]
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        if self._window_start is not None and now > self._window_start:
            parts.append(f"{self._clips / (now - self._window_start):.1f} clips/s")
        parts.append(f"eta {self._eta(trainer, now)}")
        if torch.cuda.is_available():
            parts.append(f"mem {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
        print(" | ".join(parts), file=self.stream or sys.stdout, flush=True)
        self._window_start, self._clips = now, 0

    def _eta(self, trainer, now: float) -> str:
        done = trainer.global_step - self._start_step
        total = trainer.estimated_stepping_batches
        if done <= 0 or self._fit_start is None or not math.isfinite(total):
            return "?"
        seconds = (now - self._fit_start) / done * max(0, total - trainer.global_step)
        return str(datetime.timedelta(seconds=round(seconds)))


def clip_label(datamodule: Any, batch: dict[str, Any]) -> str:
    """``clip <id>, class <name>`` (recognition) or ``clip <id>: <first caption>`` (retrieval) for the
    batch's first clip; whatever of it the DataModule cannot tell is left out."""
    index = batch.get("index")
    datasets = getattr(datamodule, "datasets", None) or {}
    records = getattr(datasets.get("train"), "records", None)
    parts = []
    if index is not None and records is not None:
        record = records[int(index[0])]
        parts.append(f"clip {record.video_id or Path(record.path).stem}")
        if record.captions and "label" not in batch:
            parts[-1] += f": {record.captions[0]}"
    names = getattr(datamodule, "class_names", None)
    if "label" in batch and names:
        label = int(batch["label"][0])
        parts.append(f"class {names[label]} ({label})")
    return ", ".join(parts)


class PromptImageLogger(Callback):
    """Every ``every_n_steps`` optimiser steps, runs the model (eval mode, no gradient, RNG untouched)
    on the first clip of the training batch and saves ``<run_dir>/images/step<N>_spatial_mask.png``
    (the mask tinted over the frames) and ``step<N>_frame_weights.png``, titled with the clip id and
    its class; with a W&B or a TensorBoard logger they are logged as ``prompts/spatial_mask`` and
    ``prompts/frame_weights`` too."""

    def __init__(self, run_dir: str | Path, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(
                f"logger.log_images_every_n_steps must be >= 1 to log images, got {every_n_steps}"
            )
        self.image_dir = Path(run_dir) / "images"
        self.every_n_steps = int(every_n_steps)
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # after this batch's optimiser step
        # With gradient accumulation several batches end on the same step: draw once.
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        if trainer.is_global_zero and isinstance(batch, dict) and "video" in batch:
            label = clip_label(getattr(trainer, "datamodule", None), batch)
            self.log_prompts(trainer, pl_module, batch["video"][:1], step, label)

    def log_prompts(self, trainer, pl_module, video: torch.Tensor, step: int, label: str = "") -> list[Path]:
        """``video [1, T, 3, H, W]``: draw, save and log its mask and weights; returns the PNG paths.
        ``label`` (clip id and class) goes into both titles."""
        out = self._forward(trainer, pl_module, video)
        datamodule = getattr(trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", CLIP_MEAN), getattr(datamodule, "std", CLIP_STD)
        about = f"step {step}" + (f", {label}" if label else "")
        figures = {}
        if out.spatial_mask is not None:
            frames = denormalize(video[0], mean, std)
            figures["spatial_mask"] = spatial_mask_figure(
                frames, out.spatial_mask[0], f"spatial prompt mask (tinted), {about}"
            )
        if out.frame_weights is not None:
            figures["frame_weights"] = frame_weight_figure(
                out.frame_weights[0], f"frame variation weights, {about}"
            )
        paths = [
            save_figure(fig, self.image_dir / f"step{step:06d}_{name}.png") for name, fig in figures.items()
        ]
        for logger in trainer.loggers:
            for name, path in zip(figures, paths):
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"prompts/{name}", images=[str(path)], step=step, caption=[about])
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(
                        f"prompts/{name}", figure_rgb(figures[name]), global_step=step, dataformats="HWC"
                    )
        return paths

    @staticmethod
    def _forward(trainer, pl_module, video: torch.Tensor):
        # Eval mode (no dropout, so no random draws) and a forked RNG: drawing pictures must not
        # change what training does next, or a resumed run would differ from an uninterrupted one.
        modes = {m: m.training for m in pl_module.modules()}
        if video.is_cuda:
            devices = [video.device.index if video.device.index is not None else torch.cuda.current_device()]
        else:
            devices = []
        pl_module.eval()
        try:
            with (
                torch.no_grad(),
                torch.random.fork_rng(devices=devices),
                trainer.precision_plugin.forward_context(),
            ):
                return pl_module.model(video)
        finally:
            for m, mode in modes.items():
                m.training = mode


class RunFigures(Callback):
    """The pictures of a run, written atomically into its folder: ``training_curve.png`` at the end of
    every fit (the loss and the validation metric ``checkpoint.monitor`` against the step, read back
    from the metrics CSV; a resumed run's CSV holds the earlier epochs too) and, after a test that wrote
    ``confusion_matrix.csv`` (recognition), ``confusion_matrix.png`` drawn from that file."""

    CURVE_FILE = "training_curve.png"

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self._test_started = math.inf

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        path = metrics_csv(trainer.loggers)
        if path is None or not path.is_file():
            log.warning(
                "no %s: the run has no CSV logger (loggers.csv) to read the curve from", self.CURVE_FILE
            )
            return
        with open(path, newline="") as f:
            columns = next(csv.reader(f), [])
        losses = [c for c in columns if c.startswith("train/") and "loss" in c]
        monitor = self.cfg.checkpoint.monitor
        series = metric_series(path, losses + ([monitor] if monitor else []))
        figure = training_curve_figure(
            {k: series[k] for k in losses if series[k]},
            monitor,
            series.get(monitor, []),
            f"{run_name(self.cfg, self.run_dir)}: training loss and {monitor or 'no validation metric'}",
        )
        save_figure(figure, self.run_dir / self.CURVE_FILE)

    def on_test_start(self, trainer, pl_module) -> None:
        self._test_started = time.time()

    def on_test_end(self, trainer, pl_module) -> None:
        path = self.run_dir / CONFUSION_FILE
        # Only a matrix this test wrote (a run folder may hold an earlier one); file times are coarse.
        if trainer.is_global_zero and path.is_file() and path.stat().st_mtime >= self._test_started - 2:
            names, counts = read_confusion(path)
            save_figure(confusion_figure(counts.numpy(), names), path.with_suffix(".png"))


# ------------------------------------------------------------------------------ the list
class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt``: at the end of every fit that made an optimiser step (``max_steps`` or
    ``max_time`` may stop it mid-epoch) and, with ``every_epoch``, after every training epoch.

    Lightning's own schedule waits for a validation when ``trainer.check_val_every_n_epoch`` > 1, so a
    fit shorter than that interval would end with no checkpoint at all; this one saves at the end of
    the training epoch whatever the validation schedule."""

    def __init__(self, dirpath: Path, every_epoch: bool) -> None:
        self.every_epoch = every_epoch
        super().__init__(
            dirpath=str(dirpath),
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1 if every_epoch else 0,
            enable_version_counter=False,
            save_on_train_epoch_end=True,
        )

    def _save_now(self, trainer) -> None:
        # Skipped when this step is saved already, with fast_dev_run, or when no step was made.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))

    def on_validation_end(self, trainer, pl_module) -> None:
        # A validation inside the epoch (trainer.val_check_interval < 1) saves there too, as
        # Lightning's own schedule would; the epoch's end is saved at on_train_epoch_end.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if self.every_epoch and not trainer.sanity_checking and 0 < done < trainer.num_training_batches:
            self._save_now(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_now(trainer)


def checkpoint_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """The best checkpoint by ``checkpoint.monitor`` (first: ``trainer.checkpoint_callback``), and
    ``last.ckpt`` (:class:`LastCheckpoint`; after every epoch too when ``checkpoint.save_last``)."""
    c = cfg.checkpoint
    # Lightning 2.6 refreshes its own last.ckpt only when a top-k checkpoint was written; resuming
    # needs the latest state after every epoch, whatever the metric did: LastCheckpoint writes it.
    return [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="epoch{epoch:02d}-step{step}",
            auto_insert_metric_name=False,
            monitor=c.monitor or None,
            mode=c.mode,
            save_last=False,
            save_top_k=c.save_top_k,
            every_n_epochs=c.every_n_epochs,
        ),
        LastCheckpoint(run_dir / "checkpoints", every_epoch=c.save_last),
    ]


def build_callbacks(cfg: DictConfig, run_dir: Path, stage: str) -> list[Callback]:
    callbacks: list[Callback] = [
        RunInfoInCheckpoint(run_dir),
        DataHealthCallback(),
        RngStateInCheckpoint(),
        RunFigures(cfg, run_dir),
    ]
    if stage == "fit":
        callbacks += [*checkpoint_callbacks(cfg, run_dir), Throughput(), SamplerPositionInCheckpoint()]
        if not sys.stdout.isatty():
            callbacks.append(TextLog(cfg.logger.text_every_n_steps))
        callbacks.append(PreemptionCheckpoint(run_dir / "checkpoints" / "last.ckpt", cfg.trainer.requeue))
        every = cfg.logger.log_images_every_n_steps
        if every > 0 and (cfg.model.spatial.enabled or cfg.model.temporal.enabled):
            callbacks.append(PromptImageLogger(run_dir, every))
    return callbacks + build_components(cfg, "callbacks", run_dir)
