"""Sweep files: read a W&B sweep configuration plus our three keys and check it, naming the file
and the key of every problem.

W&B ships no public, offline validator for sweep files: the ``wandb`` client defers to the
``sweeps`` package (``pip install wandb[sweeps]``, which brings scikit-learn and scipy) for its
local controller, and ``wandb.sweep`` validates only on the W&B server. The checks here follow
W&B's documented sweep configuration keys (docs.wandb.ai, "Sweep configuration options"): methods,
goals, distributions and the keys each distribution needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from stop_lightning.config import read_yaml
from stop_lightning.schema import PROJECT_ROOT, ConfigError

SWEEPS_DIR = Path(os.environ.get("STOP_SWEEPS_DIR", PROJECT_ROOT / "sweeps"))
METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
OUR_KEYS = ("experiment", "overrides", "seed")
WANDB_KEYS = ("method", "metric", "parameters", "run_cap", "name", "description", "early_terminate")
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
)


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


def available_sweeps(sweeps_dir: Path = SWEEPS_DIR) -> list[str]:
    return sorted(p.stem for p in sweeps_dir.glob("*.yaml"))


def sweep_path(name_or_path: str | Path, sweeps_dir: Path = SWEEPS_DIR) -> Path:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = sweeps_dir / f"{name_or_path}.yaml"
    if not path.exists():  # a folder or an unreadable file is told by read_yaml
        raise SweepError(
            f"no sweep '{name_or_path}' ({path} does not exist). "
            f"Available: {', '.join(available_sweeps(sweeps_dir)) or 'none'}"
        )
    return path


def load_sweep(name_or_path: str | Path, sweeps_dir: Path = SWEEPS_DIR) -> SweepSpec:
    """Read and check a sweep file; every problem names the file and the key."""
    path = sweep_path(name_or_path, sweeps_dir)
    raw = OmegaConf.to_container(
        read_yaml(path, SweepError, "write it as the files in sweeps/ are written"), resolve=False
    )
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
        name=path.stem,
        path=path,
        experiment=str(raw["experiment"]),
        method=method,
        metric=str(metric["name"]),
        goal=goal,
        parameters={str(k): dict(v) for k, v in params.items()},
        overrides=list(overrides),
        run_cap=run_cap,
        seed=int(raw.get("seed", 0)),
        raw=raw,
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
    needs = {
        "normal": ("mu", "sigma"),
        "q_normal": ("mu", "sigma"),
        "log_normal": ("mu", "sigma"),
        "q_log_normal": ("mu", "sigma"),
    }.get(dist, ("min", "max"))
    if dist not in ("constant", "categorical"):
        missing = [k for k in needs if k not in spec]
        if missing:
            raise SweepError(
                f"{where}: distribution {dist} needs {', '.join(needs)} (missing {', '.join(missing)})"
            )
        if method == "grid":
            raise SweepError(
                f"{where}: a grid search needs a list of values for every parameter, "
                f"this one has distribution {dist} "
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
