"""PyAV decoding: frames come back as written, the right indices, bad files named with a reason."""

import numpy as np
import pytest

from stop_lightning.data.decode import VideoDecodeError, VideoFile, probe_video
from stop_lightning.data.synthetic import (
    COLOURS,
    clip_look,
    frame_code_frames,
    motion_classes,
    motion_frames,
    read_frame_code,
    square_positions,
    square_side,
    write_video,
)


@pytest.fixture(scope="module")
def code_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("codes")
    return {
        "avi": write_video(d / "codes.avi", frame_code_frames(24, 32)),
        "mp4": write_video(d / "codes.mp4", frame_code_frames(24, 32)),
        "long": write_video(d / "long.mp4", frame_code_frames(200, 32), fps=25, gop=10),
    }


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_motion_video_decodes_to_what_was_written(tmp_path, suffix):
    cls, look = motion_classes(4)[1], clip_look(0, seed=0)  # "move right"
    written = motion_frames(cls, look, 16, 64)
    path = write_video(tmp_path / f"v{suffix}", written)
    with VideoFile(path) as video:
        assert (video.info.num_frames, video.info.fps, video.info.width, video.info.height) == (
            16,
            8.0,
            64,
            64,
        )
        decoded = video.get_frames(list(range(16)))
    assert decoded.shape == (16, 64, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(float) - written.astype(float)).mean() < 4.0
    # The square is where it was drawn: the centre of its pixels matches, frame by frame.
    side = square_side(64)
    colour = np.array(COLOURS[look.colour], dtype=float)
    for t, (x, y) in enumerate(square_positions(cls, look, 16, 64)):
        close = np.abs(decoded[t].astype(float) - colour).sum(-1) < 60
        ys, xs = np.nonzero(close)
        assert abs(xs.mean() - (x + (side - 1) / 2)) < 1.0 and abs(ys.mean() - (y + (side - 1) / 2)) < 1.0


def test_left_is_right_reversed():
    left, right = motion_classes(2)
    look = clip_look(3, seed=0)
    assert left.name == "move left" and right.name == "move right"
    np.testing.assert_array_equal(motion_frames(left, look, 16, 32), motion_frames(right, look, 16, 32)[::-1])


@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_get_frames_returns_the_requested_indices(code_videos, kind):
    wanted = [5, 0, 23, 5, 11, 12]  # any order, with a repeat
    with VideoFile(code_videos[kind]) as video:
        frames = video.get_frames(wanted)
        assert video.stats.errors == 0
    assert [read_frame_code(f) for f in frames] == wanted


def test_long_video_seeks_to_runs(code_videos, monkeypatch):
    wanted = [3, 150, 151, 199, 90]
    decoded = []
    with VideoFile(code_videos["long"], seek_threshold=20) as video:
        assert video.info.num_frames == 200
        orig = video._decode
        monkeypatch.setattr(video, "_decode", lambda seek_to: (decoded.append(seek_to), orig(seek_to))[1])
        frames = video.get_frames(wanted)
    assert [read_frame_code(f) for f in frames] == wanted
    assert decoded == [None, 90, 150, 199]  # one run from the start, then a seek per far-apart run


def test_probe(code_videos):
    info = probe_video(code_videos["long"])
    assert (info.num_frames, info.fps) == (200, 25.0)


def test_bad_files_raise_with_path_and_reason(tmp_path, code_videos):
    with pytest.raises(VideoDecodeError, match="file not found") as err:
        VideoFile(tmp_path / "missing.avi")
    assert err.value.path.endswith("missing.avi")
    (tmp_path / "empty.avi").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty file"):
        VideoFile(tmp_path / "empty.avi")
    (tmp_path / "garbage.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoDecodeError, match=r"garbage\.avi: cannot open"):
        VideoFile(tmp_path / "garbage.avi")
    # Truncated .avi: the header still promises 200 frames, the data stops a third of the way in.
    long_avi = write_video(tmp_path / "long.avi", frame_code_frames(200, 32), fps=25, gop=10)
    data = long_avi.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match=r"cut\.avi: truncated or corrupt"):
        with VideoFile(cut) as video:
            video.get_frames(list(range(0, 200, 10)))
    # Truncated .mp4 loses its index (moov atom at the end): it cannot even be opened.
    data = code_videos["long"].read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4: cannot open"):
        VideoFile(tmp_path / "cut.mp4")


def test_ffmpeg_messages_are_counted_not_printed(tmp_path, capfd):
    path = write_video(tmp_path / "v.avi", frame_code_frames(40, 32), fps=25, gop=10)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for at in range(len(data) // 10, len(data) - 300, len(data) // 10):  # damage all along the file
        data[at : at + 300] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    with VideoFile(damaged) as video:
        frames = video.get_frames(list(range(0, 40, 5)))
    assert frames.shape == (8, 32, 32, 3)
    assert video.stats.warnings + video.stats.errors >= 1 and video.stats.messages
    out, err = capfd.readouterr()
    assert video.stats.messages[0] not in out + err  # captured, not sent to the console
