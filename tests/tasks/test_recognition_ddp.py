"""Two CPU processes (gloo) with bf16-mixed: DDP and precision are configuration, not code."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest


def metric_keys(run_root: Path) -> set[str]:
    (run,) = list((run_root / "demo").iterdir())
    with open(run / "csv" / "metrics.csv") as f:
        return {k for k in next(csv.reader(f)) if k.startswith(("test/", "val/"))}


def cli_train(out: Path, cache_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    env.pop("STOP_RUN_STAMP", None)
    cmd = [sys.executable, "-m", "stop_lightning.cli", "train", "demo", f"paths.output_dir={out}",
           f"paths.cache_dir={cache_dir}", "data.synthetic_clips_per_class=8", "trainer.max_epochs=1",
           "trainer.enable_progress_bar=false", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_bf16_run_reports_the_same_metrics(cache_dir, tmp_path):
    single = cli_train(tmp_path / "single", cache_dir)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = cli_train(tmp_path / "ddp", cache_dir, "trainer.devices=2", "trainer.strategy=ddp",
                    "trainer.precision=bf16-mixed")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "test/top1" in ddp.stdout
    keys = metric_keys(tmp_path / "single")
    assert {"test/top1", "test/top5", "test/mean_class", "val/top1"} <= keys
    assert metric_keys(tmp_path / "ddp") == keys
    # Both ranks wrote into one run folder (the run stamp travels to the second process).
    assert len(list((tmp_path / "ddp" / "demo").iterdir())) == 1
