"""A config's DataModule and LightningModule, built from the task table (``tasks/registry.py``).

The DataModule factory lives here, beside the task table, so the data package never names a task:
it serves the DataModule class the table gives it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from stop_lightning.data.datamodules import VideoDataModule, as_data_config
from stop_lightning.data.sources import video_sources
from stop_lightning.models.backbone import ClipBundle
from stop_lightning.models.compile import compile_model
from stop_lightning.tasks.base import VideoTaskModule
from stop_lightning.tasks.registry import get_task


def build_datamodule(
    cfg_data: Any,
    task_name: str,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int = 0,
    cache_dir: str | Path = ".cache/stop_lightning",
) -> VideoDataModule:
    """The DataModule of ``task_name``; ``data.dataset=synthetic`` generates its videos and manifests
    under ``cache_dir`` first (:func:`stop_lightning.data.sources.video_sources`)."""
    cfg = as_data_config(cfg_data)
    datamodule = get_task(task_name).datamodule
    video_root, manifest_dir = video_sources(cfg, task_name, cache_dir)
    cfg = replace(cfg, video_root=str(video_root), manifest_dir=str(manifest_dir))
    return datamodule(cfg, image_size, mean, std, seed)


def run_datamodule(cfg: Any, bundle: ClipBundle) -> VideoDataModule:
    """The DataModule of a run's config, sized and normalised for ``bundle``'s CLIP (not set up):
    what training, evaluation and a loaded checkpoint all read their videos through."""
    return build_datamodule(
        cfg.data,
        cfg.task.name,
        bundle.image_size,
        bundle.image_mean,
        bundle.image_std,
        seed=cfg.seed,
        cache_dir=cfg.paths.cache_dir,
    )


def build_module(cfg: Any, datamodule: VideoDataModule, bundle: ClipBundle) -> VideoTaskModule:
    """The ``task.name`` module, given what it needs from the set-up DataModule; its video model (and
    prompted text side) compiled when ``trainer.compile`` asks (a trained model loaded for inference stays
    eager)."""
    module = get_task(cfg.task.name).build_module(cfg, datamodule, bundle)
    compile_model(module.model, cfg.trainer.compile, cfg.trainer.compile_backend)
    return module
