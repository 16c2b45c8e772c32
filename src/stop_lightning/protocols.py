"""Evaluation protocols that span several experiments: ``stop-lightning protocol zero_shot --ckpt CKPT``.

Zero-shot transfer from Kinetics-400 (the protocol of X-CLIP, Ni et al. ECCV 2022, and
ViFi-CLIP, Rasheed et al. CVPR 2023): a model trained on K400 (``experiments/k400.yaml``)
is evaluated, without training, on

- HMDB51 and UCF101: each of the three official test splits (``hmdb51_zero_shot``, ``ucf101_zero_shot``);
- Kinetics-600: the 220 classes that are new to K400, from a class-list file the user supplies
  (``data.class_subset`` of ``k600_zero_shot``), on three random subsets of 160 drawn with
  ``data.protocol_seed`` = 0, 1, 2 (each run saves its subset in ``protocol/class_subset.csv``).

Each target's top-1 is reported as mean +- std over its three runs, in one table printed and saved as
``zero_shot.md`` / ``zero_shot.json`` in ``<paths.output_dir>/zero_shot/<timestamp>/``. The model
(``model.*``) and the number of frames come from the checkpoint's own config, so the targets are
evaluated with exactly the network that was trained; overrides given on the command line apply to
every target (e.g. ``paths.data_root=/data``), or to one when prefixed with its name
(``k600:data.class_subset=/lists/k600_novel.csv``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stop_lightning.checkpoint_io import read_checkpoint
from stop_lightning.config import load_config
from stop_lightning.fileio import atomic_write
from stop_lightning.schema import ConfigError
from stop_lightning.train import evaluate


@dataclass(frozen=True)
class Target:
    dataset: str
    experiment: str
    key: str  # the config key varied between the three runs
    values: tuple[int, ...]


ZERO_SHOT_TARGETS = (
    Target("hmdb51", "hmdb51_zero_shot", "data.split", (1, 2, 3)),
    Target("ucf101", "ucf101_zero_shot", "data.split", (1, 2, 3)),
    Target("k600", "k600_zero_shot", "data.protocol_seed", (0, 1, 2)),
)
METRIC = "test/top1"


def _dotlist(prefix: str, value: Any) -> list[str]:
    """``{"a": {"b": 1}}`` under ``prefix`` -> ``["prefix.a.b=1"]`` (values JSON-quoted: YAML reads
    them back)."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _dotlist(f"{prefix}.{k}", v)]
    return [f"{prefix}={json.dumps(value)}"]


def checkpoint_overrides(ckpt: str | Path) -> list[str]:
    """The trained network as overrides: the checkpoint's ``model.*`` and ``data.num_frames``."""
    hparams = read_checkpoint(ckpt).get("hyper_parameters", {})
    cfg = hparams.get("cfg")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ConfigError(
            f"checkpoint {ckpt} holds no config (hyper_parameters.cfg); is it a stop_lightning .ckpt?"
        )
    if cfg.get("task", {}).get("head") == "linear":
        raise ConfigError(
            f"checkpoint {ckpt} classifies with a linear head (task.head=linear), "
            "which knows only its training classes; zero-shot transfer needs task.head=text"
        )
    return _dotlist("model", cfg["model"]) + [f"data.num_frames={int(cfg['data']['num_frames'])}"]


def summary_table(results: dict[str, list[float]], runs: dict[str, list[str]]) -> str:
    """Markdown table: one row per target, top-1 of each run and mean +- std (in %)."""
    lines = ["| target | runs | top-1 per run (%) | mean +- std (%) |", "|---|---|---|---|"]
    for name, values in results.items():
        pct = [100 * v for v in values]
        std = statistics.stdev(pct) if len(pct) > 1 else 0.0
        lines.append(
            f"| {name} | {', '.join(runs[name])} | {', '.join(f'{v:.1f}' for v in pct)} | "
            f"{statistics.fmean(pct):.1f} +- {std:.1f} |"
        )
    return "\n".join(lines)


def target_overrides(overrides: list[str], dataset: str, names: list[str]) -> list[str]:
    """The overrides for ``dataset``: unprefixed ones and those prefixed ``<dataset>:``."""
    out = []
    for item in overrides:
        prefix, sep, rest = item.partition(":")
        if sep and "=" not in prefix:
            if prefix not in names:
                raise ConfigError(
                    f"override {item!r}: {prefix!r} is not a target; prefix with one of {','.join(names)}"
                )
            if prefix == dataset:
                out.append(rest)
        else:
            out.append(item)
    return out


def zero_shot(
    ckpt: str | Path,
    overrides: list[str] | None = None,
    targets: tuple[Target, ...] = ZERO_SHOT_TARGETS,
) -> dict[str, list[float]]:
    """Evaluate ``ckpt`` on every target's three runs; returns top-1 per run, per target."""
    overrides = list(overrides or [])
    names = [t.dataset for t in ZERO_SHOT_TARGETS]
    per_target = {t.dataset: target_overrides(overrides, t.dataset, names) for t in targets}
    model = checkpoint_overrides(ckpt)
    stamp = os.environ.get("STOP_RUN_STAMP") or time.strftime("%Y%m%d-%H%M%S")
    # Every target's config is composed (and so checked) before the first evaluation starts.
    configs = {
        (t.dataset, f"{t.key.split('.')[-1]}{v}"): load_config(
            t.experiment,
            [
                *model,
                *per_target[t.dataset],
                f"{t.key}={v}",
                f"paths.run_dir=${{paths.output_dir}}/zero_shot/{stamp}/{t.dataset}/{t.key.split('.')[-1]}{v}",
            ],
        )
        for t in targets
        for v in t.values
    }
    out_dir = Path(next(iter(configs.values())).paths.output_dir) / "zero_shot" / stamp
    results: dict[str, list[float]] = {}
    runs: dict[str, list[str]] = {}
    for (dataset, tag), cfg in configs.items():
        metrics = evaluate(cfg, ckpt=str(ckpt))
        results.setdefault(dataset, []).append(metrics[METRIC])
        runs.setdefault(dataset, []).append(tag)
    table = summary_table(results, runs)
    atomic_write(out_dir / "zero_shot.md", f"Zero-shot from {ckpt}\n\n{table}\n")
    summary = {"ckpt": str(ckpt), "top1": results, "runs": runs}
    atomic_write(out_dir / "zero_shot.json", json.dumps(summary, indent=2))
    print(f"\nzero-shot transfer of {ckpt} ({out_dir})\n{table}")
    return results


PROTOCOLS = {"zero_shot": zero_shot}


def protocol_main(argv: list[str]) -> int:
    """``stop-lightning protocol zero_shot --ckpt CKPT [--only hmdb51,k600] [[target:]key=value ...]``."""
    parser = argparse.ArgumentParser(prog="stop-lightning protocol", description=__doc__.splitlines()[0])
    parser.add_argument("protocol", choices=sorted(PROTOCOLS))
    parser.add_argument(
        "--ckpt", required=True, help="a checkpoint trained on Kinetics-400 (experiments/k400.yaml)"
    )
    names = [t.dataset for t in ZERO_SHOT_TARGETS]
    parser.add_argument(
        "--only", default="", help=f"comma-separated targets out of {','.join(names)} (default: all)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="config overrides for every target, or for one: k600:data.subset_size=100",
    )
    # Overrides may follow options (`... --ckpt X k=v`): argparse stops filling a positional list there.
    args, extra = parser.parse_known_args(argv)
    if any(item.startswith("-") for item in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = list(args.overrides) + extra
    wanted = [n for n in args.only.split(",") if n] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ConfigError(
            f"--only {','.join(unknown)}: not a zero-shot target; choose from {','.join(names)}"
        )
    PROTOCOLS[args.protocol](
        args.ckpt, args.overrides, tuple(t for t in ZERO_SHOT_TARGETS if t.dataset in wanted)
    )
    return 0
