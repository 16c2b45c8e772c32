"""The task registry: one table from ``task.name`` to its LightningModule and its DataModule.

The table names both classes by import path and resolves them when they are used, so reading the
task names (the config's ``task.name`` choices, ``--help``) imports no torch or Lightning. Training
and evaluation build a task's DataModule and module through ``tasks/factory.py``, ``predict``/``embed``
and exports rebuild its module from a checkpoint's ``hyper_parameters`` (``load_module``). A task's
module takes everything it needs through its constructor: ``VideoTaskModule.inputs`` reads it from the
set-up DataModule, ``saved_inputs`` from a checkpoint. To add a task, write ``tasks/<name>.py`` (copy
``retrieval.py``), its DataModule in ``data/datamodules.py`` if none fits, and one row in ``TASKS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from stop_lightning.schema import ConfigError


def resolve(path: str) -> Any:
    """The object an import path ``package.module:Name`` names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    module_path: str  # its VideoTaskModule subclass, "package.module:Class"
    datamodule_path: str  # its VideoDataModule subclass

    @property
    def module(self) -> type:
        return resolve(self.module_path)

    @property
    def datamodule(self) -> type:
        return resolve(self.datamodule_path)

    def build_module(self, cfg: Any, datamodule: Any, bundle: Any) -> Any:
        """The task's module for training or evaluating on a set-up ``datamodule``."""
        module = self.module
        return module(cfg, bundle=bundle, **module.inputs(cfg, datamodule))

    def load_module(self, cfg: Any, hparams: dict[str, Any], bundle: Any) -> Any:
        """The task's module rebuilt from a checkpoint's ``hyper_parameters`` (weights not loaded)."""
        module = self.module
        return module(cfg, bundle=bundle, **module.saved_inputs(hparams))


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "recognition",
            "stop_lightning.tasks.recognition:RecognitionModule",
            "stop_lightning.data.datamodules:RecognitionDataModule",
        ),
        TaskSpec(
            "retrieval",
            "stop_lightning.tasks.retrieval:RetrievalModule",
            "stop_lightning.data.datamodules:RetrievalDataModule",
        ),
    )
}


class UnknownTaskError(ConfigError):
    """A ``task.name`` not in :data:`TASKS`; the message lists the registered ones."""


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UnknownTaskError(f"task.name = {name!r} is not one of: {', '.join(TASKS)}")
    return TASKS[name]
