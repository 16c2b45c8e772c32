"""Loggers of a run: the ``loggers`` config section (CSV by default) and W&B (``logger.wandb``)."""

from __future__ import annotations

import csv
import functools
import logging
import netrc
import os
import socket
import sys
import urllib.parse
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from stop_lightning.config_entries import build_components
from stop_lightning.errors import UserError
from stop_lightning.fileio import atomic_write, writing

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"  # in the run folder: a resumed run continues the same W&B run


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (a resumed run) and appends to it; Lightning's writer
    deletes it ("Previous log files ... will be deleted")."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = sorted(k for k in header.split(",") if k)

    def save(self) -> None:
        with writing(self.metrics_file_path):  # a full or read-only disk: the one line naming it
            super().save()


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger whose ``metrics.csv`` survives a resume: rows of all epochs stay."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def metrics_csv(loggers: list) -> Path | None:
    """The run's ``metrics.csv``, everything logged so far flushed to it; None without a CSV logger."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            logger.save()
            return Path(logger.experiment.metrics_file_path)
    return None


def metric_series(path: Path, keys: list[str]) -> dict[str, list[tuple[float, float]]]:
    """``{key: [(step, value), ...]}`` for each of ``keys`` logged in the metrics CSV at ``path``
    (a row holds the metrics logged at one step; an empty cell is a metric not logged then)."""
    series: dict[str, list[tuple[float, float]]] = {key: [] for key in keys}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key in keys:
                if row.get(key) and row.get("step"):
                    series[key].append((float(row["step"]), float(row[key])))
    return series


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run folder, made once and stored in ``wandb_id.txt``."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    import secrets

    run_id = secrets.token_hex(4)
    atomic_write(path, run_id + "\n")
    return run_id


class ConfigOnceWandbLogger(WandbLogger):
    """W&B gets the run's config once, at creation, with its keys at the top level (as a sweep's
    parameters name them). Lightning would log the module's hyper-parameters, the same config
    under ``cfg``, a second time; that call is dropped here (``config.yaml`` in the run folder and
    the checkpoint keep them)."""

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        return None


WANDB_HOST = "api.wandb.ai"
REACH_TIMEOUT_S = 3.0  # a connection that takes longer is treated as no network


class WandbUnreachable(UserError):
    """``logger.mode=online`` on a machine that cannot reach W&B."""


@functools.lru_cache(maxsize=8)
def reachable(host: str, port: int = 443) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``REACH_TIMEOUT_S``, else why not
    (asked once per process: a cluster node without a network fails fast instead of hanging)."""
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as err:
        return f"{host}:{port} unreachable ({err.strerror or type(err).__name__})"
    return None


def wandb_host() -> tuple[str, int]:
    url = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}"))
    return url.hostname or WANDB_HOST, url.port or (80 if url.scheme == "http" else 443)


def wandb_mode(requested: str) -> str:
    """``auto``: online only with an API key (env or ~/.netrc) and W&B reachable, else offline with
    one line saying why; ``online`` on a machine that cannot reach W&B is one clear error. Never prompts."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested not in ("auto", "online"):
        return requested
    if requested == "auto" and not has_api_key():
        return "offline"
    why = reachable(*wandb_host())
    if why is None:
        return "online"
    if requested == "online":
        raise WandbUnreachable(
            f"logger.mode=online but {why}: set logger.mode=offline (sync later with `wandb sync`) "
            "or logger.mode=auto, which falls back to offline by itself"
        )
    log.warning("W&B: %s; logging offline (upload later with `wandb sync <run folder>/wandb`)", why)
    return "offline"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(netrc.netrc().authenticators(WANDB_HOST))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def run_name(cfg: DictConfig, run_dir: Path) -> str:
    """``logger.name``, or ``<name>/<run folder>`` (``demo/20250101-120000``) when it is empty."""
    return cfg.logger.name or f"{cfg.name}/{Path(run_dir).name}"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The config's ``loggers`` entries (an entry whose class takes ``run_name``, MLflow's, gets the run's
    name unless it sets one), then W&B when ``logger.wandb`` is on and not disabled, with the run's
    name, group and tags."""
    loggers = build_components(cfg, "loggers", run_dir, fill={"run_name": run_name(cfg, run_dir)})
    mode = wandb_mode(cfg.logger.mode)
    if cfg.logger.wandb and mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            ConfigOnceWandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity or None,
                name=run_name(cfg, run_dir),
                group=cfg.logger.group or None,  # None: W&B's own WANDB_RUN_GROUP, if set
                tags=list(cfg.logger.tags),
                save_dir=str(run_dir),
                offline=mode == "offline",
                id=wandb_run_id(run_dir),
                resume="allow",
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def offline_sync_hint(sync_dir: str | Path) -> str:
    """What to type to upload an offline W&B run (``WANDB_SILENT`` hides where it is)."""
    return f"W&B run saved offline in {sync_dir}\nupload it with: wandb sync {sync_dir}"


def update_wandb_summary(values: dict[str, object]) -> bool:
    """Add ``values`` to the active W&B run's summary; False when no W&B run is active."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return False
    run.summary.update(values)
    return True


def finish_wandb(exit_code: int = 0) -> str | None:
    """Close the active W&B run, if any: its summary and config are written, and the next
    WandbLogger in this process (a sweep's next trial) starts a new run instead of reusing it.
    An offline run's folder and its ``wandb sync`` command are printed and returned."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    hint = offline_sync_hint(run.settings.sync_dir) if run.offline else None
    wandb.finish(exit_code=exit_code)
    if hint:
        print(hint)
    return hint
