"""Two CPU processes (gloo) with bf16-mixed: DDP and precision are configuration, not code."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest


def metric_values(run_root: Path) -> dict[str, float]:
    """The last logged value of every val/ and test/ figure in the run's metrics.csv."""
    (run,) = list((run_root / "demo").iterdir())
    out: dict[str, float] = {}
    with open(run / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            out.update(
                {
                    k: float(v)
                    for k, v in row.items()
                    if k.startswith(("test/", "val/")) and v not in ("", None)
                }
            )
    return out


def cli_train(out: Path, cache_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    env.pop("STOP_RUN_STAMP", None)
    cmd = [
        sys.executable,
        "-m",
        "stop_lightning.cli",
        "train",
        "demo",
        f"paths.output_dir={out}",
        f"paths.cache_dir={cache_dir}",
        *overrides,
        "trainer.enable_progress_bar=false",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


# 3 classes x 9 clips: 12 training clips (one global batch of 12 = 2 ranks x 6, no padding, so both
# runs take the same steps) and 9 test clips (odd: the sampler pads rank 1 with a repeat of clip 0,
# which must be counted once). No spatial dropout: the two runs draw no random numbers.
SAME_RUN = [
    "data.synthetic_classes=3",
    "data.synthetic_clips_per_class=9",
    "trainer.max_epochs=2",
    "model.spatial.dropout=0.0",
    "trainer.precision=bf16-mixed",
]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_bf16_run_reports_the_same_metrics(cache_dir, tmp_path):
    single = cli_train(tmp_path / "single", cache_dir, *SAME_RUN, "data.batch_size=12")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = cli_train(
        tmp_path / "ddp",
        cache_dir,
        *SAME_RUN,
        "data.batch_size=6",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "test/top1" in ddp.stdout
    expected = metric_values(tmp_path / "single")
    assert {"test/top1", "test/top5", "test/mean_class", "val/top1"} <= set(expected)
    got = metric_values(tmp_path / "ddp")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        # Accuracies over 9 clips move in steps of 1/9: a padded repeat counted twice or a lost
        # clip shows; float noise between the runs' gradient sums does not.
        assert got[key] == pytest.approx(value, abs=1e-6), (key, got, expected)
    # Both ranks wrote into one run folder (the run stamp travels to the second process).
    assert len(list((tmp_path / "ddp" / "demo").iterdir())) == 1
