"""Learning test: the class lives only in the direction of motion.

"move left" and "move right" clips show the same square over the same frames in opposite order,
so the set of frames is identical. Mean pooling of frame features (CLIP4Clip meanP) cannot do
better than chance; STOP's temporal prompts see frame order and must learn it.
"""

import pytest

from stop_lightning.config import load_config
from stop_lightning.train import train

LEFT_RIGHT = [
    "data.synthetic_classes=2",
    "data.synthetic_clips_per_class=64",
    "data.synthetic_looks=4",
    "data.train_crop_scale=[1.0,1.0]",
    "trainer.enable_progress_bar=false",
]


def run(cache_dir, tmp_path, monkeypatch, *extra):
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    cfg = load_config(
        "demo", [f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}", *LEFT_RIGHT, *extra]
    )
    return train(cfg)


@pytest.mark.slow
def test_stop_learns_motion_direction(cache_dir, tmp_path, monkeypatch):
    metrics = run(cache_dir, tmp_path, monkeypatch, "trainer.max_epochs=20")  # 120 optimiser steps
    assert metrics["test/top1"] >= 0.9, metrics


@pytest.mark.slow
def test_meanp_baseline_stays_at_chance(cache_dir, tmp_path, monkeypatch):
    metrics = run(cache_dir, tmp_path, monkeypatch, "model.preset=clip4clip_meanp", "trainer.max_epochs=4")
    # Every test clip of "left" has a "right" twin with the same frames: identical features,
    # identical prediction, so exactly one of the two is right.
    assert metrics["test/top1"] == pytest.approx(0.5), metrics
