"""What a sweep found: ``results.csv``, ``results.md`` and the metric against each hyper-parameter
(``metric_vs_hyperparameters.png``, as in Figure 4 of the paper), rewritten after every trial."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stop_lightning.fileio import atomic_write
from stop_lightning.sweep.spec import SweepSpec

PLOT_FILE = "metric_vs_hyperparameters.png"


def trial_name(index: int) -> str:
    return f"trial-{index:03d}"


def trial_label(index: int, params: dict[str, Any]) -> str:
    """A trial's run name in W&B: ``trial-001 alpha=0.5 lr=0.002``; a parameter goes by the last part
    of its key, or by the whole key where two parameters end alike."""
    ends = [key.rsplit(".", 1)[-1] for key in params]
    shown = [end if ends.count(end) == 1 else key for key, end in zip(params, ends)]
    return " ".join([trial_name(index), *(f"{k}={_fmt(v)}" for k, v in zip(shown, params.values()))])


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
        writer.writerow(
            [
                trial_name(r.index),
                *(
                    json.dumps(r.params[k]) if isinstance(r.params[k], list) else r.params[k]
                    for k in spec.parameters
                ),
                "" if r.value is None else r.value,
                r.status,
            ]
        )
    return buffer.getvalue()


def results_markdown(spec: SweepSpec, results: list[TrialResult], sweep_dir: Path) -> str:
    best = best_result(results, spec.goal)
    head = ["trial", *spec.parameters, spec.metric, "status"]
    lines = [
        f"# Sweep {spec.name} ({spec.method}, {len(results)} trials)",
        "",
        f"Experiment `{spec.experiment}`, sweep file `{spec.path}`, {spec.goal} `{spec.metric}`. "
        f"Run folders: `{sweep_dir}/trial-NNN`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in results:
        mark = " (best)" if best is not None and r.index == best.index else ""
        value = "" if r.value is None else _fmt(r.value)
        lines.append(
            "| "
            + " | ".join(
                [trial_name(r.index) + mark, *(_fmt(r.params[k]) for k in spec.parameters), value, r.status]
            )
            + " |"
        )
    if best is not None:
        lines += [
            "",
            f"Best: {trial_name(best.index)}, {spec.metric} = {_fmt(best.value)} with "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_results(spec: SweepSpec, results: list[TrialResult], path: Path) -> Path:
    """One panel per hyper-parameter: every trial's metric (dots) and the mean per value (line)."""
    from matplotlib.figure import Figure

    from stop_lightning.figures import save_figure

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
        means = [
            sum(y for p, y in zip(positions, ys) if p == level) / positions.count(level) for level in levels
        ]
        ax.plot(levels, means, marker="o", color="tab:blue", label="mean")
        ax.set_xlabel(key.split(".", 1)[-1] if key.count(".") > 1 else key, fontsize=8)
        ax.set_ylabel(spec.metric, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"{spec.name}: {spec.metric} against each hyper-parameter ({len(done)} trials)", fontsize=10)
    return save_figure(fig, path)


def write_results(spec: SweepSpec, results: list[TrialResult], sweep_dir: Path) -> dict[str, Path]:
    """``results.csv``, ``results.md`` and the plot; rewritten after every trial so a stopped sweep
    keeps its table."""
    paths = {"csv": sweep_dir / "results.csv", "md": sweep_dir / "results.md", "plot": sweep_dir / PLOT_FILE}
    atomic_write(paths["csv"], results_csv(spec, results))
    atomic_write(paths["md"], results_markdown(spec, results, sweep_dir))
    plot_results(spec, results, paths["plot"])
    return paths
