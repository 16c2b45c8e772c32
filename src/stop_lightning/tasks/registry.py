"""The task registry: one table from ``task.name`` to its LightningModule and its DataModule.

Training (``train.build_module``), evaluation, ``predict``/``embed`` (``inference.load_checkpoint``) and
``data.build_datamodule`` all look a task up here. A task's module takes everything it needs through
its constructor: ``VideoTaskModule.inputs`` reads it from the set-up DataModule, ``saved_inputs`` from
a checkpoint. To add a task, write ``tasks/<name>.py`` (copy ``retrieval.py``), its DataModule in
``data/datamodules.py`` if none fits, and one row in ``TASKS`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stop_lightning.config import ConfigError
from stop_lightning.data.datamodules import (
    RecognitionDataModule,
    RetrievalDataModule,
    VideoDataModule,
    build_datamodule,
)
from stop_lightning.models.backbone import ClipBundle
from stop_lightning.tasks.base import VideoTaskModule
from stop_lightning.tasks.recognition import RecognitionModule
from stop_lightning.tasks.retrieval import RetrievalModule


@dataclass(frozen=True)
class TaskSpec:
    name: str
    module: type[VideoTaskModule]
    datamodule: type[VideoDataModule]

    def build_module(self, cfg: Any, datamodule: VideoDataModule, bundle: ClipBundle) -> VideoTaskModule:
        """The task's module for training or evaluating on a set-up ``datamodule``."""
        return self.module(cfg, bundle=bundle, **self.module.inputs(cfg, datamodule))

    def load_module(self, cfg: Any, hparams: dict[str, Any], bundle: ClipBundle) -> VideoTaskModule:
        """The task's module rebuilt from a checkpoint's ``hyper_parameters`` (weights not loaded)."""
        return self.module(cfg, bundle=bundle, **self.module.saved_inputs(hparams))


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("recognition", RecognitionModule, RecognitionDataModule),
        TaskSpec("retrieval", RetrievalModule, RetrievalDataModule),
    )
}


class UnknownTaskError(ConfigError):
    """A ``task.name`` not in :data:`TASKS`; the message lists the registered ones."""


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UnknownTaskError(f"task.name = {name!r} is not one of: {', '.join(TASKS)}")
    return TASKS[name]


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
