"""The offline search: the trials a sweep file asks for, without the W&B service.

``grid`` enumerates every combination; ``random`` (and ``bayes``, which needs the W&B service)
draws ``run_cap`` trials from each parameter's distribution as the W&B sweep configuration
reference defines them. Seeded (the sweep file's ``seed``), so a search can be repeated.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from typing import Any

from stop_lightning.sweep.spec import SweepError, SweepSpec, distribution

log = logging.getLogger(__name__)


def grid_trials(parameters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    keys = list(parameters)
    choices = [
        parameters[k]["values"] if "values" in parameters[k] else [parameters[k]["value"]] for k in keys
    ]
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
        raise SweepError(
            f"{spec.path}: method {spec.method} needs run_cap (the number of trials) to run offline"
        )
    if spec.method == "bayes":
        log.warning(
            "%s: bayes search needs the W&B service; offline it runs as a random search of %d trials",
            spec.path,
            spec.run_cap,
        )
    return random_trials(spec.parameters, spec.run_cap, spec.seed)


def example_trial(spec: SweepSpec) -> dict[str, Any]:
    """The first grid point or one random draw: a trial to check the sweep against before any work."""
    return (
        grid_trials(spec.parameters)[0]
        if spec.method == "grid"
        else random_trials(spec.parameters, 1, spec.seed)[0]
    )
