"""Before the first step: every validation and test video opens and holds the frames a clip needs.

A run tests its model only after the whole fit; a test video that cannot be read found then costs the
fit its test. So the evaluation videos are probed first, cheaply enough for 100k files: the container
header is read (a file that is empty, not a video, or cut before its header ends fails here), a video
stream with a decoder and a frame count must be there, its first packet must decode, and the container
must hold a packet as far as the loader needs. That last check finds a file cut short whatever the
container keeps its index in. The loader fails a clip when more than half of its wanted frames are
missing (``decode.VideoFile.get_frames``); for an evaluation clip of ``data.num_frames`` frames
sampled across the header's length (``frame_indices.segment_indices``, the recognition default), it
needs the content to reach the middle one of them, and that is the frame the probe seeks to. Other
samplings (several test clips, retrieval's frame rate, a row's span) want about the same half, not
exactly it. A packet is demuxed there but not decoded: a file whose later packets are damaged passes,
and is found by the test loop (``train.py`` then names the checkpoint and the ``eval`` command).

The files are probed on a thread pool: FFmpeg releases the GIL while it reads and parses, and on a
network file system the time is the round trips, which threads overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av

from .decode import VideoDecodeError, VideoFile, error_text
from .frame_indices import segment_indices

SHOWN = 5  # unreadable files named in the one-line message
FIX_OR_SKIP = (
    "Fix or remove them (stop-lightning manifest ... --probe --drop-unreadable leaves them out), "
    "or set data.bad_video=skip to score each as a miss"
)


def probe_reason(path: str | Path, sampled_frames: int) -> str | None:
    """Why the video at ``path`` cannot give a clip of ``sampled_frames`` frames (one line), or ``None``
    when it passes the probe."""
    try:
        with VideoFile(path) as video:
            if video.stream.codec_context is None:
                return "no decoder for its video codec"
            with av.logging.Capture():  # FFmpeg's complaints stay off the console
                first = next(video.container.demux(video.stream), None)
                if first is None or first.size == 0:
                    return f"no video packet (the header says {video.info.num_frames} frames)"
                first.decode()
                n = video.info.num_frames
                wanted = sorted(set(segment_indices(n, sampled_frames, train=False)))
                needed = wanted[math.ceil(len(wanted) / 2) - 1]  # the loader accepts half of them
                if not _reaches(video, needed):
                    return f"truncated: the header says {n} frames, the content ends before frame {needed}"
    except VideoDecodeError as err:
        return err.reason
    except (av.error.FFmpegError, OSError) as err:
        return " ".join(f"cannot read: {error_text(err)}".split())
    return None


def _reaches(video: VideoFile, frame: int) -> bool:
    """The container holds a packet at or after ``frame`` (seek to the key frame before it, then demux)."""
    if frame <= 0:
        return True
    stream = video.stream
    if stream.time_base is None:
        return True  # no timestamps to seek by: the first packet is all that can be checked cheaply
    start = stream.start_time or 0
    target = start + int(frame / video.info.fps / float(stream.time_base))
    try:
        video.container.seek(target, stream=stream, backward=True, any_frame=False)
        for packet in video.container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            if packet.pts >= target:
                return True
    except av.error.FFmpegError:
        return False
    return False


def unreadable_videos(paths: Iterable[Path], sampled_frames: int, threads: int) -> dict[Path, str]:
    """``{path: reason}`` for each distinct path in ``paths`` that fails :func:`probe_reason`, in the
    order given, probed on ``threads`` threads."""
    listed = list(dict.fromkeys(Path(p) for p in paths))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        reasons = list(pool.map(lambda p: probe_reason(p, sampled_frames), listed))
    return {p: why for p, why in zip(listed, reasons) if why is not None}


def unreadable_summary(bad: dict[Path, str], total: int, splits: str) -> str:
    """One line: how many of the ``total`` ``splits`` videos failed the probe, the first few with their
    reasons."""
    first = "; ".join(f"{path}: {why}" for path, why in list(bad.items())[:SHOWN])
    more = f"; ... ({len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
    return f"{len(bad)} of {total} {splits} videos cannot be read (probed before training): {first}{more}"
