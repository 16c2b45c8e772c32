"""Loading a trained model, in one place: checkpoints and export folders, the device rule, the
fingerprint of the trained tensors, the export format, and the trained tensors of another run that a
new run starts from (``model.init_from``).

``inference`` (predict, embed), ``search``, ``pretrained`` (export) and the CLI stand on this module;
it stands on the tasks and the checkpoint reader. :func:`load_model` takes either a ``.ckpt`` written
by ``stop-lightning train`` or a folder written by ``stop-lightning export``, whichever it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_file

from stop_lightning.checkpoint_io import CheckpointReadError, load_trained_weights, read_checkpoint
from stop_lightning.config import read_yaml
from stop_lightning.errors import UserError
from stop_lightning.models.backbone import ClipBundle, load_clip
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.provenance import collect_run_info, warn_on_differences
from stop_lightning.reading import check_file, first_line, problem, read_text
from stop_lightning.schema import ExperimentConfig, project_root, rooted_paths
from stop_lightning.tasks.base import VideoTaskModule, frozen_prefixes
from stop_lightning.tasks.recognition import RecognitionModule
from stop_lightning.tasks.registry import get_task

# The export folder (stop-lightning export): these files, this version of their format.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "stop_lightning.json"
CARD_FILE = "README.md"
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, META_FILE, CARD_FILE)
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


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


class DeviceError(UserError, ValueError):
    """A ``--device`` that is not a device name or not on this machine; the message says which are."""


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_CUDA_NAME = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (the first GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
    a GPU this machine does not have is refused here, before any model is loaded."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA_NAME.fullmatch(name)
    if match is None:
        raise DeviceError(f"--device {name!r} is not a device; use {DEVICE_NAMES}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"--device {name}: this machine has no CUDA GPU torch can use; use --device cpu")
    index = int(match.group(1) or 0)
    if index >= count:
        raise DeviceError(
            f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return torch.device(name)


def load_checkpoint(
    ckpt: str | Path, clip_source: str | None = None, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """Rebuild the module a checkpoint was trained as (recognition or retrieval) with its trained weights.

    ``clip_source`` replaces ``model.clip.source`` of the saved config, for a CLIP that now lives
    elsewhere; a CLIP of another shape is refused by the config-hash check.
    """
    device = resolve_device(device)  # a device that is not there: before minutes of loading
    path = Path(ckpt)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "cfg" not in hparams:
        raise CheckpointReadError(
            f"checkpoint {path} has no saved config (hyper_parameters['cfg']); "
            "it was not written by stop-lightning train"
        )
    cfg = rooted_paths(OmegaConf.create(hparams["cfg"]), project_root())  # a run saved with relative folders
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
    return state_fingerprint(module.clip_source["config_hash"], trained_state(module))


def state_fingerprint(clip_config_hash: str, state: dict[str, torch.Tensor]) -> str:
    """:func:`model_fingerprint` of trained tensors read from a file, without building their model."""
    h = hashlib.sha256(clip_config_hash.encode())
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
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


def read_export(folder: Path) -> tuple[dict[str, Any], DictConfig, dict[str, torch.Tensor]]:
    """An export folder's (meta, config, trained tensors); one line naming the file if unreadable."""
    meta = read_export_meta(folder)
    cfg = read_yaml(folder / CONFIG_FILE, ExportError, EXPORT_TODO)
    missing = [f.name for f in fields(ExperimentConfig) if f.name not in cfg]
    if missing:  # an export writes every key of the schema
        what = f"cut short or not an export's config (no {', '.join(missing)})"
        raise ExportError(problem(folder / CONFIG_FILE, what, EXPORT_TODO))
    try:
        cfg = rooted_paths(cfg, project_root())  # the export's folders are relative to its project
    except OmegaConfBaseException as err:  # a key it names is not there: cut short or edited
        what = f"cut short or damaged ({first_line(err)})"
        raise ExportError(problem(folder / CONFIG_FILE, what, EXPORT_TODO)) from err
    return meta, cfg, read_export_weights(folder / WEIGHTS_FILE)


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


def export_as_checkpoint(meta: dict[str, Any], cfg: DictConfig, state: dict[str, torch.Tensor]) -> dict:
    """An export read back as the checkpoint it was exported from: its trained tensors and what a
    module's ``on_load_checkpoint`` and :func:`stop_lightning.checkpoint_io.load_trained_weights` check."""
    return {
        "state_dict": state,
        "hyper_parameters": {"cfg": OmegaConf.to_container(cfg)},
        "stop_lightning": {"clip": meta["clip"], "run_info": meta["run_info"]},
    }


def read_trained(path: str | Path) -> dict[str, Any]:
    """What ``--ckpt`` names, read as a checkpoint: a ``.ckpt`` file, or an export folder as the
    checkpoint it was exported from; one line naming the file when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        return export_as_checkpoint(*read_export(path))
    return read_checkpoint(path)


def from_pretrained(
    folder: str | Path, clip_source: str | None = None, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """Rebuild an exported model on its CLIP (or ``clip_source``), in eval mode on ``device``.

    The result is what :func:`load_checkpoint` returns for the checkpoint
    the folder was exported from, and predicts the same."""
    device = resolve_device(device)
    folder = Path(folder)
    meta, cfg, state = read_export(folder)
    if clip_source is not None:
        cfg.model.clip.source = str(clip_source)
    OmegaConf.set_readonly(cfg, True)
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    # A LightningModule's hyper-parameters are its constructor's arguments.
    module = get_task(meta["task"]).load_module(cfg, meta["hparams"], bundle)
    checkpoint = export_as_checkpoint(meta, cfg, state)
    module.on_load_checkpoint(checkpoint)  # refuses a CLIP of another config hash
    module.load_state_dict(state)
    warn_on_differences(checkpoint, collect_run_info(cfg, bundle), str(folder))
    module.to(device).eval()
    return LoadedCheckpoint(module=module, cfg=cfg, bundle=bundle, path=folder, device=device)


def load_model(
    path: str | Path, clip_source: str | None = None, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """A ``.ckpt`` file or an export folder, whichever ``path`` is (what ``--ckpt`` accepts)."""
    if Path(path).is_dir():
        return from_pretrained(path, clip_source, device)
    return load_checkpoint(path, clip_source, device)


# ------------------------------------------------------------------ model.init_from
class InitFromError(UserError, ValueError):
    """A ``model.init_from`` source a run cannot start from; the message names it and what to do."""


@dataclass
class InitialWeights:
    """Trained tensors of another run that a new run starts from (``model.init_from``)."""

    path: Path
    state: dict[str, torch.Tensor]
    fingerprint: str  # the source model's model_fingerprint


def read_trained_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(trained tensors, the CLIP they were trained on: ``{"source", "config_hash"}``) of a ``.ckpt``
    or an export folder; nothing else of the checkpoint (optimiser, epoch, loops) is kept."""
    checkpoint = read_trained(path)
    if "state_dict" not in checkpoint:
        raise CheckpointReadError(f"checkpoint {path} holds no state_dict; it was not written by `train`")
    return checkpoint["state_dict"], dict(checkpoint.get("stop_lightning", {}).get("clip") or {})


def video_model_shapes(cfg: DictConfig, bundle: ClipBundle) -> dict[str, tuple[int, ...]]:
    """The names (as the task module holds them) and shapes of the video model's trained tensors for
    ``cfg``, known before the run's module exists: a model is built on the CLIP and detached again."""
    video = STOPVideoModel(cfg.model, bundle.model, cfg.data.num_frames)
    try:
        frozen = tuple(frozen_prefixes(video))
        # "model.": where VideoTaskModule keeps its STOPVideoModel.
        state = video.state_dict()
        return {f"model.{k}": tuple(v.shape) for k, v in state.items() if not k.startswith(frozen)}
    finally:
        video.remove_hooks()


def fitting(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The names in ``state`` whose tensor has the same name and shape in ``shapes``, sorted."""
    return sorted(k for k, v in state.items() if shapes.get(k) == tuple(v.shape))


def read_initial_weights(cfg: DictConfig, bundle: ClipBundle) -> InitialWeights:
    """Read ``model.init_from`` for a new run on ``bundle``'s CLIP, before its run folder is made.

    Refuses, in one line, a source trained on another CLIP (the config hashes differ) and one of
    which no trained tensor fits this run's video model by name and shape."""
    path = Path(cfg.model.init_from)
    state, clip = read_trained_tensors(path)
    if not clip.get("config_hash"):
        raise InitFromError(
            f"model.init_from={path} does not say which CLIP its tensors were trained on (no "
            "stop_lightning.clip entry): give a .ckpt written by `stop-lightning train` or a folder "
            "written by `stop-lightning export`"
        )
    if clip["config_hash"] != bundle.config_hash:
        raise InitFromError(
            f"model.init_from={path} was trained on the CLIP '{clip.get('source')}' (config hash "
            f"{str(clip.get('config_hash'))[:12]}) but this run uses '{bundle.source}' (config hash "
            f"{bundle.config_hash[:12]}): set model.clip.source to the source's CLIP, or start from a run "
            "trained on this one"
        )
    shapes = video_model_shapes(cfg, bundle)
    if not fitting(state, shapes):
        raise InitFromError(
            f"model.init_from={path}: none of its {len(state)} trained tensors "
            f"({tensor_groups(sorted(state))}) "
            f"matches one of this run's (model.preset={cfg.model.preset}: {tensor_groups(sorted(shapes))}) "
            "in name and shape; start from a run of a preset with the same prompt modules and sizes"
        )
    return InitialWeights(path=path, state=state, fingerprint=state_fingerprint(clip["config_hash"], state))


def tensor_groups(names: list[str]) -> str:
    """``model.temporal (3), model.spatial (5)``: tensor names counted by their module (first two
    dotted parts), in first-seen order; ``none`` for no names."""
    counts: dict[str, int] = {}
    for name in names:
        group = ".".join(name.split(".")[:2])
        counts[group] = counts.get(group, 0) + 1
    return ", ".join(f"{g} ({n})" for g, n in counts.items()) or "none"


def apply_initial_weights(module: VideoTaskModule, init: InitialWeights) -> dict[str, Any]:
    """Copy the source's tensors that fit ``module`` by name and shape into it; the rest of the module
    keeps its fresh initialisation. Logs one summary line; returns what ``run_info.json`` records."""
    own = trained_state(module)
    taken = fitting(init.state, {k: tuple(v.shape) for k, v in own.items()})
    module.load_state_dict({k: init.state[k] for k in taken}, strict=False)
    left = sorted(set(init.state) - set(taken))  # not in this model, or of another shape
    fresh = sorted(set(own) - set(taken))
    log.info(
        "model.init_from=%s (model %s): took %d trained tensors: %s; left %d of the source: %s; "
        "%d of this run's start fresh: %s",
        init.path,
        init.fingerprint[:12],
        len(taken),
        tensor_groups(taken),
        len(left),
        tensor_groups(left),
        len(fresh),
        tensor_groups(fresh),
    )
    return {
        "path": str(init.path.resolve()),
        "fingerprint": init.fingerprint,
        "taken": taken,
        "left": left,
        "fresh": fresh,
    }
