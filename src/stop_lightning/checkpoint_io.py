"""Checkpoint files: atomic saves, safe loads (``weights_only=True``), trained weights into a module."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from stop_lightning.errors import UserError
from stop_lightning.fileio import atomic_file
from stop_lightning.provenance import warn_on_differences
from stop_lightning.reading import check_file, problem
from stop_lightning.tasks.base import CheckpointMismatchError


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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive holding <name>/data.pkl
CHECKPOINT_TODO = "pass a .ckpt written by `stop-lightning train`, e.g. the run's checkpoints/last.ckpt"


def unloadable(path: Path, kind: str) -> str:
    """Why ``torch.load`` (or ``np.load``) refused ``path``, told by the file's shape: a cut-short zip,
    another program's zip, or no zip at all (a plain pickle, text)."""
    with open(path, "rb") as fh:
        head = fh.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        return f"not a {kind} (not a zip archive: a plain pickle, text or another program's file)"
    if not zipfile.is_zipfile(path):
        return "cut short (a zip archive without its end: an interrupted copy or a full disk)"
    with zipfile.ZipFile(path) as archive:
        if any(name.endswith("/data.pkl") for name in archive.namelist()):  # torch.save wrote it
            return (
                f"a PyTorch file that holds more than tensors and plain data, not a {kind} (refused unread)"
            )
    return f"a zip archive of another program, not a {kind}"


def read_checkpoint(path, map_location=None) -> dict[str, Any]:
    """A checkpoint's dict, read with ``weights_only=True``; any file that is not one ends in one
    line naming it (:mod:`stop_lightning.reading`)."""
    path = check_file(path, "checkpoint", CheckpointReadError, CHECKPOINT_TODO)
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle would add lines to the error
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as err:
        raise CheckpointReadError(problem(path, unloadable(path, "checkpoint"), CHECKPOINT_TODO)) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        held = (
            "a dict without 'state_dict'"
            if isinstance(checkpoint, dict)
            else f"a {type(checkpoint).__name__}"
        )
        raise CheckpointReadError(problem(path, f"holds {held}, not a Lightning checkpoint", CHECKPOINT_TODO))
    return checkpoint


def saved_preset(checkpoint: dict[str, Any]) -> str:
    """The ``model.preset`` a checkpoint was trained with ('?' when its config is not saved)."""
    cfg = (checkpoint.get("hyper_parameters") or {}).get("cfg") or {}
    return str((cfg.get("model") or {}).get("preset", "?"))


def load_trained_weights(
    module: L.LightningModule,
    ckpt: str,
    run_info: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Put a checkpoint's trained tensors into ``module`` (``checkpoint``: ``ckpt`` already read);
    with ``run_info`` (this run's :func:`stop_lightning.provenance.collect_run_info`), warn where the
    checkpoint's run differs. A checkpoint that does not fit the module names itself and both presets."""
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(ckpt)
    try:
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
    except CheckpointMismatchError as err:
        trained, asked = saved_preset(checkpoint), module.cfg.model.preset
        advice = ""
        if trained not in ("?", asked):
            advice = f" (set model.preset={trained}, the checkpoint's preset)"
        raise CheckpointMismatchError(
            f"{ckpt} (trained as model.preset={trained}, loaded as model.preset={asked}): {err}{advice}"
        ) from err
    if run_info is not None:
        warn_on_differences(checkpoint, run_info, str(ckpt))
    return checkpoint
