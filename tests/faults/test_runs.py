"""Faults of a run as a whole (docs/reliability.md, "Writing files and runs"), through the CLI: a run
that has nothing to train or test on, the checkpoint every fit ends with, the device settings
Lightning refuses, and two processes on one run. Each case checks the exit code, the one line and
what is (not) left on disk."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stop_lightning import cli
from stop_lightning.checkpoint_io import read_checkpoint
from stop_lightning.config import load_config
from stop_lightning.data.sources import video_sources
from stop_lightning.run_folder import LOCK_FILE

# The tiny synthetic set of these tests: 2 classes x 4 clips, one look (4 clips in each split:
# 2 training steps an epoch).
BATCH = 2
DATA = ["data.synthetic_clips_per_class=4", "data.synthetic_looks=0", f"data.batch_size={BATCH}"]


def run_cli(args: list[str], capsys, monkeypatch, stamp: str = "run") -> tuple[int, list[str], str]:
    """``stop-lightning ARGS`` in this process: (exit code, the ``error:`` lines, all of stderr)."""
    import logging

    # cli.configure_logging keeps the handler of the first test that ran it (a closed stream since).
    monkeypatch.setattr(logging.getLogger("stop_lightning"), "handlers", [])
    monkeypatch.setenv("STOP_RUN_STAMP", stamp)
    capsys.readouterr()
    code = cli.main(args)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith(("error:", "config error:"))], err


def one_line(code: int, lines: list[str], err: str) -> str:
    """The run ended with exit 2 and exactly one error line, no traceback; returns that line."""
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def common(cache_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        *DATA,
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger.wandb=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def layout(cache_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(video_root, manifest_dir) of the tiny synthetic set, its manifests copied where a test may
    break them (``data.dataset=manifest``)."""
    cfg = load_config("demo", [f"paths.cache_dir={cache_dir}", *DATA])
    videos, manifests = video_sources(cfg.data, cfg.task.name, cache_dir)
    copy = tmp_path_factory.mktemp("manifests")
    for f in [Path(manifests) / "classes.txt", *(Path(manifests) / f"split{cfg.data.split}").glob("*.jsonl")]:
        shutil.copy(f, copy / f.name)
    return Path(videos), copy


def manifest_args(layout: tuple[Path, Path], manifest_dir: Path | None = None) -> list[str]:
    videos, manifests = layout
    return [
        "data.dataset=manifest",
        f"data.manifest_dir={manifest_dir or manifests}",
        f"data.video_root={videos}",
    ]


# ------------------------------------------------------------------------- nothing trained, nothing claimed
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("content", ["", "\n\n"], ids=["0-byte", "blank-lines"])
def test_an_empty_split_stops_before_any_folder(
    layout, cache_dir, tmp_path, capsys, monkeypatch, split, content
):
    manifests = tmp_path / "m"
    shutil.copytree(layout[1], manifests)
    (manifests / f"{split}.jsonl").write_text(content)
    out = tmp_path / "out"
    args = ["train", "demo", *common(cache_dir, out, *manifest_args(layout, manifests))]
    line = one_line(*run_cli(args, capsys, monkeypatch))
    # The split and its manifest are named (another check may word it; the file is what matters).
    # The manifest reader's line (docs/reliability.md, "Reading files"): the file, then what is wrong.
    assert line.startswith(f"error: {manifests / f'{split}.jsonl'}: "), line
    assert "is empty (0 bytes)" in line or "holds no rows" in line, line
    assert not out.exists() or not any(out.rglob("*")), "a run that never started left a folder"


def test_eval_on_an_empty_test_split_stops_before_any_folder(
    layout, cache_dir, tmp_path, capsys, monkeypatch
):
    manifests = tmp_path / "m"
    shutil.copytree(layout[1], manifests)
    (manifests / "test.jsonl").write_text("")
    out = tmp_path / "out"
    args = [
        "eval",
        "demo",
        *common(cache_dir, out, *manifest_args(layout, manifests), "model.preset=zero_shot"),
    ]
    line = one_line(*run_cli(args, capsys, monkeypatch))
    assert line.startswith(f"error: {manifests / 'test.jsonl'}: is empty (0 bytes)"), line
    assert not out.exists() or not any(out.rglob("*"))


def test_zero_optimiser_steps_exit_2_and_claim_nothing(layout, cache_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["train", "demo", *common(cache_dir, out, *manifest_args(layout), "trainer.limit_train_batches=0")]
    code, lines, err = run_cli(args, capsys, monkeypatch)
    line = one_line(code, lines, err)
    assert "no optimiser step" in line and "trainer.limit_train_batches=0" in line, line
    assert "test/top1" not in err + capsys.readouterr().out  # no figure printed
    assert not list(out.rglob("*.ckpt")), "an untrained model was saved as a checkpoint"


def _break_videos(root: Path, manifest: Path) -> None:
    for row in manifest.read_text().splitlines():
        (root / json.loads(row)["path"]).write_bytes(b"\x00not a video" * 64)


def test_every_train_video_bad_under_skip_exit_2(layout, cache_dir, tmp_path, capsys, monkeypatch):
    videos = tmp_path / "videos"
    shutil.copytree(layout[0], videos)
    _break_videos(videos, layout[1] / "train.jsonl")
    args = ["train", "demo", *common(cache_dir, tmp_path / "out", *manifest_args((videos, layout[1])))]
    line = one_line(*run_cli([*args, "data.bad_video=skip"], capsys, monkeypatch))
    assert "bad videos in a row in the train set" in line and str(videos) in line, line
    assert not list((tmp_path / "out").rglob("*.ckpt"))


@pytest.mark.slow
def test_every_test_video_bad_under_skip_reports_no_figure(layout, cache_dir, tmp_path, capsys, monkeypatch):
    videos = tmp_path / "videos"
    shutil.copytree(layout[0], videos)
    tests = [json.loads(r)["path"] for r in (layout[1] / "test.jsonl").read_text().splitlines()]
    trains = {json.loads(r)["path"] for r in (layout[1] / "train.jsonl").read_text().splitlines()}
    assert not set(tests) & trains  # breaking the test videos leaves the training ones whole
    _break_videos(videos, layout[1] / "test.jsonl")
    args = ["train", "demo", *common(cache_dir, tmp_path / "out", *manifest_args((videos, layout[1])))]
    code, lines, err = run_cli(
        [*args, "data.bad_video=skip", "trainer.limit_val_batches=0"], capsys, monkeypatch
    )
    line = one_line(code, lines, err)
    assert f"all {len(tests)} test videos were unreadable" in line and tests[0] in line, line
    assert "test/top1" not in capsys.readouterr().out


# ------------------------------------------------------------------ a checkpoint at the end of every fit
@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule, saves",
    [
        # demo_retrieval validates every 5 epochs: a 2-epoch fit used to end with no checkpoint.
        ("trainer.check_val_every_n_epoch=5", [(0, 2), (1, 4)]),
        # A validation after each of the 2 batches: last.ckpt mid-epoch too, as Lightning's own.
        ("trainer.val_check_interval=0.5", [(0, 1), (0, 2), (1, 3), (1, 4)]),
    ],
    ids=["every-5-epochs", "twice-an-epoch"],
)
def test_last_ckpt_each_epoch_whatever_the_validation_schedule(
    layout, cache_dir, tmp_path, capsys, monkeypatch, schedule, saves
):
    """Every checkpoint written, as (epoch, global step): last.ckpt once per epoch end (and mid-epoch
    validation), never twice for one step."""
    seen: list[tuple[int, int]] = []

    from lightning.pytorch.callbacks import Callback

    import stop_lightning.train as train_module
    from stop_lightning.callbacks import build_callbacks

    class Saves(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            seen.append((checkpoint["epoch"], checkpoint["global_step"]))

    monkeypatch.setattr(train_module, "build_callbacks", lambda *a: build_callbacks(*a) + [Saves()])
    steps_per_epoch = -(-len((layout[1] / "train.jsonl").read_text().splitlines()) // BATCH)
    assert steps_per_epoch == 2
    args = common(cache_dir, tmp_path, "trainer.max_epochs=2", schedule, "checkpoint.save_top_k=0")
    code, lines, err = run_cli(["train", "demo", *args], capsys, monkeypatch)
    assert code == 0 and not lines, err
    last = tmp_path / "demo" / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 2 * steps_per_epoch
    assert seen == saves, seen


@pytest.mark.slow
def test_max_steps_mid_epoch_ends_with_that_step_saved(cache_dir, tmp_path, capsys, monkeypatch):
    # 3 steps: the fit stops one step into epoch 1, after the epoch-0 checkpoint.
    args = common(
        cache_dir, tmp_path, "trainer.max_epochs=5", "trainer.max_steps=3", "trainer.limit_val_batches=0"
    )
    code, lines, err = run_cli(["train", "demo", *args], capsys, monkeypatch)
    assert code == 0 and not lines, err
    saved = read_checkpoint(tmp_path / "demo" / "run" / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 3 and saved["stop_lightning"]["sampler"] == {"epoch": 1, "batches": 1}


# ------------------------------------------------------------------------- Lightning's refusals are ours
@pytest.mark.parametrize(
    "overrides, said",
    [
        (["trainer.accelerator=gpu", "trainer.devices=2"], "trainer.accelerator=gpu"),
        (["trainer.accelerator=cuda"], "trainer.accelerator=cuda"),
        (["trainer.accelerator=cpu", "trainer.strategy=fsdp", "trainer.devices=2"], "fsdp"),
        (["trainer.accelerator=cpu", "trainer.strategy=deepspeed"], "DeepSpeed"),
        (["trainer.accelerator=cpu", "trainer.devices=[0,1]"], "trainer.devices=[0, 1]"),
        (["trainer.accelerator=cpu", "trainer.precision=16-mixed"], "trainer.precision=16-mixed"),
    ],
    ids=["gpu-without-one", "cuda", "fsdp-on-cpu", "deepspeed-missing", "cpu-device-ids", "fp16-on-cpu"],
)
@pytest.mark.parametrize("command", ["train", "eval"])
def test_device_settings_lightning_refuses(tmp_path, capsys, monkeypatch, overrides, said, command):
    import torch

    wants_gpus = 2 if "trainer.devices=2" in overrides else 1
    if {"trainer.accelerator=gpu", "trainer.accelerator=cuda"} & set(overrides):
        if torch.cuda.device_count() >= wants_gpus:
            pytest.skip("this machine has the GPUs asked for")
    args = [command, "demo", f"paths.output_dir={tmp_path}/out", *overrides]
    code, lines, err = run_cli(
        args + (["model.preset=zero_shot"] if command == "eval" else []), capsys, monkeypatch
    )
    line = one_line(code, lines, err)
    assert line.startswith("config error: ") and said in line and "trainer." in line, line
    assert not (tmp_path / "out").exists(), "a refused run made a folder"


# ------------------------------------------------------------------------- concurrent resumes
HOLD = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"process {os.getpid()} on testhost".encode())
    print("held", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.slow
def test_a_second_resume_of_one_run_refuses_and_a_dead_holder_does_not_block(
    cache_dir, tmp_path, capsys, monkeypatch
):
    args = common(cache_dir, tmp_path, "trainer.limit_val_batches=0")
    code, lines, err = run_cli(["train", "demo", *args], capsys, monkeypatch)
    assert code == 0, err
    run = tmp_path / "demo" / "run"
    files = {p: p.read_bytes() for p in [run / "checkpoints" / "last.ckpt", run / "csv" / "metrics.csv"]}
    # Another process (the first of two requeued jobs) is training this run: it holds the lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        resume = [
            "train",
            "demo",
            *args,
            "trainer.max_epochs=2",
            "--resume",
            "auto",
            "--allow-change",
            "trainer",
        ]
        line = one_line(*run_cli(resume, capsys, monkeypatch))
        assert f"run folder {run} is in use by process {holder.pid} on testhost" in line, line
        assert {p: p.read_bytes() for p in files} == files, "the refused resume wrote into the run"
    finally:
        holder.kill()
        holder.wait()
    # The holder died (its lock went with it; the file stays): the resume goes ahead.
    assert (run / LOCK_FILE).is_file()
    code, lines, err = run_cli(resume, capsys, monkeypatch)
    assert code == 0 and not lines, err
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch") or "epoch" in rows[0]
    assert all(row.count(",") == rows[0].count(",") for row in rows), "the CSV log was torn"
