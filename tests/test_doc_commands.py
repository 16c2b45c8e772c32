"""The commands the docs tell a user to paste run (or, where they need real data, parse) as written.

Each block is read from the markdown between marker comments, so editing the docs edits the test."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def marked_block(path: Path, marker: str) -> str:
    """The fenced block between ``<!-- BEGIN <marker> -->`` and ``<!-- END <marker> -->`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    tag = re.escape(marker)
    found = re.findall(rf"<!-- BEGIN {tag} -->\n```[a-z]*\n(.*?)```\n<!-- END {tag} -->", text, re.S)
    assert len(found) == 1, f"{path.name}: expected one block marked {marker!r}, found {len(found)}"
    return found[0]


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user whose shell finds this interpreter's `python` and `stop-lightning`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **extra}


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a markdown table (header and rule left out), as stripped cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return [r for r in rows[2:] if len(r) > 1]


# ----------------------------------------------------------------------------- README: zero-shot recipe


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_readme_zero_shot_recipe_runs_as_written(cache_dir, tmp_path):
    """The recipe checks its class list, trains on the K400 layout and runs the protocol; what it
    prints has the shape the README shows, with every figure the one its nine evaluations measured
    (mean and sample std recomputed here)."""
    script = marked_block(README, "RECIPE: zero-shot-synthetic")
    run = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=user_env(STOP_CACHE_DIR=str(cache_dir)),  # the session's tiny CLIP
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = run.stdout

    (ckpt,) = (tmp_path / "zero_shot_demo" / "runs" / "k400").glob("*/checkpoints/last.ckpt")
    (folder,) = (tmp_path / "zero_shot_demo" / "runs" / "zero_shot").iterdir()
    result = json.loads((folder / "zero_shot.json").read_text())
    assert result["ckpt"] == str(ckpt)

    shown = marked_block(README, "OUTPUT: zero-shot-synthetic").splitlines()
    first = shown[0].replace("<ZS>", str(tmp_path / "zero_shot_demo")).replace("<stamp>", "*")
    printed = out[out.index("zero-shot transfer of ") :].splitlines()
    assert fnmatch(printed[0], first)  # the README's first line, its placeholders filled in
    assert printed[0] == f"zero-shot transfer of {ckpt} ({folder})"
    assert printed[1:3] == shown[1:3]  # header and rule
    rows = table_rows("\n".join(printed[1:6]))
    assert [r[:2] for r in rows] == [r[:2] for r in table_rows("\n".join(shown[1:]))]

    # The K400 training's test, then the nine evaluations in run order, each printed its own test/top1.
    per_run = [float(v) for v in re.findall(r"test/top1\s+([0-9.]+)", out)]
    saved = [v for values in result["top1"].values() for v in values]
    assert len(per_run) == 1 + 9 and per_run[1:] == pytest.approx(saved, abs=1e-4)
    for (target, runs, pct, summary), (name, values) in zip(rows, result["top1"].items(), strict=True):
        assert target == name and runs == ", ".join(result["runs"][name]) and len(values) == 3
        assert pct == ", ".join(f"{100 * v:.1f}" for v in values)
        mean = 100 * sum(values) / len(values)
        std = 100 * math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / (len(values) - 1))
        assert summary == f"{mean:.1f} +- {std:.1f}"
    assert (folder / "zero_shot.md").read_text().strip().endswith("\n".join(printed[1:6]))

    k600 = tmp_path / "zero_shot_demo" / "manifests" / "k600"
    assert f"{k600 / 'novel_classes.csv'}: 3 classes, each a class of {k600 / 'classes.txt'}\n" in out
    listed = {"move up", "move left", "move down"}  # the recipe's novel_classes.csv
    for seed in range(3):
        (subset,) = (folder / "k600" / f"protocol_seed{seed}").glob("*/protocol/class_subset.csv")
        drawn = {line.split(",", 1)[1] for line in subset.read_text().splitlines()[1:]}
        assert len(drawn) == 2 and drawn <= listed


# ----------------------------------------------------------------------------- data_manifests: dataset guides

GUIDE = ROOT / "data_manifests" / "README.md"


def shell_commands(path: Path, program: str = "stop-lightning") -> list[list[str]]:
    """Every ``program`` command of the bash blocks of ``path`` (continuation lines joined, comments
    dropped) and of its table cells (`` `stop-lightning ...` ``), as argument lists; commands that
    read shell variables are left to the recipe tests, which run them."""
    text = path.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [line.split(" #")[0] for line in block.replace("\\\n", " ").splitlines()]
    for row in text.splitlines():
        lines += re.findall(r"`([^`]+)`", row) if row.startswith("|") else []
    return [shlex.split(line) for line in lines if line.strip().startswith(f"{program} ") and "$" not in line]


@pytest.fixture
def dry_run(monkeypatch):
    """The CLI with everything that would read data replaced by a recorder of what it was asked."""
    from stop_lightning.data import build, class_check
    from stop_lightning.protocols import PROTOCOLS, ZERO_SHOT_TARGETS, target_overrides

    asked: list[tuple] = []

    class Report:
        probe = None

        def summary(self) -> str:
            return "dry run"

    def fake_build(dataset, root, annotations, out_dir, **_):
        asked.append(("manifest", dataset, str(root), str(annotations), str(out_dir)))
        return Report()

    def fake_check(path, manifests, count=None, disjoint_from=None):
        asked.append(("check-classes", str(path), str(manifests), count, str(disjoint_from)))
        return "dry run"

    def fake_protocol(ckpt, overrides, targets):
        names = [t.dataset for t in ZERO_SHOT_TARGETS]
        for target in targets:  # every override is a key of the target's experiment
            load_config(target.experiment, target_overrides(overrides, target.dataset, names))
        asked.append(("protocol", [t.dataset for t in targets]))

    from stop_lightning.config import load_config

    monkeypatch.setattr(build, "build_manifests", fake_build)
    monkeypatch.setattr(class_check, "check_class_list", fake_check)
    monkeypatch.setitem(PROTOCOLS, "zero_shot", fake_protocol)
    return asked


def test_every_dataset_guide_command_parses_and_follows_the_default_layout(dry_run, capsys):
    """Each `stop-lightning` command of data_manifests/README.md and each `stop-lightning manifest`
    command of the README runs through the CLI
    (its data access recorded, not done); every dataset has its build command, and each builds from
    `data/<dataset>/videos` into `data_manifests/<dataset>`, the experiments' default data.video_root
    and data.manifest_dir."""
    from stop_lightning.cli import main
    from stop_lightning.data.registry import dataset_names

    guided: dict[str, list[tuple]] = {}
    for doc, program in ((GUIDE, "stop-lightning"), (README, "stop-lightning manifest")):
        commands = shell_commands(doc, program)
        assert len(commands) > 10, doc
        for argv in commands:
            if argv[1] == "train":  # composed and checked, not trained
                argv = [*argv, "--print-config"]
            assert main(argv[1:]) == 0, (doc.name, argv, capsys.readouterr().err)
        guided[str(doc)] = dry_run[:]
        dry_run.clear()
    builds = [a for asked in guided.values() for a in asked if a[0] == "manifest"]
    assert {dataset for _, dataset, *_ in builds} == set(dataset_names(buildable=True))
    # The guide and README's table: each dataset; README's steps: 5 of them, and a synthetic copy.
    assert len(builds) == 2 * len(dataset_names(buildable=True)) + 5 + 1
    for _, dataset, root, _, out in builds:
        if root.startswith("/tmp/"):
            continue
        assert (root, out) == (f"data/{dataset}/videos", f"data_manifests/{dataset}"), dataset
    checks = [a for a in guided[str(GUIDE)] if a[0] == "check-classes"]
    assert len(checks) == 8 and all(count is not None for *_, count, _ in checks)
    assert ("protocol", ["k600"]) in guided[str(GUIDE)]
