"""Checkpoint files: atomic saves, safe loads (``weights_only=True``), trained weights into a module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from stop_lightning.errors import UserError
from stop_lightning.fileio import atomic_file
from stop_lightning.provenance import warn_on_differences


class CheckpointReadError(UserError, RuntimeError):
    pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through :func:`stop_lightning.fileio.atomic_file`: a crash mid-save never leaves a torn
    checkpoint. Loads with ``weights_only=True``: checkpoints hold tensors, numbers, strings and dicts."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        """A failed write (disk full, read-only folder) removes its temporary file, leaves the
        previous checkpoint as it was and ends in one line (:func:`stop_lightning.fileio.atomic_file`:
        torch's own "unexpected pos" RuntimeError is traced back to the write's errno)."""
        with atomic_file(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location)


def read_checkpoint(path, map_location=None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as err:
        raise CheckpointReadError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]} "
            "(is it a stop_lightning .ckpt, completely written?)"
        ) from err


def load_trained_weights(
    module: L.LightningModule, ckpt: str, run_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Put a checkpoint's trained tensors into ``module``; with ``run_info`` (this run's
    :func:`stop_lightning.provenance.collect_run_info`), warn where the checkpoint's run differs."""
    checkpoint = read_checkpoint(ckpt)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    if run_info is not None:
        warn_on_differences(checkpoint, run_info, str(ckpt))
    return checkpoint
