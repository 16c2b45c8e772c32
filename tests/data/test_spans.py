"""A manifest row's ``start``/``end``: the datasets sample frames only from inside ``[start, end)``.

The video's frames carry their own index (``frame_code_frames``), so which frame was decoded is read
from the pixels, and the frames a span holds are worked out here from the definition alone: frame
``k`` is shown at ``k / fps`` seconds and is in the span when ``start <= k / fps < end``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stop_lightning.data.datasets import SamplingConfig, VideoCaptionDataset, VideoClipDataset
from stop_lightning.data.decode import VideoDecodeError
from stop_lightning.data.manifest import ClipRecord, write_manifest
from stop_lightning.data.shards import shard_dataset, write_shards
from stop_lightning.data.stored_copies import StoreSettings
from stop_lightning.data.synthetic import frame_code_frames, read_frame_code, write_video

FPS = 10.0
FRAMES = 120  # 12 seconds


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("spans")
    write_video(root / "codes.mp4", frame_code_frames(FRAMES, 32), fps=FPS, gop=10)
    return root


def in_span(start: float | None, end: float | None) -> set[int]:
    lo = 0.0 if start is None else start
    hi = float("inf") if end is None else end
    return {k for k in range(FRAMES) if lo <= k / FPS < hi}


def codes(clip: torch.Tensor) -> list[int]:
    """The frame index drawn in each frame of ``[..., T, 3, H, W]``, flattened."""
    return [read_frame_code(f.numpy()) for f in clip.reshape(-1, *clip.shape[-3:])]


def clip_dataset(root, rows, stage="train", sampling="segment", num_frames=8, **kwargs):
    cfg = SamplingConfig(num_frames=num_frames, sampling=sampling, fps=2.0)
    return VideoClipDataset(rows, root, stage, cfg, lambda c: c, **kwargs)


SPANS = [(3.05, 7.5), (0.0, 2.0), (10.0, None), (None, 4.4), (8.8, 40.0), (3.0, 3.6)]


@pytest.mark.parametrize("sampling", ["segment", "fps"])
@pytest.mark.parametrize(("start", "end"), SPANS)
def test_training_frames_lie_in_the_span(video, sampling, start, end):
    ds = clip_dataset(video, [ClipRecord("codes.mp4", label=0, start=start, end=end)], sampling=sampling)
    wanted = in_span(start, end)
    seen: set[int] = set()
    for seed in range(6):
        got = codes(ds[(0, seed)]["video"])
        assert set(got) <= wanted, f"seed {seed}: frames {sorted(set(got) - wanted)} outside {start}..{end}"
        assert got == sorted(got)
        seen |= set(got)
    if sampling == "segment" and len(wanted) > 8:
        assert len(seen) > 8  # the random offsets move, inside the span


@pytest.mark.parametrize("sampling", ["segment", "fps"])
def test_multi_view_test_clips_lie_in_the_span(video, sampling):
    start, end = 2.25, 9.0
    rows = [ClipRecord("codes.mp4", label=0, start=start, end=end)]
    ds = clip_dataset(video, rows, stage="test", sampling=sampling, num_clips=3)
    clips = ds[0]["video"]  # [3, 8, 3, H, W]
    assert clips.shape[:2] == (3, 8)
    assert set(codes(clips)) <= in_span(start, end)
    if sampling == "segment":  # 3 clips x 8 segments over the 68 frames 23..90, centred per clip
        segment = len(in_span(start, end)) / 8
        first = min(in_span(start, end))
        expected = [first + int((k + (c + 0.5) / 3) * segment) for c in range(3) for k in range(8)]
        assert codes(clips) == expected


def test_a_short_span_pads_fps_sampling_and_masks_the_padding(video):
    start, end = 3.0, 3.6  # frames 30..35; at 2 fps: frames 30 and 35
    rows = [ClipRecord("codes.mp4", captions=("a jump",), start=start, end=end)]
    ds = VideoCaptionDataset(
        rows, video, "test", SamplingConfig(num_frames=8, sampling="fps", fps=2.0), lambda c: c
    )
    item = ds[0]
    assert codes(item["video"]) == [30, 35] + [35] * 6
    assert item["frame_mask"].tolist() == [True, True] + [False] * 6


def test_a_span_shorter_than_a_frame_gives_the_frame_on_screen(video):
    ds = clip_dataset(video, [ClipRecord("codes.mp4", label=0, start=3.01, end=3.02)], stage="val")
    assert codes(ds[0]["video"]) == [30] * 8  # frame 30 is shown from 3.0 s to 3.1 s


def test_rows_without_a_span_sample_the_whole_video_as_before(video):
    ds = clip_dataset(video, [ClipRecord("codes.mp4", label=0)], stage="val")
    assert codes(ds[0]["video"]) == [int((k + 0.5) * FRAMES / 8) for k in range(8)]


def test_a_start_past_the_last_frame_is_a_bad_video_naming_the_file(video):
    rows = [ClipRecord("codes.mp4", label=0, start=11.95), ClipRecord("codes.mp4", label=0, start=11.9)]
    ds = clip_dataset(video, rows, stage="val")
    with pytest.raises(
        VideoDecodeError, match=r"codes\.mp4: the row's start=11\.95s is past the video's last frame"
    ):
        ds[0]
    assert codes(ds[1]["video"]) == [119] * 8
    skipping = clip_dataset(video, rows, stage="val", bad_video="skip")
    assert skipping[0]["unreadable"] and not skipping[1]["unreadable"]


def test_spans_of_one_video_are_items_of_their_own(video):
    rows = [
        ClipRecord("codes.mp4", captions=("first",), start=0.0, end=4.0),
        ClipRecord("codes.mp4", captions=("second",), start=4.0, end=8.0),
        ClipRecord("codes.mp4", captions=("first, again",), start=0.0, end=4.0),
    ]
    ds = VideoCaptionDataset(rows, video, "val", SamplingConfig(num_frames=4), lambda c: c)
    assert len(ds) == 2 and ds.captions == [["first", "first, again"], ["second"]]
    assert set(codes(ds[0]["video"])) <= in_span(0.0, 4.0)
    assert set(codes(ds[1]["video"])) <= in_span(4.0, 8.0)
    assert np.all(np.diff(codes(ds[1]["video"])) > 0)


class Unchanged:
    """A shard transform (its random draws, then their application) that leaves the frames as stored."""

    def draw(self, height: int, width: int) -> None:
        return None

    def apply(self, video, params=None):
        return video


def test_frame_shards_sample_the_same_span(video, tmp_path):
    rows = [ClipRecord("codes.mp4", label=0, start=2.25, end=9.0)]
    manifests = tmp_path / "manifests"
    write_manifest(manifests / "val.jsonl", rows)
    write_shards(video, manifests, tmp_path / "shards", StoreSettings(short_side=32, fps=0), progress=False)
    sampling = SamplingConfig(num_frames=8)
    shards = shard_dataset(
        VideoClipDataset, rows, str(tmp_path / "shards"), manifests, "val", sampling, Unchanged()
    )
    assert codes(shards[0]["video"]) == codes(clip_dataset(video, rows, stage="val")[0]["video"])
    assert set(codes(shards[0]["video"])) <= in_span(2.25, 9.0)
