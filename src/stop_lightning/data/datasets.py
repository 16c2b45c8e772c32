"""Map-style datasets that stream clips from video files listed in a manifest.

``VideoClipDataset`` (recognition) yields ``{"video", "label", "index"}``; ``VideoCaptionDataset``
(retrieval) yields ``{"video", "frame_mask", "caption", "index"}`` in training and
``{"video", "frame_mask", "index"}`` in evaluation. Bad videos follow ``bad_video``:
``raise`` (``VideoDecodeError`` naming the file and the reason) or ``skip`` (a training clip is
replaced by another random clip; an evaluation clip by a blank one marked ``"unreadable": True``, so
every video and caption still counts in the metrics, as a miss), counted in a :class:`DataHealth`
shared with the worker processes. Every item carries the ``"unreadable"`` flag.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import random
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import SEEK_THRESHOLD, VideoDecodeError, VideoFile, configure_ffmpeg_logging
from .frame_indices import fps_indices, segment_indices
from .item_order import seeded
from .manifest import ClipRecord, resolve_video_path

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 20
SKIP_ADVICE = "set data.bad_video=skip to skip bad videos"  # a bad video's advice under bad_video=raise
_SPAWN = mp.get_context("spawn")


class DataHealth:
    """Counters of one dataset (clips served, skipped, FFmpeg warnings/errors) shared by all
    DataLoader workers through shared memory, read and reset by the main process each epoch."""

    # missing_frames: wanted frames past where a video really ends (a header that over-counts, or a
    # file cut short by less than half), each served as the nearest earlier frame (VideoFile.get_frames)
    KEYS = (
        "clips",
        "skipped",
        "decode_warnings",
        "decode_errors",
        "files_with_warnings",
        "missing_frames",
        "files_with_missing_frames",
    )
    # The counts worth a warning and a logged metric (data/<stage>_<count>) when not zero.
    REPORTED = ("skipped", "decode_warnings", "decode_errors", "missing_frames")

    def __init__(self, values: list[int] | None = None):
        # A spawn-context lock can be shared with both forked and spawned worker processes.
        self._shared = _SPAWN.Array("q", values or [0] * len(self.KEYS))

    def add(self, **counts: int) -> None:
        with self._shared.get_lock():
            for key, n in counts.items():
                self._shared[self.KEYS.index(key)] += n

    def snapshot(self) -> dict[str, int]:
        with self._shared.get_lock():
            return dict(zip(self.KEYS, self._shared[:]))

    def reset(self) -> dict[str, int]:
        """Current counts, then zero them."""
        with self._shared.get_lock():
            out = dict(zip(self.KEYS, self._shared[:]))
            self._shared[:] = [0] * len(self.KEYS)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Shared memory travels to worker processes being started; any other pickling (deepcopy,
        # checkpoint hparams) gets an independent copy of the current values.
        if mp_context.get_spawning_popen() is not None:
            return {"shared": self._shared}
        return {"values": list(self._shared[:])}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._shared = state["shared"]
        else:
            self._shared = _SPAWN.Array("q", state["values"])


@dataclass(frozen=True)
class SamplingConfig:
    num_frames: int
    sampling: str = "segment"  # segment | fps
    fps: float = 3.0
    min_video_frames: int = 1
    seek_threshold: int = SEEK_THRESHOLD


# Frame times k / fps within this many frames of a span's edge count as on it (float rounding).
_EDGE = 1e-6


def span_frames(num_frames: int, fps: float, start: float | None, end: float | None) -> tuple[int, int]:
    """``(lo, hi)``: the frames ``lo <= k < hi`` whose times ``k / fps`` lie in ``[start, end)``
    seconds, within the video (no ``start``: from 0; no ``end``: to the last frame). A span that
    holds no frame time gives the one frame on screen at ``start``; a span that starts after the
    last frame is a ValueError."""
    lo = 0 if start is None else math.ceil(start * fps - _EDGE)
    hi = num_frames if end is None else min(num_frames, math.ceil(end * fps - _EDGE))
    if lo >= num_frames:
        raise ValueError(
            f"the row's start={start}s is past the video's last frame (frame {num_frames - 1} at "
            f"{(num_frames - 1) / fps:.3f}s, {fps:g} fps); fix 'start' in the manifest"
        )
    if hi <= lo:  # shorter than a frame: the frame shown at start
        lo = math.floor(start * fps + _EDGE) if start is not None else 0
        hi = lo + 1
    return lo, hi


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python and numpy from the worker's torch seed, quiet FFmpeg."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    configure_ffmpeg_logging()


def assemble_views(views: list[torch.Tensor]) -> torch.Tensor:
    """The views of one item's clips, each ``[T, 3, S, S]`` or ``[crops, T, 3, S, S]``: one view as
    it is (training: no copy of the clip), more as ``[C*crops, T, 3, S, S]``."""
    if len(views) == 1 and views[0].dim() == 4:
        return views[0]
    video = torch.cat([v.reshape(-1, *v.shape[-4:]) for v in views])  # [C*crops, T, 3, S, S]
    return video[0] if video.shape[0] == 1 else video


class VideoDataset(Dataset):
    """Shared machinery: path checks, decoding, sampling, the bad-video policy."""

    def __init__(
        self,
        records: list[ClipRecord],
        video_root: str | Path,
        stage: str,
        sampling: SamplingConfig,
        transform: Callable[[torch.Tensor], torch.Tensor],
        bad_video: str = "raise",
        health: DataHealth | None = None,
        bad_video_advice: str = SKIP_ADVICE,
    ):
        if bad_video not in ("raise", "skip"):
            raise ValueError(f"bad_video must be 'raise' or 'skip', got {bad_video!r}")
        if sampling.sampling not in ("segment", "fps"):
            raise ValueError(f"sampling must be 'segment' or 'fps', got {sampling.sampling!r}")
        self.records = records
        self.video_root = Path(video_root)
        # Resolve (and refuse escaping paths) up front, not in a worker half-way through an epoch.
        self.paths = [resolve_video_path(self.video_root, r.path) for r in records]
        self.stage = stage
        self.train = stage == "train"
        self.sampling = sampling
        self.transform = transform
        self.bad_video = bad_video
        self.bad_video_advice = bad_video_advice  # what the reader of a raised bad video can do
        self.health = health if health is not None else DataHealth()
        self._known_bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def mark_bad(self, reasons: dict[Path, str]) -> int:
        """Items whose video is in ``reasons`` (found bad before the run) are bad without a decode;
        returns how many items that is."""
        hits = {i: reasons[p] for i, p in enumerate(self.paths) if p in reasons}
        self._known_bad.update(hits)
        return len(hits)

    # -- decoding ---------------------------------------------------------------------------

    def frame_indices(
        self, i: int, num_frames: int, fps: float, clip: int = 0, num_clips: int = 1
    ) -> tuple[list[int], list[bool]]:
        """Frames of item ``i``'s clip in a video of ``num_frames`` at ``fps``: sampled from the
        row's span ``[start, end)`` when it gives one, else from the whole video."""
        rec = self.records[i]
        try:
            lo, hi = span_frames(num_frames, fps, rec.start, rec.end)
        except ValueError as err:
            raise VideoDecodeError(self.paths[i], str(err)) from err
        s = self.sampling
        if s.sampling == "fps":
            idx, mask = fps_indices(
                hi - lo, fps, s.num_frames, s.fps, self.train, clip=clip, num_clips=num_clips
            )
        else:
            idx = segment_indices(hi - lo, s.num_frames, self.train, clip=clip, num_clips=num_clips)
            mask = [True] * s.num_frames
        return [lo + j for j in idx], mask

    def decode(self, i: int, num_clips: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip(s) of item ``i``: uint8 ``[num_clips, T, 3, H, W]`` and the bool frame mask
        ``[num_clips, T]``."""
        path = self.paths[i]
        with VideoFile(path, seek_threshold=self.sampling.seek_threshold) as video:
            n = video.info.num_frames
            if n < self.sampling.min_video_frames:
                raise VideoDecodeError(
                    path, f"too short: {n} frames < data.min_video_frames={self.sampling.min_video_frames}"
                )
            plans = [self.frame_indices(i, n, video.info.fps, c, num_clips) for c in range(num_clips)]
            flat = [j for idx, _ in plans for j in idx]
            try:
                frames = video.get_frames(flat)  # [num_clips*T, H, W, 3]
            finally:
                self._record_stats(path, video.stats)
        t = self.sampling.num_frames
        clips = torch.from_numpy(frames).permute(0, 3, 1, 2).reshape(num_clips, t, 3, *frames.shape[1:3])
        mask = torch.tensor([m for _, m in plans], dtype=torch.bool)
        return clips, mask

    def views(self, i: int, num_clips: int = 1) -> tuple[Any, torch.Tensor]:
        """Item ``i``'s clip(s) through the transform (:func:`assemble_views`) and the frame mask
        ``[num_clips, T]``; the random draws happen here, clip by clip."""
        clips, mask = self.decode(i, num_clips)  # [C, T, 3, H, W]
        return assemble_views([self.transform(c) for c in clips]), mask

    def _record_stats(self, path: Path, stats: Any) -> None:
        if stats.missing_frames:
            self.health.add(missing_frames=stats.missing_frames, files_with_missing_frames=1)
            log.debug("%s: %d wanted frames past its real end, repeated", path, stats.missing_frames)
        if stats.warnings or stats.errors:
            self.health.add(decode_warnings=stats.warnings, decode_errors=stats.errors, files_with_warnings=1)
            log.debug(
                "%s: %d FFmpeg warnings, %d errors: %s", path, stats.warnings, stats.errors, stats.messages
            )

    # -- policy -----------------------------------------------------------------------------

    def load(self, i: int) -> dict[str, Any]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def placeholder(self, i: int) -> dict[str, Any]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _output_size(self) -> tuple[int, torch.dtype]:
        """Side and dtype of the transform's clips (float32, or uint8 with data.normalize_on_device)."""
        out = self.transform(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
        return int(out.shape[-1]), out.dtype

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``i`` or ``(i, item_seed)`` from :class:`~stop_lightning.data.item_order.EpochSampler`;
        with a seed, the item's random offsets, crops and caption choice depend on it alone."""
        if isinstance(key, (tuple, list)):
            with seeded(int(key[1])):
                return self._get(int(key[0]))
        return self._get(int(key))

    def _get(self, i: int) -> dict[str, Any]:
        for _ in range(MAX_REPLACEMENTS):
            try:
                if i in self._known_bad:
                    raise VideoDecodeError(self.paths[i], self._known_bad[i])
                item = self.load(i)
                self.health.add(clips=1)
                return {**item, "unreadable": False}
            except VideoDecodeError as err:
                if self.bad_video == "raise":
                    raise VideoDecodeError(err.path, f"{err.reason} ({self.bad_video_advice})") from err
                if i not in self._known_bad:
                    self._known_bad[i] = err.reason
                    log.warning("skipping bad video %s: %s", err.path, err.reason)
                self.health.add(skipped=1)
                if not self.train:
                    return {**self.placeholder(i), "unreadable": True}
                i = int(torch.randint(len(self), ()).item())
        raise VideoDecodeError(
            self.paths[i],
            f"{MAX_REPLACEMENTS} bad videos in a row in the {self.stage} set; is data.video_root right?",
        )


class VideoClipDataset(VideoDataset):
    """Recognition. ``views = test_clips * test_crops`` evaluation views per item (only in ``test``)."""

    def __init__(self, *args: Any, num_clips: int = 1, num_crops: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for i, r in enumerate(self.records):
            if r.label is None:
                raise ValueError(f"recognition row {i + 1} ({r.path}) has no label")
        self.num_clips = num_clips
        self.num_crops = num_crops

    @property
    def labels(self) -> list[int]:
        return [int(r.label) for r in self.records]  # type: ignore[arg-type]

    def load(self, i: int) -> dict[str, Any]:
        video, _ = self.views(i, self.num_clips)
        return {"video": video, "label": int(self.records[i].label), "index": i}  # type: ignore[arg-type]

    def placeholder(self, i: int) -> dict[str, Any]:
        size, dtype = self._output_size()
        views = self.num_clips * self.num_crops
        shape = (
            (self.sampling.num_frames, 3, size, size)
            if views == 1
            else (views, self.sampling.num_frames, 3, size, size)
        )
        return {"video": torch.zeros(shape, dtype=dtype), "label": int(self.records[i].label), "index": i}  # type: ignore[arg-type]


class VideoCaptionDataset(VideoDataset):
    """Retrieval: one item per clip. Rows with the same path and span are merged (all their
    captions); spans of one video are items of their own."""

    def __init__(self, records: list[ClipRecord], *args: Any, **kwargs: Any):
        merged: dict[tuple[str, float | None, float | None], ClipRecord] = {}
        captions: dict[tuple[str, float | None, float | None], list[str]] = {}
        for r in records:
            if not r.captions:
                raise ValueError(f"retrieval row for {r.path} has no captions")
            clip = (r.path, r.start, r.end)
            merged.setdefault(clip, r)
            captions.setdefault(clip, []).extend(r.captions)
        self.captions = [captions[p] for p in merged]
        super().__init__(list(merged.values()), *args, **kwargs)

    def caption_index(self) -> tuple[list[str], list[int]]:
        """Every caption and the index of its video, in manifest order."""
        texts = [c for caps in self.captions for c in caps]
        owners = [i for i, caps in enumerate(self.captions) for _ in caps]
        return texts, owners

    def load(self, i: int) -> dict[str, Any]:
        video, mask = self.views(i)
        item = {"video": video, "frame_mask": mask[0], "index": i}
        if self.train:
            caps = self.captions[i]
            item["caption"] = caps[int(torch.randint(len(caps), ()).item())]
        return item

    def placeholder(self, i: int) -> dict[str, Any]:
        t = self.sampling.num_frames
        size, dtype = self._output_size()
        mask = torch.zeros(t, dtype=torch.bool)
        mask[0] = True  # one valid (blank) frame, so masked means stay defined
        return {"video": torch.zeros(t, 3, size, size, dtype=dtype), "frame_mask": mask, "index": i}
