"""Hyper-parameter sweeps: ``stop-lightning sweep <name> [overrides]`` (``make sweep SWEEP=<name>``).

A sweep file ``sweeps/<name>.yaml`` is a W&B sweep configuration (``method``, ``metric``,
``parameters``, optional ``run_cap``) whose parameter names are our dotted config keys, plus
three keys of ours that are never sent to W&B::

    experiment: hmdb51                  # experiments/<name>.yaml every trial starts from
    overrides: [trainer.max_epochs=10]  # fixed for every trial (may tie keys: a=${b})
    seed: 0                             # random search draws (offline)

Online (a W&B API key and ``WANDB_MODE`` not offline) the sweep is created with ``wandb.sweep``
and an agent runs the trials in this process. Offline the same file runs as a local search:
``grid`` enumerates every combination, ``random`` draws ``run_cap`` trials (``bayes`` falls back
to random). Every trial is one ``train()`` run in ``<output_dir>/sweeps/<name>/<stamp>/trial-NNN``;
the offline search writes ``results.csv``, ``results.md`` and ``metric_vs_hyperparameters.png``
(the metric against each hyper-parameter, as in Figure 4 of the paper) next to them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stop_lightning.config import PROJECT_ROOT, ConfigError, load_config
from stop_lightning.run import RUN_STAMP_ENV, finish_wandb, wandb_mode

log = logging.getLogger(__name__)

SWEEPS_DIR = Path(os.environ.get("STOP_SWEEPS_DIR", PROJECT_ROOT / "sweeps"))
SWEEP_STAMP_ENV = "STOP_SWEEP_STAMP"
METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
OUR_KEYS = ("experiment", "overrides", "seed")
WANDB_KEYS = ("method", "metric", "parameters", "run_cap", "name", "description", "early_terminate")
DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
    "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal",
)
PLOT_FILE = "metric_vs_hyperparameters.png"


class SweepError(ConfigError):
    """A sweep file that cannot run; the message names the file, the key and what to change."""


@dataclass
class SweepSpec:
    name: str
    path: Path
    experiment: str
    method: str
    metric: str
    goal: str
    parameters: dict[str, dict[str, Any]]  # config key -> W&B parameter spec
    overrides: list[str] = field(default_factory=list)
    run_cap: int | None = None
    seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    def wandb_config(self) -> dict[str, Any]:
        """The file as W&B wants it: our own keys removed."""
        return {k: v for k, v in self.raw.items() if k in WANDB_KEYS}


# ------------------------------------------------------------------------------ sweep files
def available_sweeps(sweeps_dir: Path = SWEEPS_DIR) -> list[str]:
    return sorted(p.stem for p in sweeps_dir.glob("*.yaml"))


def sweep_path(name_or_path: str | Path, sweeps_dir: Path = SWEEPS_DIR) -> Path:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = sweeps_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SweepError(f"no sweep '{name_or_path}' ({path} does not exist). Available: {', '.join(available_sweeps(sweeps_dir)) or 'none'}")
    return path


def load_sweep(name_or_path: str | Path, sweeps_dir: Path = SWEEPS_DIR) -> SweepSpec:
    """Read and check a sweep file; every problem names the file and the key."""
    path = sweep_path(name_or_path, sweeps_dir)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:
        raise SweepError(f"{path}: cannot parse YAML: {err}") from err
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(OUR_KEYS) - set(WANDB_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key '{unknown[0]}' (valid: {', '.join(OUR_KEYS + WANDB_KEYS)})")
    for key in ("experiment", "method", "metric", "parameters"):
        if key not in raw:
            raise SweepError(f"{path}: missing required key '{key}'")
    method = raw["method"]
    if method not in METHODS:
        raise SweepError(f"{path}: method = {method!r} is not one of: {', '.join(METHODS)}")
    metric = raw["metric"]
    if not isinstance(metric, dict) or not metric.get("name"):
        raise SweepError(f"{path}: metric needs a name, e.g. metric: {{name: test/top1, goal: maximize}}")
    goal = metric.get("goal", "maximize")
    if goal not in GOALS:
        raise SweepError(f"{path}: metric.goal = {goal!r} is not one of: {', '.join(GOALS)}")
    params = raw["parameters"]
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{path}: parameters must map config keys to {{values: [...]}} or a distribution")
    for key, spec in params.items():
        _check_parameter(path, str(key), spec, method)
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise SweepError(f"{path}: overrides must be a list of key=value strings")
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise SweepError(f"{path}: run_cap = {run_cap!r} must be a positive integer")
    return SweepSpec(
        name=path.stem, path=path, experiment=str(raw["experiment"]), method=method, metric=str(metric["name"]),
        goal=goal, parameters={str(k): dict(v) for k, v in params.items()}, overrides=list(overrides),
        run_cap=run_cap, seed=int(raw.get("seed", 0)), raw=raw,
    )


def _check_parameter(path: Path, key: str, spec: Any, method: str) -> None:
    where = f"{path}: parameters.{key}"
    if not isinstance(spec, dict):
        raise SweepError(f"{where} must be a mapping such as {{values: [1, 2]}}, got {spec!r}")
    dist = distribution(spec)
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"{where}: distribution {dist!r} is not one of: {', '.join(DISTRIBUTIONS)}")
    if dist == "categorical" and (not isinstance(spec.get("values"), list) or not spec["values"]):
        raise SweepError(f"{where}: values must be a non-empty list")
    if dist == "constant" and "value" not in spec:
        raise SweepError(f"{where}: distribution constant needs 'value'")
    needs = {"normal": ("mu", "sigma"), "q_normal": ("mu", "sigma"), "log_normal": ("mu", "sigma"), "q_log_normal": ("mu", "sigma")}.get(dist, ("min", "max"))
    if dist not in ("constant", "categorical"):
        missing = [k for k in needs if k not in spec]
        if missing:
            raise SweepError(f"{where}: distribution {dist} needs {', '.join(needs)} (missing {', '.join(missing)})")
        if method == "grid":
            raise SweepError(
                f"{where}: a grid search needs a list of values for every parameter, this one has distribution {dist} "
                "(give it values: [...] or use method: random)"
            )


def distribution(spec: dict[str, Any]) -> str:
    """W&B's rule: an explicit ``distribution``, else ``values`` -> categorical, ``value`` -> constant,
    integer ``min``/``max`` -> int_uniform, otherwise uniform."""
    if "distribution" in spec:
        return str(spec["distribution"])
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
        return "int_uniform"
    return "uniform"


# ------------------------------------------------------------------------------ trials
def grid_trials(parameters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    keys = list(parameters)
    choices = [parameters[k]["values"] if "values" in parameters[k] else [parameters[k]["value"]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def sample_value(spec: dict[str, Any], rng: random.Random) -> Any:
    """One draw from a W&B parameter spec."""
    dist = distribution(spec)
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        return rng.choice(spec["values"])
    if dist == "int_uniform":
        return rng.randint(int(spec["min"]), int(spec["max"]))
    if dist in ("normal", "q_normal", "log_normal", "q_log_normal"):
        x = rng.gauss(float(spec["mu"]), float(spec["sigma"]))
        x = math.exp(x) if "log" in dist else x
    elif dist == "log_uniform":  # min/max are natural logs of the bounds
        x = math.exp(rng.uniform(float(spec["min"]), float(spec["max"])))
    elif dist in ("log_uniform_values", "q_log_uniform_values"):
        x = math.exp(rng.uniform(math.log(float(spec["min"])), math.log(float(spec["max"]))))
    else:  # uniform, q_uniform
        x = rng.uniform(float(spec["min"]), float(spec["max"]))
    if dist.startswith("q_"):
        q = float(spec.get("q", 1.0))
        x = round(x / q) * q
    return x


def random_trials(parameters: dict[str, dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{k: sample_value(spec, rng) for k, spec in parameters.items()} for _ in range(count)]


def plan_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """The offline search: the full grid, or ``run_cap`` random draws (also for bayes)."""
    if spec.method == "grid":
        trials = grid_trials(spec.parameters)
        return trials[: spec.run_cap] if spec.run_cap else trials
    if spec.run_cap is None:
        raise SweepError(f"{spec.path}: method {spec.method} needs run_cap (the number of trials) to run offline")
    if spec.method == "bayes":
        log.warning("%s: bayes search needs the W&B service; offline it runs as a random search of %d trials", spec.path, spec.run_cap)
    return random_trials(spec.parameters, spec.run_cap, spec.seed)


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
            raise SweepError(f"command-line override '{item}' sets '{key}', which {spec.path} sweeps; drop it or remove the parameter")


def trial_config(spec: SweepSpec, overrides: list[str], params: dict[str, Any], run_root: Path | None = None) -> DictConfig:
    """The trial's config; ``run_root`` (the sweep folder) becomes its ``paths.run_dir``."""
    extra = [f"paths.run_dir={run_root}"] if run_root is not None else []
    try:
        return load_config(spec.experiment, [*trial_overrides(spec, overrides, params), *extra])
    except ConfigError as err:
        raise SweepError(f"{spec.path}: trial {params} does not make a valid config: {err}") from err
    except OmegaConfBaseException as err:  # e.g. an interpolation in `overrides` naming a key set nowhere
        reason = str(err).splitlines()[0]
        raise SweepError(
            f"{spec.path}: trial {params}: {reason} (an interpolation in overrides, a=${{b}}, must name a key that "
            "the same overrides or the parameters set)"
        ) from err


def example_trial(spec: SweepSpec) -> dict[str, Any]:
    """The first grid point or one random draw: a trial to check the sweep against before any work."""
    return grid_trials(spec.parameters)[0] if spec.method == "grid" else random_trials(spec.parameters, 1, spec.seed)[0]


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


def trial_name(index: int) -> str:
    return f"trial-{index:03d}"


def run_trial(spec: SweepSpec, overrides: list[str], params: dict[str, Any], sweep_dir: Path, index: int) -> dict[str, float]:
    """One ``train()`` in ``<sweep_dir>/trial-NNN``; returns its test metrics."""
    from stop_lightning.train import train

    cfg = trial_config(spec, overrides, params, sweep_dir)
    # run_folder() names a run <paths.run_dir>/<STOP_RUN_STAMP>: one folder per trial, the same
    # name on every DDP rank.
    with environment(**{RUN_STAMP_ENV: trial_name(index), "WANDB_RUN_GROUP": f"{spec.name}-{sweep_dir.name}"}):
        ok = False
        try:
            metrics = train(cfg)
            ok = True
        finally:
            finish_wandb(exit_code=0 if ok else 1)
    return metrics


# ------------------------------------------------------------------------------ results
@dataclass
class TrialResult:
    index: int
    params: dict[str, Any]
    value: float | None  # the sweep metric; None when the trial failed
    status: str = "ok"


def best_result(results: list[TrialResult], goal: str) -> TrialResult | None:
    done = [r for r in results if r.value is not None and not math.isnan(r.value)]
    if not done:
        return None
    return (max if goal == "maximize" else min)(done, key=lambda r: r.value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def results_csv(spec: SweepSpec, results: list[TrialResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", *spec.parameters, spec.metric, "status"])
    for r in results:
        writer.writerow([trial_name(r.index), *(json.dumps(r.params[k]) if isinstance(r.params[k], list) else r.params[k] for k in spec.parameters),
                         "" if r.value is None else r.value, r.status])
    return buffer.getvalue()


def results_markdown(spec: SweepSpec, results: list[TrialResult], sweep_dir: Path) -> str:
    best = best_result(results, spec.goal)
    head = ["trial", *spec.parameters, spec.metric, "status"]
    lines = [
        f"# Sweep {spec.name} ({spec.method}, {len(results)} trials)",
        "",
        f"Experiment `{spec.experiment}`, sweep file `{spec.path}`, {spec.goal} `{spec.metric}`. Run folders: `{sweep_dir}/trial-NNN`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in results:
        mark = " (best)" if best is not None and r.index == best.index else ""
        value = "" if r.value is None else _fmt(r.value)
        lines.append("| " + " | ".join([trial_name(r.index) + mark, *(_fmt(r.params[k]) for k in spec.parameters), value, r.status]) + " |")
    if best is not None:
        lines += ["", f"Best: {trial_name(best.index)}, {spec.metric} = {_fmt(best.value)} with "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()) + "."]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_results(spec: SweepSpec, results: list[TrialResult], path: Path) -> Path:
    """One panel per hyper-parameter: every trial's metric (dots) and the mean per value (line)."""
    from matplotlib.figure import Figure

    from stop_lightning.callbacks import save_figure

    done = [r for r in results if r.value is not None and not math.isnan(r.value)]
    keys = list(spec.parameters)
    cols = min(len(keys), 4)
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, key in zip(axes, keys):
        xs = [r.params[key] for r in done]
        ys = [r.value for r in done]
        if xs and _numeric(xs):
            positions = [float(x) for x in xs]
            levels = sorted(set(positions))
            if levels[0] > 0 and levels[-1] / levels[0] >= 100:
                ax.set_xscale("log")
        else:
            levels_raw = list(dict.fromkeys(json.dumps(x) for x in xs))
            positions = [float(levels_raw.index(json.dumps(x))) for x in xs]
            levels = list(range(len(levels_raw)))
            ax.set_xticks(levels, [s.strip('"') for s in levels_raw])
        ax.scatter(positions, ys, s=18, alpha=0.6, color="tab:gray", label="trials")
        means = [sum(y for p, y in zip(positions, ys) if p == level) / positions.count(level) for level in levels]
        ax.plot(levels, means, marker="o", color="tab:blue", label="mean")
        ax.set_xlabel(key.split(".", 1)[-1] if key.count(".") > 1 else key, fontsize=8)
        ax.set_ylabel(spec.metric, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{spec.name}: {spec.metric} against each hyper-parameter ({len(done)} trials)", fontsize=10)
    return save_figure(fig, path)


def write_results(spec: SweepSpec, results: list[TrialResult], sweep_dir: Path) -> dict[str, Path]:
    """``results.csv``, ``results.md`` and the plot; rewritten after every trial so a stopped sweep keeps its table."""
    paths = {"csv": sweep_dir / "results.csv", "md": sweep_dir / "results.md", "plot": sweep_dir / PLOT_FILE}
    _write(paths["csv"], results_csv(spec, results))
    _write(paths["md"], results_markdown(spec, results, sweep_dir))
    plot_results(spec, results, paths["plot"])
    return paths


# ------------------------------------------------------------------------------ running
def sweep_dir_for(spec: SweepSpec, base_cfg: DictConfig) -> Path:
    stamp = os.environ.setdefault(SWEEP_STAMP_ENV, time.strftime("%Y%m%d-%H%M%S"))
    return Path(base_cfg.paths.output_dir) / "sweeps" / spec.name / stamp


def run_offline(spec: SweepSpec, overrides: list[str], base_cfg: DictConfig) -> tuple[list[TrialResult], Path]:
    trials = plan_trials(spec)
    sweep_dir = sweep_dir_for(spec, base_cfg)
    for params in trials:  # every trial's config is checked before the first one trains
        trial_config(spec, overrides, params, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.create(spec.raw)))
    log.info("sweep %s: %d trials (%s, offline) in %s", spec.name, len(trials), spec.method, sweep_dir)
    results: list[TrialResult] = []
    for index, params in enumerate(trials):
        log.info("sweep %s: %s of %d: %s", spec.name, trial_name(index), len(trials), params)
        try:
            metrics = run_trial(spec, overrides, params, sweep_dir, index)
        except (ConfigError, KeyboardInterrupt):
            raise
        except Exception as err:  # one failing trial (e.g. out of memory) does not end the search
            log.exception("sweep %s: %s failed", spec.name, trial_name(index))
            results.append(TrialResult(index, params, None, f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
        else:
            if spec.metric not in metrics:
                raise SweepError(
                    f"{spec.path}: metric.name = '{spec.metric}' is not among the metrics a trial returns "
                    f"({', '.join(sorted(metrics))}); set metric.name to one of them"
                )
            results.append(TrialResult(index, params, float(metrics[spec.metric])))
        write_results(spec, results, sweep_dir)
    return results, sweep_dir


def run_online(spec: SweepSpec, overrides: list[str], base_cfg: DictConfig) -> str:
    """Create the W&B sweep and run an agent here; each trial is ``train()`` with the agent's parameters."""
    import wandb

    entity = base_cfg.logger.entity or None
    sweep_id = wandb.sweep(sweep=spec.wandb_config(), project=base_cfg.logger.project, entity=entity)
    sweep_dir = sweep_dir_for(spec, base_cfg)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    counter = itertools.count()

    def agent_trial() -> None:
        run = wandb.init()  # the agent hands this run its parameters
        params = {k: run.config[k] for k in spec.parameters if k in run.config}
        run_trial(spec, overrides, params, sweep_dir, next(counter))

    log.info("sweep %s: W&B sweep %s, agent running in this process", spec.name, sweep_id)
    wandb.agent(sweep_id, function=agent_trial, count=spec.run_cap, project=base_cfg.logger.project, entity=entity)
    return sweep_id


def sweep_main(name_or_path: str, overrides: list[str] | None = None) -> int:
    """``stop-lightning sweep <name|path> [key=value ...]``; returns the exit status."""
    overrides = list(overrides or [])
    spec = load_sweep(name_or_path)
    check_overrides(spec, overrides)
    # Output folder and logger settings come from a trial's config, which also checks the sweep
    # file against the experiment before anything is created.
    base_cfg = trial_config(spec, overrides, example_trial(spec))
    if base_cfg.logger.wandb and wandb_mode(base_cfg.logger.mode) == "online":
        run_online(spec, overrides, base_cfg)
        return 0
    results, sweep_dir = run_offline(spec, overrides, base_cfg)
    print((sweep_dir / "results.md").read_text())
    print(f"table: {sweep_dir / 'results.csv'}\nplot:  {sweep_dir / PLOT_FILE}")
    return 0 if all(r.status == "ok" for r in results) else 1
