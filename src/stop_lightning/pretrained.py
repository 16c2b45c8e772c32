"""Trained prompts as a folder anyone can load: ``stop-lightning export CKPT DIR`` and
:func:`from_pretrained`.

An exported folder holds what a checkpoint holds for inference, in formats other tools read::

    model.safetensors   the trained tensors only (prompts, adapters, heads); the frozen CLIP is not in it
    config.yaml         the run's resolved config (model, data sampling, task), as training saw it
    stop_lightning.json task, class names, the CLIP source and config hash, the run's provenance,
                        the model fingerprint (see :func:`model_fingerprint`) and the metrics
    README.md           a model card: metrics, dataset, protocol, how it was made and how to load it

Loading rebuilds the task module on a CLIP (the saved source or ``clip_source``), refuses a CLIP
whose config hash differs (the check of :meth:`VideoTaskModule.on_load_checkpoint`) and warns about
provenance differences as ``eval`` does. ``docs/sharing.md`` shows how to publish the folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from stop_lightning.checkpoint_io import CheckpointReadError, read_checkpoint
from stop_lightning.inference import LoadedCheckpoint, load_checkpoint, resolve_device
from stop_lightning.models.backbone import load_clip
from stop_lightning.provenance import collect_run_info, warn_on_differences
from stop_lightning.tasks.base import VideoTaskModule
from stop_lightning.tasks.registry import get_task

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "stop_lightning.json"
CARD_FILE = "README.md"
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, META_FILE, CARD_FILE)
FORMAT_VERSION = 1


class ExportError(CheckpointReadError):
    """An export folder that cannot be written or read; the message names the file."""


# ------------------------------------------------------------------------------ identity
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


# ------------------------------------------------------------------------------ export
def run_folder_of(ckpt: Path) -> Path | None:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>`` (where ``train`` wrote config.yaml, run_info.json, csv/)."""
    run = ckpt.resolve().parent.parent
    return run if ckpt.resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def logged_metrics(run_dir: Path | None) -> dict[str, float]:
    """The last value of every ``val/`` and ``test/`` column of the run's ``csv/metrics.csv``."""
    path = run_dir / "csv" / "metrics.csv" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    out: dict[str, float] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key and key.startswith(("val/", "test/")) and value not in ("", None):
                    out[key] = float(value)
    return out


def export(ckpt: str | Path, out_dir: str | Path, clip_source: str | None = None) -> Path:
    """Write the export folder of ``ckpt`` to ``out_dir`` (atomically: a sibling temp folder renamed
    into place).

    The checkpoint is loaded first, on its CLIP (or ``clip_source``), so only a model that loads is
    exported and its fingerprint is that of the loaded tensors."""
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(
            f"export folder {out_dir} already exists (a file or a non-empty folder); "
            "choose a new folder or delete it"
        )
    loaded = load_checkpoint(ckpt, clip_source, device="cpu")
    checkpoint = read_checkpoint(ckpt)
    module = loaded.module
    run_dir = run_folder_of(ckpt)
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k != "cfg"}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": loaded.task,
        "hparams": hparams,
        "clip": dict(module.clip_source),
        "fingerprint": model_fingerprint(module),
        "run_info": checkpoint.get("stop_lightning", {}).get("run_info", {}),
        "exported_from": {
            "checkpoint": str(ckpt.resolve()),
            "run_dir": str(run_dir) if run_dir else None,
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "metrics": logged_metrics(run_dir),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        save_file(
            trained_state(module),
            str(tmp / WEIGHTS_FILE),
            metadata={"format": "pt", "fingerprint": meta["fingerprint"]},
        )
        (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(loaded.cfg, resolve=True))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        (tmp / CARD_FILE).write_text(model_card(loaded.cfg, meta, out_dir.name))
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace cannot replace a directory on every OS
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def _protocol(cfg: DictConfig) -> str:
    d = cfg.data
    if cfg.task.name == "retrieval":
        return "text-video retrieval (whole test set, t2v and v2t recall)"
    text = f"{d.protocol}, split {d.split}"
    if d.protocol == "few_shot":
        text += f", {d.shots} shots"
    return text


def model_card(cfg: DictConfig, meta: dict[str, Any], name: str) -> str:
    """The export's README.md: what the model is, what it scored, how it was made, how to load it."""
    m, d = cfg.model, cfg.data
    metrics = meta["metrics"]
    table = (
        "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(metrics.items()))
        or "| (no metrics.csv next to the checkpoint) | |"
    )
    source = meta["exported_from"]
    git = meta["run_info"].get("git", {})
    versions = ", ".join(f"{k} {v}" for k, v in meta["run_info"].get("versions", {}).items())
    classes = meta["hparams"].get("class_names") or []
    train_cmd = f"stop-lightning train config.yaml paths.run_dir=runs/{cfg.name}"
    revision = git.get("revision", "unknown")
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    return f"""---
library_name: stop-lightning
tags: [video, clip, prompt-tuning, {cfg.task.name}]
license: mit
---
# {name}: STOP prompts for {cfg.task.name} on {d.dataset}

Spatial-temporal dynamic prompts (STOP, CVPR 2025, arXiv 2503.15973) trained on a frozen CLIP with
stop_lightning and exported with `stop-lightning export`. This folder holds only the
trained tensors ({WEIGHTS_FILE}); the frozen CLIP is loaded from its own source.

| | |
|---|---|
| task | {cfg.task.name} |
| dataset | {d.dataset} ({len(classes) or "captioned"} {"classes" if classes else "videos"}) |
| protocol | {_protocol(cfg)} |
| model preset | {m.preset} |
| CLIP | `{meta["clip"]["source"]}` (config hash `{meta["clip"]["config_hash"][:12]}`) |
| frames | {d.num_frames} ({d.sampling} sampling) |
| trained at | epoch {source["epoch"]}, step {source["global_step"]} |
| fingerprint | `{meta["fingerprint"][:16]}` |

## Metrics the training run logged

Last logged value of each metric in the run's `csv/metrics.csv`; `test/` is the checkpoint that
`stop-lightning train` tested (the best by `checkpoint.monitor`), which may not be this one.

| metric | value |
|---|---|
{table}

## How it was made

```bash
{train_cmd}   # this folder's config.yaml: the run's resolved config
stop-lightning export {source["checkpoint"]} {name}
```

git revision `{revision}`{dirty}; {versions}.

## How to use it

```python
from stop_lightning.pretrained import from_pretrained

loaded = from_pretrained("{name}")                        # or clip_source="path/to/clip"
```

```bash
stop-lightning predict --ckpt {name} video.mp4            # recognition
stop-lightning embed --ckpt {name} --manifest videos.jsonl --out videos.pt
stop-lightning search videos.pt "a person riding a bike"  # retrieval
```
"""


# ------------------------------------------------------------------------------ load
def is_export(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def read_export_meta(folder: Path) -> dict[str, Any]:
    for name in (WEIGHTS_FILE, CONFIG_FILE, META_FILE):
        if not (folder / name).is_file():
            raise ExportError(
                f"{folder} is not a stop-lightning export: {name} is missing "
                "(write one with `stop-lightning export CKPT DIR`)"
            )
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{folder / META_FILE}: not valid JSON ({err.msg}, line {err.lineno})") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{folder / META_FILE}: format_version {meta.get('format_version')!r}, "
            f"this stop_lightning reads {FORMAT_VERSION}"
        )
    return meta


def from_pretrained(
    folder: str | Path, clip_source: str | None = None, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """Rebuild an exported model on its CLIP (or ``clip_source``), in eval mode on ``device``.

    The result is what :func:`stop_lightning.inference.load_checkpoint` returns for the checkpoint
    the folder was exported from, and predicts the same."""
    folder = Path(folder)
    meta = read_export_meta(folder)
    try:
        cfg = OmegaConf.load(folder / CONFIG_FILE)
        state = load_file(str(folder / WEIGHTS_FILE))
    except Exception as err:
        raise ExportError(
            f"cannot read the export {folder}: {type(err).__name__}: {str(err).splitlines()[0]} "
            "(export it again)"
        ) from err
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


def export_main(ckpt: str, out_dir: str, clip_source: str | None = None) -> int:
    """``stop-lightning export CKPT DIR``."""
    path = export(ckpt, out_dir, clip_source)
    print(f"wrote {path}: {', '.join(EXPORT_FILES)}")
    return 0
