"""Which frames to decode: explicit frame indices, small pure functions, easy to check by hand.

Randomness comes from a ``torch.Generator`` (or the global torch RNG, which DataLoader seeds
per worker), so a run is reproducible given its seed.
"""

from __future__ import annotations

import math

import torch


def segment_indices(
    num_frames: int,
    num_samples: int,
    train: bool,
    generator: torch.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> list[int]:
    """Uniform segment sampling (TSN): split ``[0, num_frames)`` into ``num_samples`` equal segments
    and take one frame per segment.

    Training takes a random position inside each segment; evaluation takes the segment's centre,
    or, for multi-view testing, position ``(clip + 0.5) / num_clips`` inside it. Videos shorter than
    ``num_samples`` frames repeat frames (e.g. 4 frames, 8 samples -> 0 0 1 1 2 2 3 3).
    """
    if num_frames < 1 or num_samples < 1:
        raise ValueError(
            f"segment_indices needs num_frames >= 1 and num_samples >= 1, got {num_frames}, {num_samples}"
        )
    seg = num_frames / num_samples
    if train:
        offsets = torch.rand(num_samples, generator=generator).tolist()
    else:
        if not 0 <= clip < num_clips:
            raise ValueError(f"clip {clip} is outside 0..{num_clips - 1}")
        offsets = [(clip + 0.5) / num_clips] * num_samples
    return [min(int(math.floor((k + u) * seg)), num_frames - 1) for k, u in enumerate(offsets)]


def multi_clip_indices(num_frames: int, num_samples: int, num_clips: int) -> list[list[int]]:
    """``num_clips`` evaluation clips of ``num_samples`` frames, evenly shifted inside each segment."""
    return [
        segment_indices(num_frames, num_samples, False, clip=c, num_clips=num_clips) for c in range(num_clips)
    ]


def fps_indices(
    num_frames: int,
    video_fps: float,
    num_samples: int,
    target_fps: float,
    train: bool,
    generator: torch.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> tuple[list[int], list[bool]]:
    """Frames at ``target_fps`` (retrieval, CLIP4Clip-style), at most ``num_samples`` of them.

    The video is resampled at ``target_fps``. If that gives more than ``num_samples`` frames, they are
    thinned by segment sampling over the resampled frames (random in training, centred in
    evaluation; ``clip``/``num_clips`` shift it for multi-view testing), so the clip still spans the
    whole video. If it gives fewer, the last frame is
    repeated and the returned mask is False for the padding.

    Returns ``(indices, mask)``, both of length ``num_samples``.
    """
    if num_frames < 1 or num_samples < 1:
        raise ValueError(
            f"fps_indices needs num_frames >= 1 and num_samples >= 1, got {num_frames}, {num_samples}"
        )
    if video_fps <= 0 or target_fps <= 0:
        raise ValueError(
            f"fps_indices needs positive frame rates, got video {video_fps}, target {target_fps}"
        )
    resampled = resample_indices(num_frames, video_fps, target_fps)
    count = len(resampled)
    if count > num_samples:
        picks = segment_indices(count, num_samples, train, generator, clip, num_clips)
        return [resampled[p] for p in picks], [True] * num_samples
    pad = num_samples - count
    return resampled + [resampled[-1]] * pad, [True] * count + [False] * pad


def resample_indices(num_frames: int, video_fps: float, target_fps: float) -> list[int]:
    """Source frames nearest to times ``k / target_fps`` (the first frame always; never past the end).

    Used by fps sampling and by the stored copies (``stop-lightning preprocess`` / ``shard``), so a
    stored copy at ``target_fps`` holds exactly the frames fps sampling at that rate would read.
    A ``target_fps`` above ``video_fps`` repeats frames (the stored copies cap it at ``video_fps``).
    """
    if num_frames < 1 or video_fps <= 0 or target_fps <= 0:
        raise ValueError(
            f"resample_indices needs positive inputs, got {num_frames}, {video_fps}, {target_fps}"
        )
    step = video_fps / target_fps  # source frames per resampled frame
    count = max(1, int(math.floor((num_frames - 1) / step)) + 1)
    return [min(int(round(k * step)), num_frames - 1) for k in range(count)]
