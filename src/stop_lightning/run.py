"""The run folder: where a new run goes, which folder and checkpoint ``RESUME`` continues, and the
config as the run sees it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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
