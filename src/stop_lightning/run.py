"""Everything around a run: run folder contents, loggers, callbacks, checkpoint I/O, resume."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import netrc
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from stop_lightning.config import PROJECT_ROOT

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "torchvision", "lightning", "transformers", "av", "torchmetrics", "omegaconf", "wandb")


# ------------------------------------------------------------------------------ checkpoints
class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to ``<path>.tmp`` then rename: a crash mid-save never leaves a torn checkpoint.
    Loads with ``weights_only=True``: checkpoints hold tensors, numbers, strings and dicts only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location)


class CheckpointReadError(RuntimeError):
    pass


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


RUN_STAMP_ENV = "STOP_RUN_STAMP"


def latest_run(experiment_dir: Path) -> Path | None:
    """The newest run folder of an experiment that has a ``checkpoints/last.ckpt``."""
    lasts = sorted(experiment_dir.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return lasts[-1].parent.parent if lasts else None


def run_folder(experiment_dir: Path, resume: str | None = None) -> tuple[Path, str | None]:
    """(run folder, checkpoint to resume from): the one place that reads ``RESUME``.

    Each new run gets ``<paths.run_dir>/<timestamp>``; ``last`` continues the newest run of the
    experiment with a ``checkpoints/last.ckpt``, a path continues in that checkpoint's folder. The
    timestamp goes through an environment variable so DDP ranks started later by Lightning (which
    re-run the command) land in the same folder.
    """
    if resume == "last":
        found = latest_run(experiment_dir)
        if found is None:
            raise FileNotFoundError(
                f"cannot resume: no run under {experiment_dir} has checkpoints/last.ckpt "
                "(train once without RESUME, or pass RESUME=path/to.ckpt)"
            )
        return found, str(found / "checkpoints" / "last.ckpt")
    if resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise FileNotFoundError(f"cannot resume: checkpoint {ckpt} does not exist")
        return ckpt.resolve().parent.parent, str(ckpt)
    stamp = os.environ.setdefault(RUN_STAMP_ENV, time.strftime("%Y%m%d-%H%M%S"))
    return experiment_dir / stamp, None


def with_run_dir(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The config as the run sees it: ``paths.run_dir`` is this run's own folder."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.paths.run_dir = str(run_dir)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_trained_weights(module: L.LightningModule, ckpt: str, run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put a checkpoint's trained tensors into ``module``; with ``run_info`` (this run's
    :func:`collect_run_info`), warn where the checkpoint's run differs from it."""
    checkpoint = read_checkpoint(ckpt)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    if run_info is not None:
        warn_on_differences(checkpoint, run_info, str(ckpt))
    return checkpoint


PROVENANCE_KEYS = ("versions", "git", "clip", "manifests")


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text  # sha256 -> 12


def provenance_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per entry of ``PROVENANCE_KEYS`` that differs, e.g. ``versions.torch: checkpoint '2.11.0', now '2.14.1'``.

    A section missing on either side is not compared (``predict`` has no manifests, old checkpoints no run info).
    """
    lines = []
    for key in PROVENANCE_KEYS:
        if key not in saved or key not in now or saved[key] == now[key]:
            continue
        a, b = saved[key], now[key]
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    lines.append(f"{key}.{sub}: checkpoint {_short(a.get(sub, '(absent)'))!r}, now {_short(b.get(sub, '(absent)'))!r}")
        else:
            lines.append(f"{key}: checkpoint {a!r}, now {b!r}")
    return lines


def warn_on_differences(checkpoint: dict[str, Any], now: dict[str, Any], name: str = "checkpoint") -> list[str]:
    """Log a warning per package version, git state, CLIP source or manifest hash that differs."""
    saved = checkpoint.get("stop_lightning", {}).get("run_info", {})
    lines = provenance_differences(saved, now)
    for line in lines:
        log.warning("%s was made under other conditions: %s", name, line)
    return lines


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any: its summary and config are written, and the next
    WandbLogger in this process (a sweep's next trial) starts a new run instead of reusing it."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


# ------------------------------------------------------------------------------ run folder
def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"revision": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"revision": "unknown", "dirty": None}


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect_run_info(cfg: DictConfig, bundle=None, datamodule=None) -> dict[str, Any]:
    info: dict[str, Any] = {"versions": package_versions(), "git": git_state()}
    if bundle is not None:
        info["clip"] = {"source": bundle.source, "config_hash": bundle.config_hash}
    manifest_dir = getattr(datamodule, "manifest_dir", None)
    if manifest_dir is not None and Path(manifest_dir).is_dir():
        info["manifests"] = {str(p.relative_to(manifest_dir)): file_hash(p) for p in sorted(Path(manifest_dir).rglob("*.jsonl"))}
    return info


def write_run_info(cfg: DictConfig, run_dir: Path, bundle=None, datamodule=None) -> Path:
    info = collect_run_info(cfg, bundle, datamodule)
    path = run_dir / "run_info.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)
    return path


class RunInfoInCheckpoint(Callback):
    """Checkpoints carry the run's versions, git state and CLIP source for `eval` to compare."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        path = self.run_dir / "run_info.json"
        info = json.loads(path.read_text()) if path.is_file() else {}
        checkpoint.setdefault("stop_lightning", {})["run_info"] = info


class RngStateInCheckpoint(Callback):
    """Saves and restores the torch/python/numpy RNG states, so dropout and any other random
    draw in the model continue after a resume exactly as in an uninterrupted run."""

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "python": repr(random.getstate()),
            "numpy": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ast
        import random

        import numpy as np

        torch.set_rng_state(state["torch"])
        random.setstate(ast.literal_eval(state["python"]))
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ loggers
def wandb_mode(requested: str) -> str:
    """``auto``: online only with an API key (env or ~/.netrc); never prompts."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    mode = wandb_mode(cfg.logger.mode)
    if cfg.logger.wandb and mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity or None,
                name=cfg.name,
                tags=list(cfg.logger.tags),
                save_dir=str(run_dir),
                offline=mode == "offline",
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


# ------------------------------------------------------------------------------ callbacks
class Throughput(Callback):
    """Logs training clips/s (all ranks' clips) every ``log_every_n_steps``."""

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


def build_callbacks(cfg: DictConfig, run_dir: Path, stage: str) -> list[Callback]:
    from stop_lightning.data.datamodules import DataHealthCallback

    callbacks: list[Callback] = [RunInfoInCheckpoint(run_dir), DataHealthCallback(), RngStateInCheckpoint()]
    if stage == "fit":
        c = cfg.checkpoint
        callbacks += [
            ModelCheckpoint(  # the best by checkpoint.monitor (first: trainer.checkpoint_callback)
                dirpath=str(run_dir / "checkpoints"),
                filename="epoch{epoch:02d}-step{step}",
                auto_insert_metric_name=False,
                monitor=c.monitor or None,
                mode=c.mode,
                save_last=False,
                save_top_k=c.save_top_k,
                every_n_epochs=c.every_n_epochs,
            ),
        ]
        if c.save_last:
            # Lightning 2.6 refreshes its own last.ckpt only when a top-k checkpoint was written;
            # resuming needs the latest state after every epoch, whatever the metric did.
            callbacks.append(
                ModelCheckpoint(
                    dirpath=str(run_dir / "checkpoints"), filename="last", monitor=None, save_top_k=1,
                    every_n_epochs=1, enable_version_counter=False,
                )
            )
        callbacks += [
            LearningRateMonitor(logging_interval="step"),
            Throughput(),
        ]
        every = cfg.logger.log_images_every_n_steps
        if every > 0 and (cfg.model.spatial.enabled or cfg.model.temporal.enabled):
            from stop_lightning.callbacks import PromptImageLogger

            callbacks.append(PromptImageLogger(run_dir, every))
    return callbacks


def print_metrics_table(metrics: dict[str, float], title: str) -> str:
    width = max([len(k) for k in metrics] + [6])
    lines = [title, "-" * (width + 12)]
    lines += [f"{k:<{width}}  {v:>9.4f}" for k, v in sorted(metrics.items())]
    text = "\n".join(lines)
    print(text)
    return text
