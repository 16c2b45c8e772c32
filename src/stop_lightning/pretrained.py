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
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save

from stop_lightning.checkpoint_io import read_checkpoint
from stop_lightning.fileio import atomic_dir
from stop_lightning.model_io import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_FILES,
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    ExportError,
    load_checkpoint,
    model_fingerprint,
    trained_state,
)
from stop_lightning.schema import portable_paths, project_root


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
    with atomic_dir(out_dir) as tmp:
        # Serialised here and written by Python: a full disk raises OSError with its errno
        # (safetensors' own file writer reports it as a SafetensorError without one).
        weights = save(trained_state(module), metadata={"format": "pt", "fingerprint": meta["fingerprint"]})
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        # Folders inside this project written relative to it: the loader puts them under its own project.
        shared_cfg = portable_paths(OmegaConf.create(OmegaConf.to_container(loaded.cfg)), project_root())
        (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(shared_cfg, resolve=True))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        (tmp / CARD_FILE).write_text(model_card(loaded.cfg, meta, out_dir.name))
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
    tested = (
        "the weights the fit ended with: `checkpoint.test=last`"
        if cfg.checkpoint.test == "last"
        else f"the best by `checkpoint.monitor` = {cfg.checkpoint.monitor}"
    )
    checkpoint_name = Path(source["checkpoint"]).name  # a local path means nothing to a reader
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
`stop-lightning train` tested ({tested}), which may not be this one.

| metric | value |
|---|---|
{table}

## How it was made

```bash
{train_cmd}   # this folder's config.yaml: the run's resolved config
stop-lightning export --ckpt <run folder>/checkpoints/{checkpoint_name} {name}
```

git revision `{revision}`{dirty}; {versions}.

## How to use it

```python
from stop_lightning.model_io import from_pretrained

loaded = from_pretrained("{name}")                        # or clip_source="path/to/clip"
```

```bash
stop-lightning predict --ckpt {name} video.mp4            # recognition
stop-lightning embed --ckpt {name} --manifest videos.jsonl --out videos.pt
stop-lightning search videos.pt "a person riding a bike"  # retrieval
```
"""


def export_main(ckpt: str, out_dir: str, clip_source: str | None = None) -> int:
    """``stop-lightning export CKPT DIR``."""
    path = export(ckpt, out_dir, clip_source)
    print(f"wrote {path}: {', '.join(EXPORT_FILES)}")
    return 0
