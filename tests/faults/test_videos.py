"""Bad validation and test videos are found before the fit (data/video_probe.py); one found only by
the test after the fit names the checkpoint and the ``eval`` command that scores it."""

from __future__ import annotations

import logging
import shlex
import shutil
from pathlib import Path

import av
import pytest

from stop_lightning.cli import main
from stop_lightning.data.decode import VideoDecodeError, VideoFile, error_text
from stop_lightning.data.frame_indices import segment_indices
from stop_lightning.data.manifest import ClipRecord, read_manifest, write_manifest
from stop_lightning.data.synthetic import frame_code_frames, write_video
from stop_lightning.data.video_probe import probe_reason, unreadable_videos

LOADER_FRAMES = 8  # frames a test clip samples (the demo's data.num_frames)


def garble_packets(path: Path, chosen: slice) -> Path:
    """Overwrite the ``chosen`` video packets (in file order) with 0xff bytes, in place: the container
    and its index stay intact, those frames no longer decode."""
    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    for pos, size in spans[chosen]:
        data[pos : pos + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    return path


AFTER_THE_FIRST = slice(1, None)  # every frame but the first undecodable


def loader_fails(path: Path) -> bool:
    """What the test loop does with the file: decode a clip sampled across the header's length."""
    try:
        with VideoFile(path) as video:
            video.get_frames(segment_indices(video.info.num_frames, LOADER_FRAMES, train=False))
    except VideoDecodeError:
        return True
    return False


def faststart_copy(source: Path, path: Path) -> Path:
    """``source`` remuxed with its index (the ``moov`` box) before the frames, as web downloads are:
    cut short, it still opens and its header still counts every frame."""
    with av.open(str(source)) as src, av.open(str(path), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, Path]:
    """One good file per container and one of each kind of damage."""
    root = tmp_path_factory.mktemp("damaged")
    frames = frame_code_frames(48, 32)
    files = {f"good{s}": write_video(root / f"good{s}", frames) for s in (".avi", ".mp4", ".webm")}
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is a list of videos, not a video\n" * 40)
    files |= {"empty.mp4": root / "empty.mp4", "text.mp4": root / "text.mp4"}
    files["good.faststart.mp4"] = faststart_copy(files["good.mp4"], root / "good.faststart.mp4")
    for suffix in (".avi", ".mp4", ".faststart.mp4"):
        data = files[f"good{suffix}"].read_bytes()
        for fraction in (0.02, 0.2, 0.35, 0.45, 0.5, 0.55, 0.7, 0.9):
            cut = root / f"cut{int(fraction * 100)}{suffix}"
            cut.write_bytes(data[: int(len(data) * fraction)])
            files[cut.name] = cut
    garbled = root / "garbled.avi"
    shutil.copy(files["good.avi"], garbled)
    files["garbled.avi"] = garble_packets(garbled, AFTER_THE_FIRST)
    return files


def test_probe_finds_what_the_test_loop_would_fail_on(damaged):
    """Every file the loader fails on is found by the probe, except one whose later packets are damaged
    (the probe demuxes them but decodes only the first: the documented limit); no good file is refused."""
    verdicts = {
        name: (probe_reason(path, LOADER_FRAMES), loader_fails(path)) for name, path in damaged.items()
    }
    assert {n for n, (_, fails) in verdicts.items() if fails} >= {"empty.mp4", "text.mp4", "garbled.avi"}
    assert not any(verdicts[f"good{s}"][1] for s in (".avi", ".mp4", ".webm", ".faststart.mp4"))
    for name, (reason, fails) in verdicts.items():
        if name == "garbled.avi":
            assert reason is None and fails
        else:
            assert (reason is not None) == fails, (name, reason, fails)
            assert reason is None or "\n" not in reason
    # Both containers lose their tail somewhere in the cuts: some cut fails, some cut still plays.
    cuts = {fails for name, (_, fails) in verdicts.items() if name.startswith("cut")}
    assert cuts == {True, False}
    assert verdicts["empty.mp4"][0] == "empty file (0 bytes)"
    # An AVI, or an MP4 with its index first, cut after its header keeps the header's frame count:
    # only the seek finds the cut.
    for suffix in (".avi", ".faststart.mp4"):
        found = [verdicts[f"cut{c}{suffix}"][0] for c in (2, 20, 35, 45, 50, 55, 70, 90)]
        assert any(str(reason).startswith("truncated: the header says 48 frames") for reason in found)
        assert None in found


def test_threads_find_the_same_files_in_the_order_listed(damaged):
    paths = list(damaged.values())
    listed = paths + paths[:3]  # a path listed twice (val and test) is probed and reported once
    serial = unreadable_videos(listed, LOADER_FRAMES, threads=1)
    assert unreadable_videos(listed, LOADER_FRAMES, threads=4) == serial
    assert list(serial) == [p for p in paths if probe_reason(p, LOADER_FRAMES) is not None]


# ---------------------------------------------------------------------------------------------
# A run
# ---------------------------------------------------------------------------------------------


def error_line(stderr: str) -> str:
    """The one ``error:`` line the CLI printed (our INFO lines may come before it), without a traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def demo_args(cache_dir: Path, out: Path, videos: Path, manifests: Path, *extra: str) -> list[str]:
    return [
        "demo",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "data.synthetic_clips_per_class=8",
        "data.dataset=hmdb51",
        f"data.video_root={videos}",
        f"data.manifest_dir={manifests}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


@pytest.fixture
def dataset_copy(cache_dir, tmp_path) -> tuple[Path, Path]:
    """(videos, manifests): a copy of the demo's synthetic HMDB51-layout dataset that a test may damage."""
    from stop_lightning.config import load_config
    from stop_lightning.tasks.factory import build_datamodule

    cfg = load_config("demo", [f"paths.cache_dir={cache_dir}", "data.synthetic_clips_per_class=8"])
    dm = build_datamodule(cfg.data, "recognition", 64, (0.5,) * 3, (0.5,) * 3, cache_dir=cache_dir)
    videos, manifests = tmp_path / "videos", tmp_path / "manifests"
    shutil.copytree(dm.video_root, videos)
    shutil.copytree(dm.manifest_dir, manifests)
    return videos, manifests


def add_test_only_video(videos: Path, manifests: Path, name: str) -> Path:
    """A copy of a test video under ``extra/<name>``, listed (with its label) in the test manifest only,
    so the fit never reads it."""
    test = manifests / "split1" / "test.jsonl"
    rows = read_manifest(test)
    source = rows[0]
    path = videos / "extra" / name
    path.parent.mkdir(exist_ok=True)
    shutil.copy(videos / source.path, path)
    write_manifest(test, [*rows, ClipRecord(f"extra/{name}", label=source.label)])
    return path


@pytest.mark.slow
def test_bad_test_videos_stop_the_run_before_the_fit(cache_dir, tmp_path, dataset_copy, capsys, monkeypatch):
    videos, manifests = dataset_copy
    empty = add_test_only_video(videos, manifests, "empty.avi")
    empty.write_bytes(b"")
    cut = add_test_only_video(videos, manifests, "cut.avi")
    cut.write_bytes(cut.read_bytes()[:300])
    foreign = add_test_only_video(videos, manifests, "notes.avi")
    foreign.write_text("not a video\n" * 100)
    steps = []
    monkeypatch.setattr("stop_lightning.tasks.base.VideoTaskModule.training_step", lambda *a: steps.append(a))
    capsys.readouterr()
    out = tmp_path / "runs"
    assert main(["train", *demo_args(cache_dir, out, videos, manifests)]) == 2
    err = error_line(capsys.readouterr().err)
    total = len(
        {r.path for split in ("val", "test") for r in read_manifest(manifests / "split1" / f"{split}.jsonl")}
    )
    assert err.startswith(f"error: 3 of {total} val/test videos cannot be read (probed before training)"), err
    assert all(str(p) in err for p in (empty, cut, foreign)) and "data.bad_video=skip" in err
    assert not steps and not out.exists()  # no step, no run folder, no checkpoint


@pytest.mark.slow
def test_skip_marks_the_probed_videos_and_counts_them(cache_dir, tmp_path, dataset_copy, caplog, capsys):
    """data.bad_video=skip: the run goes on; each probed-bad video is a miss, counted once, never decoded."""
    videos, manifests = dataset_copy
    foreign = add_test_only_video(videos, manifests, "notes.avi")
    foreign.write_text("not a video\n" * 100)
    decoded = []
    original = VideoFile.__init__

    def spy(self, path, *args, **kwargs):
        decoded.append(Path(path))
        original(self, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VideoFile, "__init__", spy)
        args = demo_args(
            cache_dir, tmp_path / "runs", videos, manifests, "data.bad_video=skip", "model.preset=zero_shot"
        )
        with caplog.at_level(logging.WARNING, logger="stop_lightning"):
            assert main(["eval", *args]) == 0
    probed, rest = decoded.count(foreign), len(decoded)
    assert probed == 1 and rest > 1  # opened once, by the probe; the test loop used the mark
    assert "1 of" in caplog.text and "scored as a miss" in caplog.text
    assert "unreadable: 1 of" in capsys.readouterr().out


@pytest.mark.slow
def test_a_video_found_bad_after_the_fit_names_the_checkpoint_and_the_eval_command(
    cache_dir, tmp_path, dataset_copy, capsys, monkeypatch
):
    videos, manifests = dataset_copy
    garbled = garble_packets(add_test_only_video(videos, manifests, "garbled.avi"), AFTER_THE_FIRST)
    assert probe_reason(garbled, LOADER_FRAMES) is None and loader_fails(garbled)
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    out = tmp_path / "runs"
    capsys.readouterr()
    assert main(["train", *demo_args(cache_dir, out, videos, manifests)]) == 2
    err = error_line(capsys.readouterr().err)
    run = out / "demo" / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and err.startswith(f"error: {garbled}: "), err
    assert f"the trained weights are in {ckpt}" in err and "data.bad_video=skip (set" not in err
    command = shlex.split(err.split(" with: ", 1)[1])
    assert command[:2] == ["stop-lightning", "eval"] and command[command.index("--ckpt") + 1] == str(ckpt)
    monkeypatch.delenv("STOP_RUN_STAMP")
    assert main(command[1:]) == 0  # the command, as printed, scores the trained weights
    printed = capsys.readouterr().out
    assert "unreadable: 1 of 7 test videos" in printed and "(extra/garbled.avi)" in printed, printed
    evals = [p for p in (out / "demo").iterdir() if p != run]
    assert (
        len(evals) == 1 and (evals[0] / "run_info.json").is_file()
    )  # beside the run, as `eval demo` puts it


def test_the_probe_is_off_with_its_key(dataset_copy):
    """data.probe_videos=false: nothing is opened before the run (the test loop meets the video)."""
    from dataclasses import replace

    from stop_lightning.data.datamodules import RecognitionDataModule
    from stop_lightning.schema import DataConfig

    videos, manifests = dataset_copy
    foreign = add_test_only_video(videos, manifests, "notes.avi")
    foreign.write_text("not a video\n" * 100)
    cfg = DataConfig(
        dataset="manifest",
        video_root=str(videos),
        manifest_dir=str(manifests),
        num_workers=0,
        bad_video="skip",
    )
    dm = RecognitionDataModule(cfg, 32, (0.5,) * 3, (0.5,) * 3)
    dm.setup("test")
    assert list(dm.probe_videos(("test",))) == [foreign]
    off = RecognitionDataModule(replace(cfg, probe_videos=False), 32, (0.5,) * 3, (0.5,) * 3)
    off.setup("test")
    assert off.probe_videos(("test",)) == {}


def test_a_reason_leaves_out_ffmpegs_process_wide_last_log():
    """PyAV appends FFmpeg's last log line, which is process-wide: in the probe's thread pool another
    file's decoder may have written it, so one file gave other words on another run (this suite's
    thread test failed that way once). The reason keeps PyAV's own message only."""
    err = av.error.InvalidDataError(
        1094995529,
        "Invalid data found when processing input",
        "x.mp4",
        (16, "mov,mp4", "moov atom not found"),
    )
    assert "last error log" in str(err)  # what PyAV says
    assert error_text(err) == "[Errno 1094995529] Invalid data found when processing input: 'x.mp4'"
    assert error_text(ValueError("plain")) == "plain"
