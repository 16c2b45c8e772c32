"""`stop-lightning preprocess`: killed half-way and rerun, nothing is redone and nothing is half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stop_lightning.data.decode import VideoFile
from stop_lightning.data.manifest import ClipRecord, read_manifest, write_classes, write_manifest
from stop_lightning.data.preprocess import REPORT, TMP_MARK, preprocess
from stop_lightning.data.stored_copies import StoreSettings
from stop_lightning.data.synthetic import frame_code_frames, read_frame_code, write_video

SRC = Path(__file__).resolve().parents[2] / "src"
SETTINGS = StoreSettings(short_side=48, fps=4, gop=3)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """24 frame-numbered videos (8 fps, 64 px, 64 frames) with labels, ids and captions, and one bad file."""
    root = tmp_path_factory.mktemp("pp_src")
    rows = []
    for i in range(24):
        path = f"v/clip{i:02d}.avi"
        write_video(root / "videos" / path, frame_code_frames(64, 64), fps=8.0)
        rows.append(ClipRecord(path, label=i % 3, captions=(f"clip {i}",), video_id=f"id{i}"))
    (root / "videos" / "v" / "bad.avi").write_bytes(b"not a video" * 50)
    rows.append(ClipRecord("v/bad.avi", label=0, video_id="bad"))
    write_manifest(root / "manifests" / "split1" / "train.jsonl", rows[:12] + rows[-1:])
    write_manifest(root / "manifests" / "split1" / "test.jsonl", rows[12:24])
    write_classes(root / "manifests" / "classes.txt", ["a", "b", "c"])
    return root / "videos", root / "manifests"


def _start(videos: Path, manifests: Path, out: Path) -> subprocess.Popen:
    code = (
        "import sys; from stop_lightning.data.preprocess import preprocess; "
        "from stop_lightning.data.stored_copies import StoreSettings;"
        f"preprocess({str(videos)!r}, {str(manifests)!r}, {str(out)!r}, "
        f"StoreSettings(**{SETTINGS.__dict__!r}), workers=1,"
        " progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _finished(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "videos").rglob("*.mp4")}


def _check_decodes(path: Path) -> list[int]:
    """Frame codes of every frame of a copy (it must decode in full)."""
    with VideoFile(path) as video:
        return [
            read_frame_code(f.to_ndarray(format="rgb24"))
            for _, f in video.iter_frames(range(video.info.num_frames))
        ]


def test_killed_then_rerun_redoes_nothing_and_leaves_no_partial_file(source, tmp_path):
    videos, manifests = source
    out = tmp_path / "out"
    proc = _start(videos, manifests, out)
    deadline = time.time() + 120
    while (
        len(_finished(out) if (out / "videos").is_dir() else {}) < 3
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker, mid-way, no chance to clean up
    proc.wait()
    before = _finished(out)
    assert 3 <= len(before) < 24, f"the kill should land mid-run, {len(before)} of 24 were finished"
    for rel in before:  # a finished name is always a whole video
        assert len(_check_decodes(out / rel)) == 32

    # what a kill during an encode leaves (the kill above may land between two videos): a partial file
    (out / "videos" / "v" / f".clip23.mp4.99999{TMP_MARK}").write_bytes(b"half an mp4")

    report = preprocess(videos, manifests, out, SETTINGS, workers=0, progress=False)

    after = _finished(out)
    assert {k: after[k] for k in before} == before, "finished copies were redone"
    assert (report["existing"], report["done"]) == (len(before), 24 - len(before))
    assert [f["path"] for f in report["failed"]] == ["v/bad.avi"] and "cannot open" in report["failed"][0][
        "reason"
    ]
    assert json.loads((out / REPORT).read_text())["failed"] == report["failed"]
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name or p.name.endswith(".tmp")]
    # every copy: 64 frames at 8 fps kept at 4 fps = source frames 0, 2, ..., 62, 48 px short side
    for rel in after:
        assert _check_decodes(out / rel) == list(range(0, 64, 2))
    with VideoFile(out / next(iter(after))) as video:
        assert (video.info.width, video.info.height, video.info.fps) == (48, 48, 4.0)
    # the new manifests: the same rows (ids, labels, captions) less the failed video, new paths and timing
    for split in ("train", "test"):
        old = [r for r in read_manifest(manifests / "split1" / f"{split}.jsonl") if r.video_id != "bad"]
        new = read_manifest(out / "manifests" / "split1" / f"{split}.jsonl")
        assert [(r.video_id, r.label, r.captions) for r in new] == [
            (r.video_id, r.label, r.captions) for r in old
        ]
        assert all(r.path.endswith(".mp4") and (r.num_frames, r.fps) == (32, 4.0) for r in new)
    assert (out / "manifests" / "classes.txt").read_text() == (manifests / "classes.txt").read_text()
