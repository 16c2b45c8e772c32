"""What ``stop-lightning preprocess`` and ``stop-lightning shard`` share: the stored frame rate and
size, the list of videos behind a manifest folder, reading a source video's frames at that rate and
size, and an ordered parallel map with a progress bar.

A stored copy keeps the frames that fps sampling at ``fps`` would read (``frame_indices.resample_indices``)
scaled so the short side is ``short_side`` (never enlarged), so segment and fps sampling over the
copy see the same timeline as over the source, at the stored rate.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from .decode import VideoDecodeError, VideoFile
from .frame_indices import resample_indices
from .manifest import ClipRecord, read_manifest

# Few-shot lists are subsets of a training manifest, whose copy already holds their videos.
DERIVED_MANIFEST_MARK = "_fewshot_"


@dataclass(frozen=True)
class StoreSettings:
    short_side: int = 224
    fps: float = 3.0  # 0: every source frame
    codec: str = "h264"  # preprocess: h264 | mpeg4
    gop: int = 6  # preprocess: key frame every `gop` stored frames
    crf: int = 23  # preprocess, h264: constant-rate quality
    jpeg_quality: int = 90  # shard


def settings_from_config(data_cfg: Any, **flags: Any) -> StoreSettings:
    """``data.store_*``, overridden by non-None ``flags``. ``store_fps=-1``: the experiment's
    ``data.fps`` when it samples by frame rate (``data.sampling=fps``), else every source frame (0):
    segment sampling spreads its picks over all of a video's frames, and a copy at a lower rate
    would change which frames those are."""
    fps = float(data_cfg.store_fps)
    if fps < 0:
        fps = float(data_cfg.fps) if data_cfg.sampling == "fps" else 0.0
    settings = StoreSettings(
        short_side=int(data_cfg.store_short_side),
        fps=fps,
        codec=str(data_cfg.store_codec),
        gop=int(data_cfg.store_gop),
        jpeg_quality=int(data_cfg.store_jpeg_quality),
    )
    given = {k: v for k, v in flags.items() if v is not None}
    return StoreSettings(**{**settings.__dict__, **given})


def manifest_files(manifest_dir: Path) -> list[Path]:
    """Every ``*.jsonl`` under ``manifest_dir`` except derived subsets (few-shot lists), sorted."""
    files = sorted(p for p in Path(manifest_dir).rglob("*.jsonl") if DERIVED_MANIFEST_MARK not in p.name)
    if not files:
        raise FileNotFoundError(
            f"no *.jsonl manifests under {manifest_dir}: build them first (stop-lightning manifest)"
        )
    return files


def unique_paths(records: Iterable[ClipRecord]) -> list[str]:
    """Video paths in first-seen order (retrieval manifests repeat a video once per caption row)."""
    return list(dict.fromkeys(r.path for r in records))


def videos_of(files: list[Path]) -> list[str]:
    return unique_paths(r for f in files for r in read_manifest(f))


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so the short side is ``short_side`` (not enlarged), both even."""
    scale = min(1.0, short_side / max(1, min(width, height)))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


@dataclass(frozen=True)
class StoredTimeline:
    source_frames: int
    source_fps: float
    fps: float  # stored rate (<= source rate)
    indices: list[int]  # source frames kept, in order
    width: int
    height: int


def timeline(video: VideoFile, settings: StoreSettings) -> StoredTimeline:
    info = video.info
    fps = info.fps if settings.fps <= 0 else min(settings.fps, info.fps)
    width, height = stored_size(info.width, info.height, settings.short_side)
    return StoredTimeline(
        info.num_frames, info.fps, fps, resample_indices(info.num_frames, info.fps, fps), width, height
    )


def stored_frames(video: VideoFile, plan: StoredTimeline, fmt: str) -> Iterator[av.VideoFrame]:
    """The kept frames, scaled, in pixel format ``fmt``. Fails (``VideoDecodeError``) when fewer than
    half of them decode; a few missing at the end (a header that over-counted) are dropped."""
    got = 0
    for _, frame in video.iter_frames(plan.indices):
        got += 1
        yield frame.reformat(width=plan.width, height=plan.height, format=fmt, interpolation="AREA")
    if got * 2 < len(plan.indices):
        raise VideoDecodeError(
            video.path,
            f"truncated or corrupt: decoded {got} of {len(plan.indices)} frames to store; {video._why()}",
        )


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def ordered_map(
    fn: Callable[[Any], Any], jobs: list[Any], workers: int, desc: str, progress: bool = True
) -> Iterator[Any]:
    """``fn(job)`` for every job, results in job order, ``workers`` processes (0: in this process),
    at most a few jobs ahead of the consumer (bounded memory), with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="video", disable=not progress)
    try:
        if workers <= 0:
            for job in jobs:
                yield fn(job)
                bar.update()
            return
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
        try:
            todo = iter(jobs)
            pending: deque = deque(pool.submit(fn, job) for _, job in zip(range(4 * workers), todo))
            while pending:
                result = pending.popleft().result()
                for job in todo:  # keep the window full
                    pending.append(pool.submit(fn, job))
                    break
                yield result
                bar.update()
        finally:  # also on Ctrl-C / SIGTERM / an abandoned generator: queued jobs are dropped
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
