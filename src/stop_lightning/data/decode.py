"""PyAV streaming decoder: open a video, read its header, decode only the frames asked for.

Short videos are decoded from the start and stop after the last wanted frame; long ones seek to
the key frame before each run of wanted frames. FFmpeg's own messages are captured per file and
counted (``DecodeStats``) instead of being printed by every worker.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.logging
import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

# Without key-frame positions: frames further apart than this are reached by seeking.
SEEK_THRESHOLD = 250
# With them: seek when a key frame lies more than this many frames past the last decoded one.
SEEK_MARGIN = 4


class _NoTimestamps(Exception):
    """Decoded frames lack timestamps, so a seek cannot be located: decode from the start instead."""


class VideoDecodeError(UserError, RuntimeError):
    """A video that cannot be used; ``path`` and ``reason`` say which and why.

    Raised in a DataLoader worker, torch re-raises it in the main process as
    ``VideoDecodeError(<the worker's whole traceback>)``; the constructor keeps only the original
    one-line message from it, so the user sees the same line as with ``num_workers=0``."""

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:  # torch's ExceptionWrapper.reraise: the worker's formatted traceback
            message = _worker_message(str(path))
            path, _, reason = message.partition(": ")
        self.path = str(path)
        # One line whatever FFmpeg said (its messages can span lines): the same line from a worker,
        # in a log and in a list of dropped files.
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{path}: {self.reason}")


def error_text(err: BaseException) -> str:
    """PyAV's message for ``err`` without the "last error log" it may append: that is FFmpeg's
    process-wide last log line, which a decoder in another thread may have written (so the same
    file read in a thread pool gave other words); what FFmpeg said about this file is in
    :class:`DecodeStats`."""
    return str(err).split("; last error log:")[0]


def _worker_message(text: str) -> str:
    """``path: reason`` from a worker traceback's last line (``...VideoDecodeError: path: reason``)."""
    marker = "VideoDecodeError: "
    last = text[text.rfind(marker) + len(marker) :] if marker in text else text
    return last.strip()


@dataclass
class DecodeStats:
    warnings: int = 0  # FFmpeg warnings (e.g. h264 "mmco: unref short failure")
    errors: int = 0  # FFmpeg errors and packets that failed to decode
    # Wanted frames past the real end (the header over-counted): filled with the last frame.
    missing_frames: int = 0
    messages: list[str] = field(default_factory=list)  # the first few distinct messages

    def add_message(self, level: int, text: str) -> None:
        if level <= av.logging.ERROR:
            self.errors += 1
        else:
            self.warnings += 1
        text = text.strip()
        if len(self.messages) < 5 and text not in self.messages:
            self.messages.append(text)


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


_logging_configured = False


def configure_ffmpeg_logging() -> None:
    """Let FFmpeg report warnings to PyAV (so they can be captured and counted), never to the console.

    Anything emitted outside a capture goes to the ``libav`` Python logger, which only passes errors.
    """
    global _logging_configured
    if _logging_configured:
        return
    av.logging.set_level(av.logging.WARNING)
    # PyAV drops a message equal to the previous one: a second bad file with the same FFmpeg
    # complaint (or a DataLoader worker forked after the parent logged it) would lose its reason.
    av.logging.set_skip_repeated(False)
    logging.getLogger("libav").setLevel(logging.ERROR)
    _logging_configured = True


class VideoFile:
    """An open video stream. Use as a context manager::

    with VideoFile(path) as video:
        frames = video.get_frames([0, 4, 8])  # uint8 [3, H, W, 3]
    """

    def __init__(self, path: str | Path, seek_threshold: int = SEEK_THRESHOLD, threads: int = 1):
        configure_ffmpeg_logging()
        self.path = Path(path)
        self.seek_threshold = seek_threshold
        self.stats = DecodeStats()
        if not self.path.is_file():
            raise VideoDecodeError(self.path, "file not found")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(self.path, "empty file (0 bytes)")
        capture = av.logging.Capture()
        try:
            with capture:
                self.container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as err:
            self._absorb(capture.logs)
            raise VideoDecodeError(self.path, f"cannot open: {error_text(err)}; {self._why()}") from err
        self._absorb(capture.logs)
        if not self.container.streams.video:
            self.container.close()
            raise VideoDecodeError(self.path, "no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = threads
        self._decoded_before = False
        self._keys: list[int] | None | bool = False  # False: not read yet
        self.info = self._read_info()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _read_info(self) -> VideoInfo:
        s = self.stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        if fps <= 0:
            fps = 25.0
            self.stats.add_message(av.logging.WARNING, "no frame rate in header; assuming 25 fps")
        n = int(s.frames or 0)
        if n <= 0 and s.duration is not None and s.time_base is not None:
            n = int(round(float(s.duration * s.time_base) * fps))
        if n <= 0 and self.container.duration:
            n = int(round(self.container.duration / av.time_base * fps))
        if n <= 0:
            n = self._count_packets()
        if n <= 0:
            raise VideoDecodeError(self.path, "no frames (empty video stream)")
        ctx = s.codec_context
        return VideoInfo(num_frames=n, fps=fps, width=int(ctx.width or 0), height=int(ctx.height or 0))

    def _count_packets(self) -> int:
        n = 0
        try:
            with av.logging.Capture() as logs:
                for packet in self.container.demux(self.stream):
                    n += packet.size > 0
        except av.error.FFmpegError:
            pass
        self._absorb(logs)
        self.container.seek(0)
        return n

    def _frame_index(self, frame: av.VideoFrame) -> int | None:
        if frame.pts is None or self.stream.time_base is None:
            return None
        start = self.stream.start_time or 0
        return int(round(float((frame.pts - start) * self.stream.time_base) * self.info.fps))

    def _decode(self, seek_to: int | None):
        """Yield ``(index, frame)`` from the start, or from the key frame before frame ``seek_to``."""
        if seek_to is not None:
            start = self.stream.start_time or 0
            target = start + int(seek_to / self.info.fps / float(self.stream.time_base))
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        elif self._decoded_before:
            self.container.seek(0)
        self._decoded_before = True
        counter = -1
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:
                self.stats.add_message(av.logging.ERROR, f"packet decode failed: {error_text(err)}")
                continue
            for frame in frames:
                if seek_to is None:
                    counter += 1
                else:
                    idx = self._frame_index(frame)
                    if idx is None:  # no timestamps to tell where the seek landed
                        raise _NoTimestamps
                    counter = idx
                yield counter, frame

    def key_frames(self) -> list[int] | None:
        """Frame indices of the key frames, from the packets (demuxed, not decoded; read once).
        ``None`` when a key packet has no timestamp (then runs fall back to ``seek_threshold``)."""
        if self._keys is False:
            keys: list[int] | None = []
            start = self.stream.start_time or 0
            try:
                with av.logging.Capture() as logs:
                    for packet in self.container.demux(self.stream):
                        if packet.is_keyframe and packet.size > 0:
                            if packet.pts is None or self.stream.time_base is None:
                                keys = None
                                break
                            keys.append(
                                int(
                                    round(float((packet.pts - start) * self.stream.time_base) * self.info.fps)
                                )
                            )
                self._absorb(logs)
            except av.error.FFmpegError:
                keys = None
            self._decoded_before = True  # the demux moved the read position: the next decode seeks back
            self._keys = sorted(set(keys)) if keys else None
        return self._keys

    def _runs(self, wanted: list[int]) -> list[tuple[int | None, list[int]]]:
        """Group sorted frame indices into runs decoded in one go, each with the frame to seek to
        (``None``: decode from the start). With key frames known, a run ends where a key frame lies
        more than ``SEEK_MARGIN`` frames past the previous wanted frame: seeking there skips decoding
        the frames in between (short-GOP files: one run per wanted frame); otherwise runs break at
        gaps over ``seek_threshold``."""
        keys = self.key_frames() if self.info.num_frames > SEEK_MARGIN * len(wanted) else None
        if keys is None and self.info.num_frames <= self.seek_threshold:
            return [(None, wanted)]
        runs: list[tuple[int | None, list[int]]] = []
        prev = -1
        for i in wanted:
            if keys is not None:
                key = keys[bisect.bisect_right(keys, i) - 1] if i >= keys[0] else 0
                new_run = key > prev + SEEK_MARGIN
                seek = i if key > 0 else None
            else:
                new_run = not runs or i - prev > self.seek_threshold
                seek = i if i > self.seek_threshold else None
            if new_run or not runs:
                runs.append((seek, [i]))
            else:
                runs[-1][1].append(i)
            prev = i
        return runs

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames at ``indices`` (any order, repeats allowed) as uint8 ``[len(indices), H, W, 3]``."""
        if len(indices) == 0:
            raise ValueError("get_frames needs at least one index")
        last = self.info.num_frames - 1
        wanted = sorted({min(max(int(i), 0), last) for i in indices})
        got: dict[int, np.ndarray] = {}
        with av.logging.Capture() as logs:
            for seek_to, run in self._runs(wanted):
                try:
                    self._collect(self._decode(seek_to), set(run), run[-1], got)
                except _NoTimestamps:
                    self._collect(self._decode(None), set(run), run[-1], got)
        self._absorb(logs)
        if not got:
            raise VideoDecodeError(
                self.path, f"no decodable frames (header says {self.info.num_frames}); {self._why()}"
            )
        missing = [i for i in wanted if i not in got]
        if len(missing) * 2 > len(wanted):
            raise VideoDecodeError(
                self.path,
                f"truncated or corrupt: decoded {len(got)} of {len(wanted)} wanted frames "
                f"(header says {self.info.num_frames}, last decoded {max(got)}); {self._why()}",
            )
        if missing:
            # The header over-counted by a few frames (common); repeat the nearest earlier frame.
            self.stats.missing_frames += len(missing)
            have = sorted(got)
            for i in missing:
                earlier = [h for h in have if h <= i]
                got[i] = got[earlier[-1] if earlier else have[0]]
        out = [got[min(max(int(i), 0), last)] for i in indices]
        return np.stack(out)

    def iter_frames(self, indices: Sequence[int]) -> Iterator[tuple[int, av.VideoFrame]]:
        """One pass from the start: ``(index, frame)`` for each distinct wanted index, in increasing order.

        For copying a whole video (``stop-lightning preprocess`` / ``shard``); frames past the real
        end (a header that over-counted) are simply not yielded. FFmpeg messages go to ``stats``.
        """
        todo = sorted({int(i) for i in indices})
        if not todo:
            return
        pos = 0
        with av.logging.Capture() as logs:
            for idx, frame in self._decode(None):
                if idx == todo[pos]:
                    yield idx, frame
                    pos += 1
                    if pos == len(todo):
                        break
        self._absorb(logs)

    @staticmethod
    def _collect(frames, todo: set[int], last: int, got: dict[int, np.ndarray]) -> None:
        for idx, frame in frames:
            if idx in todo:
                got[idx] = frame.to_ndarray(format="rgb24")
                todo.discard(idx)
            if not todo or idx > last:
                break

    def _absorb(self, logs) -> None:
        for level, _, message in logs:
            self.stats.add_message(level, message)

    def _why(self) -> str:
        return (
            "FFmpeg said: " + " | ".join(self.stats.messages) if self.stats.messages else "no FFmpeg message"
        )


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps and size from the header (counting packets if the header lacks a count)."""
    with VideoFile(path) as video:
        return video.info
