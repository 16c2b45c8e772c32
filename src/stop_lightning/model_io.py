"""Loading a trained model, in one place: checkpoints and export folders, the device rule, the
fingerprint of the trained tensors and the export format.

``inference`` (predict, embed), ``search``, ``pretrained`` (export) and the CLI stand on this module;
it stands on the tasks and the checkpoint reader. :func:`load_model` takes either a ``.ckpt`` written
by ``stop-lightning train`` or a folder written by ``stop-lightning export``, whichever it is given.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from stop_lightning.checkpoint_io import CheckpointReadError, load_trained_weights, read_checkpoint
from stop_lightning.config import read_yaml
from stop_lightning.models.backbone import ClipBundle, load_clip
from stop_lightning.provenance import collect_run_info, warn_on_differences
from stop_lightning.reading import check_file, problem, read_text
from stop_lightning.tasks.base import VideoTaskModule
from stop_lightning.tasks.recognition import RecognitionModule
from stop_lightning.tasks.registry import get_task

# The export folder (stop-lightning export): these files, this version of their format.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "stop_lightning.json"
CARD_FILE = "README.md"
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, META_FILE, CARD_FILE)
FORMAT_VERSION = 1


class ExportError(CheckpointReadError):
    """An export folder that cannot be written or read; the message names the file."""


@dataclass
class LoadedCheckpoint:
    """A task module rebuilt from a checkpoint, in eval mode on ``device``."""

    module: VideoTaskModule
    cfg: DictConfig  # the training run's resolved config, as saved in the checkpoint
    bundle: ClipBundle
    path: Path
    device: torch.device

    @property
    def task(self) -> str:
        return str(self.cfg.task.name)

    @property
    def classifies(self) -> bool:
        """The module scores classes (predict works), rather than only embedding videos."""
        return isinstance(self.module, RecognitionModule)

    @property
    def class_names(self) -> list[str]:
        return list(self.module.class_names) if isinstance(self.module, RecognitionModule) else []


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_checkpoint(
    ckpt: str | Path, clip_source: str | None = None, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """Rebuild the module a checkpoint was trained as (recognition or retrieval) with its trained weights.

    ``clip_source`` replaces ``model.clip.source`` of the saved config, for a CLIP that now lives
    elsewhere; a CLIP of another shape is refused by the config-hash check.
    """
    path = Path(ckpt)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "cfg" not in hparams:
        raise CheckpointReadError(
            f"checkpoint {path} has no saved config (hyper_parameters['cfg']); "
            "it was not written by stop-lightning train"
        )
    cfg = OmegaConf.create(hparams["cfg"])
    if clip_source is not None:
        cfg.model.clip.source = str(clip_source)
    OmegaConf.set_readonly(cfg, True)
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    try:
        module = get_task(cfg.task.name).load_module(cfg, hparams, bundle)
    except KeyError as err:
        key = err.args[0]
        raise CheckpointReadError(
            f"{cfg.task.name} checkpoint {path} has no {key} (hyper_parameters[{key!r}])"
        ) from err
    load_trained_weights(module, str(path), run_info=collect_run_info(cfg, bundle))
    device = resolve_device(device)
    module.to(device).eval()
    return LoadedCheckpoint(module=module, cfg=cfg, bundle=bundle, path=path, device=device)


def trained_state(module: VideoTaskModule) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint keeps: the module's state without the frozen CLIP."""
    prefixes = module._frozen_prefixes()
    return {
        k: v.detach().cpu().contiguous()
        for k, v in module.state_dict().items()
        if not module._is_frozen_key(k, prefixes)
    }


def model_fingerprint(module: VideoTaskModule) -> str:
    """sha256 of the trained tensors (names, dtypes, shapes, bytes) and the CLIP config hash.

    The same trained model gives the same fingerprint whether it was loaded from its ``.ckpt`` or
    from an export, so ``embed`` output can say which text side belongs to it (``search``)."""
    h = hashlib.sha256(module.clip_source["config_hash"].encode())
    for name, tensor in sorted(trained_state(module).items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def is_export(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


EXPORT_TODO = "export it again with `stop-lightning export CKPT DIR`"
META_KEYS = ("format_version", "task", "hparams", "clip", "run_info")  # what stop_lightning.json holds


def read_export_meta(folder: Path) -> dict[str, Any]:
    for name in (WEIGHTS_FILE, CONFIG_FILE, META_FILE):
        if not (folder / name).exists():
            raise ExportError(
                f"{folder} is not a stop-lightning export: {name} is missing "
                "(write one with `stop-lightning export CKPT DIR`)"
            )
    path = folder / META_FILE
    text = read_text(path, "export description", ExportError, EXPORT_TODO)
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ExportError(
            problem(
                path,
                f"not valid JSON ({err.msg}, line {err.lineno}): cut short or damaged",
                EXPORT_TODO,
            )
        ) from err
    if not isinstance(meta, dict) or not all(key in meta for key in META_KEYS):
        raise ExportError(
            problem(path, f"not an export description (needs {', '.join(META_KEYS)})", EXPORT_TODO)
        )
    if meta["format_version"] != FORMAT_VERSION:
        raise ExportError(
            f"{path}: format_version {meta['format_version']!r}, this stop_lightning reads {FORMAT_VERSION}"
        )
    return meta


def read_export_weights(path: Path) -> dict[str, torch.Tensor]:
    """An export's ``model.safetensors``; a cut-short file and another program's file are told apart
    by its start (8 bytes of header length, then the JSON header)."""
    check_file(path, "safetensors file", ExportError, EXPORT_TODO)
    try:
        return load_file(str(path))
    except Exception as err:
        with open(path, "rb") as fh:
            header = fh.read(9)
        what = (
            "cut short or damaged (safetensors says: " + str(err).splitlines()[0] + ")"
            if header[8:9] == b"{"
            else "not a safetensors file (another program's file?)"
        )
        raise ExportError(problem(path, what, EXPORT_TODO)) from err


def from_pretrained(
    folder: str | Path, clip_source: str | None = None, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """Rebuild an exported model on its CLIP (or ``clip_source``), in eval mode on ``device``.

    The result is what :func:`load_checkpoint` returns for the checkpoint
    the folder was exported from, and predicts the same."""
    folder = Path(folder)
    meta = read_export_meta(folder)
    cfg = read_yaml(folder / CONFIG_FILE, ExportError, EXPORT_TODO)
    state = read_export_weights(folder / WEIGHTS_FILE)
    if clip_source is not None:
        cfg.model.clip.source = str(clip_source)
    OmegaConf.set_readonly(cfg, True)
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    # A LightningModule's hyper-parameters are its constructor's arguments.
    module = get_task(meta["task"]).load_module(cfg, meta["hparams"], bundle)
    checkpoint = {"state_dict": state, "stop_lightning": {"clip": meta["clip"], "run_info": meta["run_info"]}}
    module.on_load_checkpoint(checkpoint)  # refuses a CLIP of another config hash
    module.load_state_dict(state)
    warn_on_differences(checkpoint, collect_run_info(cfg, bundle), str(folder))
    device = resolve_device(device)
    module.to(device).eval()
    return LoadedCheckpoint(module=module, cfg=cfg, bundle=bundle, path=folder, device=device)


def load_model(
    path: str | Path, clip_source: str | None = None, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """A ``.ckpt`` file or an export folder, whichever ``path`` is (what ``--ckpt`` accepts)."""
    if Path(path).is_dir():
        return from_pretrained(path, clip_source, device)
    return load_checkpoint(path, clip_source, device)
