"""``stop-lightning preprocess``: smaller, faster-to-decode copies of a dataset's videos.

Every video named in the manifests is transcoded (PyAV, no ffmpeg binary) to the stored frame rate
and short side (``data/stored_copies.py``), H.264 (``tune=fastdecode``, no B-frames) or MPEG-4 part 2,
with a key frame every ``gop`` frames so a seek lands close to any wanted frame. Then:

- each output is encoded under a temporary name, decoded back in full (frame count checked), and
  only then renamed into place: a finished name is always a whole, verified video;
- an existing output counts as done, so an interrupted run resumes where it stopped; temporary
  files of a killed run are removed at the start of the next one (SIGTERM/Ctrl-C remove their own);
- videos that fail are listed in ``preprocess_report.json`` (path and reason) and left out of the
  new manifests, which otherwise copy every row (ids, labels, captions) with the new path, frame
  count and rate, next to the copied ``classes.txt``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

from ..fileio import WRITE_ONLY_ERRNOS, atomic_write, storage_error
from .decode import VideoDecodeError, VideoFile, probe_video
from .manifest import CLASSES_FILE, ManifestError, read_manifest, resolve_video_path, write_manifest
from .stored_copies import StoreSettings, manifest_files, ordered_map, stored_frames, timeline, unique_paths

log = logging.getLogger(__name__)

TMP_MARK = ".partial"
REPORT = "preprocess_report.json"
CODECS = {"h264": ("libx264", "yuv420p"), "mpeg4": ("mpeg4", "yuv420p")}


@dataclass(frozen=True)
class Outcome:
    path: str  # manifest path of the source
    out_path: str  # manifest path of the copy
    status: str  # done | existing | failed
    num_frames: int = 0
    fps: float = 0.0
    reason: str = ""


def output_path(rel: str) -> str:
    return str(Path(rel).with_suffix(".mp4"))


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_MARK}")


def encoder_options(settings: StoreSettings) -> dict[str, str]:
    if settings.codec == "h264":
        return {
            "crf": str(settings.crf),
            "preset": "veryfast",
            "tune": "fastdecode",
            "g": str(settings.gop),
            "keyint_min": str(settings.gop),
            "bf": "0",
        }
    return {"qscale": "3", "g": str(settings.gop)}


def transcode(src: Path, dst: Path, settings: StoreSettings) -> tuple[int, float]:
    """Write the stored copy of ``src`` to ``dst`` (an .mp4); returns (frames written, fps)."""
    codec, pix_fmt = CODECS[settings.codec]
    with VideoFile(src) as video:
        plan = timeline(video, settings)
        rate = Fraction(plan.fps).limit_denominator(1001)
        n = 0
        with av.open(str(dst), mode="w", format="mp4") as out:
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = plan.width, plan.height, pix_fmt
            stream.options = encoder_options(settings)
            for frame in stored_frames(video, plan, pix_fmt):
                frame.pts, frame.time_base = n, 1 / rate  # renumbered at the stored rate
                for packet in stream.encode(frame):
                    out.mux(packet)
                n += 1
            for packet in stream.encode():
                out.mux(packet)
    return n, float(rate)


def verify(path: Path, expected: int) -> None:
    """Decode every frame of ``path``; the count must be ``expected``."""
    with VideoFile(path) as video:
        got = sum(1 for _ in video.iter_frames(range(max(expected, video.info.num_frames))))
    if got != expected:
        raise VideoDecodeError(path, f"verification decode read {got} frames, {expected} were written")


class _Job:
    """Picklable work item: one source video to one verified copy."""

    def __init__(self, src_root: Path, out_root: Path, settings: StoreSettings):
        self.src_root, self.out_root, self.settings = src_root, out_root, settings

    def __call__(self, rel: str) -> Outcome:
        out_rel = output_path(rel)
        final = self.out_root / out_rel
        if final.is_file():
            info = probe_video(final)
            return Outcome(rel, out_rel, "existing", info.num_frames, info.fps)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(final)
        try:
            n, fps = transcode(resolve_video_path(self.src_root, rel), tmp, self.settings)
            verify(tmp, n)
            os.replace(tmp, final)
            return Outcome(rel, out_rel, "done", n, fps)
        except (VideoDecodeError, ManifestError, av.error.FFmpegError, OSError, ValueError) as err:
            if isinstance(err, OSError) and err.errno in WRITE_ONLY_ERRNOS:  # the disk, not this video
                tmp.unlink(missing_ok=True)
                raise storage_error(err, final) from err
            return Outcome(rel, out_rel, "failed", reason=str(err))
        finally:
            tmp.unlink(missing_ok=True)


def _terminate(signum, frame):  # SIGTERM ends a worker like Ctrl-C: its `finally` removes the temporary file
    raise KeyboardInterrupt


def remove_partials(out_root: Path) -> int:
    n = 0
    for p in out_root.rglob(f".*{TMP_MARK}"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def preprocess(
    video_root: str | Path,
    manifest_dir: str | Path,
    out_dir: str | Path,
    settings: StoreSettings,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Copies of every video in ``manifest_dir``'s manifests under ``out_dir/videos``, new manifests
    under ``out_dir/manifests``; returns the report (also written to ``out_dir/preprocess_report.json``)."""
    video_root, manifest_dir, out_dir = Path(video_root), Path(manifest_dir), Path(out_dir)
    out_videos, out_manifests = out_dir / "videos", out_dir / "manifests"
    out_videos.mkdir(parents=True, exist_ok=True)
    stale = remove_partials(out_videos)
    if stale:
        log.info("removed %d temporary files left by an interrupted run", stale)
    files = manifest_files(manifest_dir)
    rows = {f: read_manifest(f) for f in files}
    videos = unique_paths(r for recs in rows.values() for r in recs)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        outcomes = {
            o.path: o
            for o in ordered_map(
                _Job(video_root, out_videos, settings), videos, workers, "preprocess", progress
            )
        }
    finally:
        signal.signal(signal.SIGTERM, previous)
    for f, recs in rows.items():
        kept = [
            r.__class__(**{**r.__dict__, "path": o.out_path, "num_frames": o.num_frames, "fps": o.fps})
            for r in recs
            if (o := outcomes[r.path]).status != "failed"
        ]
        write_manifest(out_manifests / f.relative_to(manifest_dir), kept)
    for classes in manifest_dir.rglob(CLASSES_FILE):
        target = out_manifests / classes.relative_to(manifest_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(classes, target)
    failed = [o for o in outcomes.values() if o.status == "failed"]
    report = {
        "settings": asdict(settings),
        "videos": len(videos),
        "done": sum(o.status == "done" for o in outcomes.values()),
        "existing": sum(o.status == "existing" for o in outcomes.values()),
        "failed": [{"path": o.path, "reason": o.reason} for o in failed],
        "video_root": str(out_videos),
        "manifest_dir": str(out_manifests),
    }
    atomic_write(out_dir / REPORT, json.dumps(report, indent=1) + "\n")
    return report
