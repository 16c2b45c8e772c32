"""What this project measured for an experiment, and the line a run's summary prints about it.

``benchmarks/demo_table.py`` trains an experiment over several seeds and thread counts and writes
``experiments/measured/<experiment>.json``: per preset, the mean, min and max of a test metric and a
fingerprint of the setting (the resolved config without the seed, paths and logging). A run whose own
setting has the same fingerprint is told where the measured range lies; any other run (another
preset's keys, more epochs, a different CLIP) is told nothing, because nothing was measured for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stop_lightning.fileio import atomic_write
from stop_lightning.schema import (
    EXPERIMENTS_DIR,
    ExperimentConfig,
    flat_keys,
    key_under,
    portable,
    project_root,
)

MEASURED_DIR = EXPERIMENTS_DIR / "measured"
# Keys that do not change what is learned: where files go, how progress is shown, the seed (the
# measured range is over seeds).
UNMEASURED_KEYS = ("seed", "paths", "logger", "trainer.enable_progress_bar")
MISSING_KEY = object()  # a key the schema does not have: always part of the setting


def setting_fingerprint(cfg: DictConfig) -> str:
    """A short hash of every key of ``cfg`` that can change a learned figure and differs from the
    schema's default (so a key added to the schema later, at its default, changes nothing)."""
    defaults = flat_keys(OmegaConf.to_container(OmegaConf.structured(ExperimentConfig), resolve=False))
    # Folders as the project names them (data/..., not this checkout's absolute path): the same setting
    # has the same fingerprint in every checkout.
    root = project_root()
    values = {k: portable(v, root) for k, v in flat_keys(OmegaConf.to_container(cfg, resolve=True)).items()}
    setting = {
        k: v
        for k, v in values.items()
        if not key_under(k, UNMEASURED_KEYS) and defaults.get(k, MISSING_KEY) != v
    }
    blob = json.dumps(setting, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_measured(
    path: Path,
    experiment: str,
    metric: str,
    stats: dict[str, dict],
    fingerprints: dict[str, str],
    command: str,
    runs: list[dict],
) -> None:
    body = {
        "experiment": experiment,
        "metric": metric,
        "command": command,
        "presets": {p: {**stats[p], "fingerprint": fingerprints[p]} for p in stats},
        "runs": [
            {k: r[k] for k in ("key", "seed", "threads", "seconds")} | {metric: r["metrics"][metric]}
            for r in runs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(body, indent=1) + "\n")


def read_measured(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def measured_line(
    cfg: DictConfig, metrics: dict[str, float], measured_dir: Path = MEASURED_DIR
) -> str | None:
    """``"stop_fast: test/top1 0.932; measured ... 0.909-1.000 ..."``, or None where nothing was
    measured for this setting (or the file is missing or unreadable: the line is a courtesy)."""
    path = measured_dir / f"{cfg.name}.json"
    try:
        table = read_measured(path)
        entry = table["presets"][cfg.model.preset]
        metric = table["metric"]
        if entry["fingerprint"] != setting_fingerprint(cfg) or metric not in metrics:
            return None
        lo, hi, avg = float(entry["min"]), float(entry["max"]), float(entry["mean"])
        seeds, threads = len(entry["seeds"]), "/".join(entry["threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    value = metrics[metric]
    where = "within" if lo - 1e-9 <= value <= hi + 1e-9 else "outside"
    return (
        f"model.preset={cfg.model.preset}: {metric} {value:.3f}, {where} the range measured for this "
        f"setting over {seeds} seeds x {threads} threads: {lo:.3f}-{hi:.3f}, mean {avg:.3f} "
        f"(README, `{table.get('command', 'make demo-table')}`)"
    )
