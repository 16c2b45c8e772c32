"""Running a sweep: every trial is one ``train()`` in ``<output_dir>/sweeps/<name>/<stamp>/trial-NNN``,
offline (the local search of :mod:`stop_lightning.sweep.trials`) or online (a W&B agent in this
process)."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stop_lightning.config import load_config
from stop_lightning.fileio import atomic_write
from stop_lightning.loggers import finish_wandb, wandb_mode
from stop_lightning.run_folder import RUN_STAMP_ENV
from stop_lightning.schema import ConfigError
from stop_lightning.sweep.report import PLOT_FILE, TrialResult, trial_label, trial_name, write_results
from stop_lightning.sweep.spec import SweepError, SweepSpec, load_sweep
from stop_lightning.sweep.trials import example_trial, plan_trials
from stop_lightning.train import train

log = logging.getLogger(__name__)

SWEEP_STAMP_ENV = "STOP_SWEEP_STAMP"


def as_override(key: str, value: Any) -> str:
    """``key=value`` that OmegaConf parses back to ``value`` (JSON is valid YAML for scalars and lists)."""
    return f"{key}={json.dumps(value)}"


def trial_overrides(spec: SweepSpec, overrides: list[str], params: dict[str, Any]) -> list[str]:
    """The sweep file's overrides, then the command line's, then the trial's parameters."""
    return [*spec.overrides, *overrides, *(as_override(k, v) for k, v in params.items())]


def check_overrides(spec: SweepSpec, overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in spec.parameters:
            raise SweepError(
                f"command-line override '{item}' sets '{key}', which {spec.path} sweeps; "
                "drop it or remove the parameter"
            )


def trial_config(
    spec: SweepSpec,
    overrides: list[str],
    params: dict[str, Any],
    run_root: Path | None = None,
    logger_names: dict[str, str] | None = None,
) -> DictConfig:
    """The trial's config; ``run_root`` (the sweep folder) becomes its ``paths.run_dir``;
    ``logger_names`` (``logger.name``, ``logger.group``) come first, so the sweep file's and the
    command line's overrides may still set them."""
    named = [as_override(f"logger.{key}", value) for key, value in (logger_names or {}).items()]
    extra = [f"paths.run_dir={run_root}"] if run_root is not None else []
    try:
        return load_config(spec.experiment, [*named, *trial_overrides(spec, overrides, params), *extra])
    except ConfigError as err:
        raise SweepError(f"{spec.path}: trial {params} does not make a valid config: {err}") from err
    except OmegaConfBaseException as err:  # e.g. an interpolation in `overrides` naming a key set nowhere
        reason = str(err).splitlines()[0]
        raise SweepError(
            f"{spec.path}: trial {params}: {reason} (an interpolation in overrides, a=${{b}}, "
            "must name a key that "
            "the same overrides or the parameters set)"
        ) from err


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sweep_group(spec: SweepSpec, sweep_key: str) -> str:
    """The W&B group of a sweep's trials: ``<sweep file>-<stamp>`` offline, ``<sweep file>-<sweep id>``
    online (the same on every node whose agent joins the sweep)."""
    return f"{spec.name}-{sweep_key.rsplit('/', 1)[-1]}"


def run_trial(
    spec: SweepSpec, overrides: list[str], params: dict[str, Any], sweep_dir: Path, index: int, group: str
) -> dict[str, float]:
    """One ``train()`` in ``<sweep_dir>/trial-NNN``, named by its parameters in ``group``; returns its
    test metrics."""
    names = {"name": trial_label(index, params), "group": group}
    cfg = trial_config(spec, overrides, params, sweep_dir, names)
    # run_folder() names a run <paths.run_dir>/<STOP_RUN_STAMP>: one folder per trial, the same
    # name on every DDP rank.
    with environment(**{RUN_STAMP_ENV: trial_name(index)}):
        ok = False
        try:
            metrics = train(cfg)
            ok = True
        finally:
            finish_wandb(exit_code=0 if ok else 1)
    return metrics


def sweep_dir_for(spec: SweepSpec, base_cfg: DictConfig) -> Path:
    stamp = os.environ.setdefault(SWEEP_STAMP_ENV, time.strftime("%Y%m%d-%H%M%S"))
    return Path(base_cfg.paths.output_dir) / "sweeps" / spec.name / stamp


def run_offline(
    spec: SweepSpec, overrides: list[str], base_cfg: DictConfig
) -> tuple[list[TrialResult], Path]:
    trials = plan_trials(spec)
    sweep_dir = sweep_dir_for(spec, base_cfg)
    for params in trials:  # every trial's config is checked before the first one trains
        trial_config(spec, overrides, params, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.create(spec.raw)))
    log.info("sweep %s: %d trials (%s, offline) in %s", spec.name, len(trials), spec.method, sweep_dir)
    results: list[TrialResult] = []
    for index, params in enumerate(trials):
        log.info("sweep %s: %s of %d: %s", spec.name, trial_name(index), len(trials), params)
        try:
            metrics = run_trial(spec, overrides, params, sweep_dir, index, sweep_group(spec, sweep_dir.name))
        except (ConfigError, KeyboardInterrupt):
            raise
        except Exception as err:  # one failing trial (e.g. out of memory) does not end the search
            log.exception("sweep %s: %s failed", spec.name, trial_name(index))
            results.append(
                TrialResult(
                    index,
                    params,
                    None,
                    f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                )
            )
        else:
            if spec.metric not in metrics:
                raise SweepError(
                    f"{spec.path}: metric.name = '{spec.metric}' is not among the metrics a trial returns "
                    f"({', '.join(sorted(metrics))}); set metric.name to one of them"
                )
            results.append(TrialResult(index, params, float(metrics[spec.metric])))
        write_results(spec, results, sweep_dir)
    return results, sweep_dir


def run_online(
    spec: SweepSpec, overrides: list[str], base_cfg: DictConfig, sweep_id: str | None = None
) -> str:
    """Create the W&B sweep (or join ``sweep_id``, made earlier or on another node) and run an agent
    here; each trial is ``train()`` with the agent's parameters."""
    import wandb

    entity = base_cfg.logger.entity or None
    if sweep_id is None:
        sweep_id = wandb.sweep(sweep=spec.wandb_config(), project=base_cfg.logger.project, entity=entity)
    sweep_dir = sweep_dir_for(spec, base_cfg)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    counter = itertools.count()
    group = sweep_group(spec, sweep_id)

    def agent_trial() -> None:
        # The agent hands this run its parameters; the trial's WandbLogger logs into it, so its
        # name, group and tags are set here.
        run = wandb.init(group=group, tags=list(base_cfg.logger.tags))
        params = {k: run.config[k] for k in spec.parameters if k in run.config}
        index = next(counter)
        run.name = trial_label(index, params)
        run_trial(spec, overrides, params, sweep_dir, index, group)

    log.info("sweep %s: W&B sweep %s, agent running in this process", spec.name, sweep_id)
    wandb.agent(
        sweep_id, function=agent_trial, count=spec.run_cap, project=base_cfg.logger.project, entity=entity
    )
    return sweep_id


SWEEP_ID = re.compile(r"[^\s/]+(/[^\s/]+){0,2}")  # <id>, <project>/<id> or <entity>/<project>/<id>


def sweep_main(name_or_path: str, overrides: list[str] | None = None, sweep_id: str | None = None) -> int:
    """``stop-lightning sweep <name|path> [--id ID] [key=value ...]``; returns the exit status.
    ``sweep_id``: join that online W&B sweep instead of creating one (more agents, other nodes)."""
    overrides = list(overrides or [])
    spec = load_sweep(name_or_path)
    check_overrides(spec, overrides)
    if sweep_id is not None and not SWEEP_ID.fullmatch(sweep_id):
        raise SweepError(
            f"--id {sweep_id!r} is not a W&B sweep id: give the id W&B printed when the sweep was made "
            "(e.g. --id abcd1234, or entity/project/abcd1234)"
        )
    # Output folder and logger settings come from a trial's config, which also checks the sweep
    # file against the experiment before anything is created.
    base_cfg = trial_config(spec, overrides, example_trial(spec))
    online = base_cfg.logger.wandb and wandb_mode(base_cfg.logger.mode) == "online"
    if sweep_id is not None and not online:
        why = "logger.wandb is false" if not base_cfg.logger.wandb else "W&B is offline here"
        raise SweepError(
            f"--id {sweep_id} joins an online W&B sweep, but {why}: set WANDB_API_KEY (or `wandb login`) "
            "with logger.wandb=true and logger.mode=online or auto, or drop --id to run the local search"
        )
    if online:
        run_online(spec, overrides, base_cfg, sweep_id)
        return 0
    results, sweep_dir = run_offline(spec, overrides, base_cfg)
    print((sweep_dir / "results.md").read_text())
    print(f"table: {sweep_dir / 'results.csv'}\nplot:  {sweep_dir / PLOT_FILE}")
    return 0 if all(r.status == "ok" for r in results) else 1
