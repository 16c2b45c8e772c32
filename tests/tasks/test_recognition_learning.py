"""Learning test: the class lives only in the direction of motion, and the test clips look new.

"move left" clip ``j`` and "move right" clip ``j`` (twins) show the same square over the same 8
frames in opposite order. With 8 frames stored and 8 sampled, training and evaluation sampling both
take every frame, and every frame is a key frame at a fixed quantiser, so twins decode to the same
set of pictures: mean pooling (CLIP4Clip meanP) gives twins the same embedding and the same
prediction, and is right on exactly one of each pair (top-1 0.5 on the balanced 2-class test, a
fact, asserted below before any training). STOP's temporal prompts see frame order.

The test clips are drawn in colours and on a background that no training clip has
(``data.synthetic_heldout_looks``), both methods train the same number of steps, and both are
scored on the weights they end with (``checkpoint.test=last``): STOP's accuracy is generalisation
to new looks, not memory of the training clips. Measured on this setup (seed 0, 44 held-out test
clips): STOP 1.0 from epoch 6 of 20 on, meanP 0.5 at every epoch (README, "Demo").
"""

import re

import pytest
import torch

from stop_lightning.config import load_config
from stop_lightning.data.frame_indices import segment_indices
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.train import setup_run, train

FRAMES = 8


def config(cache_dir, tmp_path, *extra):
    """The demo (experiments/demo.yaml) is this task; the test pins what its claims rest on."""
    cfg = load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            "trainer.enable_progress_bar=false",
            *extra,
        ],
    )
    data = cfg.data
    assert data.synthetic_frames == data.num_frames == FRAMES  # every frame under both samplings
    assert data.synthetic_classes == 2 and data.synthetic_heldout_looks and data.dataset == "synthetic"
    assert list(data.train_crop_scale) == [1.0, 1.0] and not data.hflip
    assert cfg.checkpoint.test == "last"
    return cfg


_CLIP_INDEX = re.compile(r"_(\d+)\.avi$")  # hmdb51 layout: synthetic_<class>_u_nm_np1_fr_med_<j>.avi


def run(cache_dir, tmp_path, monkeypatch, *extra):
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    # The demo's 16 epochs of 6 optimiser steps (2 classes x 43 training clips, batch 8) for both.
    return train(config(cache_dir, tmp_path, *extra))


def test_both_samplings_take_every_frame():
    for seed in range(50):
        generator = torch.Generator().manual_seed(seed)
        assert segment_indices(FRAMES, FRAMES, train=True, generator=generator) == list(range(FRAMES))
    assert segment_indices(FRAMES, FRAMES, train=False) == list(range(FRAMES))


@pytest.mark.parametrize("stage", ["train", "test"])
def test_twins_get_identical_meanp_embeddings(cache_dir, tmp_path, stage):
    cfg = config(cache_dir, tmp_path, "model.preset=clip4clip_meanp")
    cfg, bundle, datamodule = setup_run(cfg, tmp_path / "run")
    datamodule.setup("fit" if stage == "train" else "test")
    dataset = datamodule.datasets[stage]
    by_clip: dict[int, dict[int, int]] = {}  # j -> {class: item}
    for i, record in enumerate(dataset.records):
        j = int(_CLIP_INDEX.search(record.path).group(1))
        by_clip.setdefault(j, {})[record.label] = i
    pairs = [(c[0], c[1]) for c in by_clip.values() if len(c) == 2]
    assert len(pairs) == len(by_clip) and len(pairs) >= 20, by_clip
    model = STOPVideoModel(cfg.model, bundle.model, FRAMES).eval()
    torch.manual_seed(1)  # the train transform draws its crop from the global generator
    left = torch.stack([dataset[a]["video"] for a, _ in pairs])  # [P, T, 3, H, W]
    right = torch.stack([dataset[b]["video"] for _, b in pairs])
    # The same pictures in the opposite order, exactly.
    torch.testing.assert_close(left, right.flip(1), rtol=0, atol=0)
    with torch.no_grad():
        left_embeds, right_embeds = model(left).embeds, model(right).embeds  # [P, E]
    torch.testing.assert_close(left_embeds, right_embeds, rtol=0, atol=1e-6)
    # ...while the pairs themselves differ (the check is not comparing one picture with itself).
    assert (left_embeds[1:] - left_embeds[:1]).abs().amax() > 1e-3


def test_test_clips_look_unlike_every_training_clip(cache_dir, tmp_path):
    cfg = config(cache_dir, tmp_path)
    cfg, _, datamodule = setup_run(cfg, tmp_path / "run")
    datamodule.setup("fit")
    datamodule.setup("test")

    def looks(stage: str) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
        out = set()
        for i in range(len(datamodule.datasets[stage])):
            frame = datamodule.datasets[stage][i]["video"][0]  # [3, H, W], CLIP-normalised
            pixels = frame.flatten(1).T  # [H*W, 3]
            colours, counts = torch.unique(pixels.round(decimals=1), dim=0, return_counts=True)
            ranked = colours[counts.argsort(descending=True)]
            out.add((tuple(ranked[0].tolist()), tuple(ranked[1].tolist())))  # background, square
        return out

    train_looks, test_looks = looks("train"), looks("test")
    train_backgrounds = {bg for bg, _ in train_looks}
    train_squares = {sq for _, sq in train_looks}
    assert len(test_looks) >= 2
    for background, square in test_looks:
        assert background not in train_backgrounds and square not in train_squares


@pytest.mark.slow
def test_stop_learns_motion_direction_on_new_looks(cache_dir, tmp_path, monkeypatch):
    metrics = run(cache_dir, tmp_path, monkeypatch)
    assert metrics["test/top1"] >= 0.95, metrics  # measured: 1.0 (44 held-out clips)


@pytest.mark.slow
def test_meanp_is_at_chance_after_the_same_training(cache_dir, tmp_path, monkeypatch):
    metrics = run(cache_dir, tmp_path, monkeypatch, "model.preset=clip4clip_meanp")
    # Each twin pair gets one prediction (test above), so exactly half of the clips are right.
    assert metrics["test/top1"] == 0.5, metrics
    assert metrics["test/mean_class"] == 0.5, metrics


def test_held_out_looks_are_refused_where_captions_name_the_colours(tmp_path):
    from types import SimpleNamespace

    from stop_lightning.data.synthetic import ensure_synthetic

    data = SimpleNamespace(
        synthetic_classes=2,
        synthetic_clips_per_class=4,
        synthetic_frames=4,
        synthetic_size=32,
        synthetic_looks=0,
        synthetic_heldout_looks=True,
        split=1,
    )
    with pytest.raises(ValueError, match=r"captions .* set data.synthetic_heldout_looks=false"):
        ensure_synthetic(data, tmp_path, layout="msrvtt")
    assert not list(tmp_path.rglob("*"))  # refused before anything is written
