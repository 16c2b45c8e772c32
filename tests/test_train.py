"""End to end: config -> Trainer -> fit/test, run folder, slim checkpoints, exact resume, errors."""

import re
from pathlib import Path

import pytest
import torch

from stop_lightning.checkpoint_io import CheckpointReadError, read_checkpoint
from stop_lightning.config import load_config
from stop_lightning.tasks.base import CheckpointMismatchError
from stop_lightning.train import evaluate, train


def demo_cfg(cache_dir: Path, out: Path, *extra: str):
    return load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={out}",
            "data.synthetic_clips_per_class=8",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            *extra,
        ],
    )


def only_run(out: Path, name: str = "demo") -> Path:
    runs = sorted((out / name).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_demo_end_to_end_run_folder_and_slim_checkpoint(cache_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("STOP_RUN_STAMP", raising=False)
    metrics = train(demo_cfg(cache_dir, tmp_path))
    for key in ("test/top1", "test/top5", "test/mean_class"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test/top5"] == 1.0  # 2 classes: the true class is always in the top 2
    run = only_run(tmp_path)
    for name in ("config.yaml", "run_info.json", "confusion_matrix.csv", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    rows = (run / "confusion_matrix.csv").read_text().strip().splitlines()
    assert rows[0] == "true\\pred,move left,move right,unreadable" and len(rows) == 3
    assert (
        sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == 6
    )  # 2 classes x 3 test clips (synthetic hmdb51 split 1 of 8 clips per class), each once
    # Only what trains is saved: no frozen CLIP tensor, every trainable tensor present.
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")  # weights_only=True inside
    keys = set(ckpt["state_dict"])
    assert keys and not any(".clip." in k for k in keys)
    assert ckpt["stop_lightning"]["dropped_frozen_tensors"] > 0
    assert ckpt["stop_lightning"]["clip"]["source"].endswith(("tiny", "tiny-clip-w64-l2-p16-i64"))
    assert "versions" in ckpt["stop_lightning"]["run_info"]
    assert not list(run.rglob("*.tmp")), "an atomic save left a temporary file"


def trained_state(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


class SimulatedCrash(RuntimeError):
    pass


def crash_at_epoch(epoch: int):
    import lightning as L

    class Crash(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == epoch and batch_idx == 2:  # two optimiser steps into the epoch
                raise SimulatedCrash(f"killed in the middle of epoch {epoch}")

    return Crash()


def shard_overrides(cache_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    """Write the demo's frame shards (``stop-lightning shard``) and return the overrides that read them."""
    from stop_lightning.data.shards import write_shards
    from stop_lightning.data.sources import video_sources
    from stop_lightning.data.stored_copies import settings_from_config

    cfg = demo_cfg(cache_dir, tmp_path, *extra)
    video_root, manifest_dir = video_sources(cfg.data, cfg.task.name, cfg.paths.cache_dir)
    write_shards(video_root, manifest_dir, tmp_path / "shards", settings_from_config(cfg.data), workers=1)
    return ["data.format=shards", f"data.shard_dir={tmp_path / 'shards'}"]


@pytest.mark.parametrize("storage", ["video", "shards"])
def test_resume_continues_exactly(cache_dir, tmp_path, monkeypatch, storage):
    import stop_lightning.train as train_module

    # 3 steps per epoch; 8 of 16 frames, so training draws frame positions that the resume must repeat.
    extra = ["trainer.max_epochs=3", "data.batch_size=2", "data.synthetic_frames=16"]
    if storage == "shards":
        extra += shard_overrides(cache_dir, tmp_path, *extra)
    cfg = demo_cfg(cache_dir, tmp_path, *extra)
    monkeypatch.setenv("STOP_RUN_STAMP", "straight")
    train(cfg)
    # The same run, killed mid-epoch (its steps since the last checkpoint are lost), then RESUME=last.
    monkeypatch.setenv("STOP_RUN_STAMP", "interrupted")
    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a: build(*a) + [crash_at_epoch(1)])
    with pytest.raises(SimulatedCrash):
        train(cfg)
    monkeypatch.setattr(train_module, "build_callbacks", build)
    monkeypatch.setenv("STOP_RUN_STAMP", "unused-by-resume")
    train(cfg, resume="last")
    straight = read_checkpoint(tmp_path / "demo" / "straight" / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(tmp_path / "demo" / "interrupted" / "checkpoints" / "last.ckpt")
    assert not (tmp_path / "demo" / "unused-by-resume").exists()
    assert resumed["global_step"] == straight["global_step"] and resumed["epoch"] == straight["epoch"] == 2
    a, b = straight["state_dict"], resumed["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), f"{key} differs after resume"
    sa, sb = straight["lr_schedulers"][0], resumed["lr_schedulers"][0]
    assert sa["last_epoch"] == sb["last_epoch"] and sa["_last_lr"] == pytest.approx(sb["_last_lr"])


def test_eval_reloads_checkpoint_on_fresh_clip(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "r")
    trained = train(
        demo_cfg(
            cache_dir, tmp_path, "trainer.max_epochs=1", "checkpoint.monitor=''", "checkpoint.save_top_k=0"
        )
    )
    ckpt = tmp_path / "demo" / "r" / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("STOP_RUN_STAMP", "e")
    again = evaluate(demo_cfg(cache_dir, tmp_path), ckpt=str(ckpt))
    assert again["test/top1"] == pytest.approx(trained["test/top1"])


def test_checkpoint_for_another_clip_shape_is_refused(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "r")
    train(demo_cfg(cache_dir, tmp_path, "trainer.max_epochs=1"))
    ckpt = tmp_path / "demo" / "r" / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("STOP_RUN_STAMP", "e")
    with pytest.raises(CheckpointMismatchError, match="model.clip.source"):
        evaluate(demo_cfg(cache_dir, tmp_path, "model.clip.tiny_width=32"), ckpt=str(ckpt))


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointReadError, match="broken.ckpt"):
        read_checkpoint(bad)


def test_missing_real_data_says_which_command_builds_it(tmp_path):
    cfg = load_config(
        "hmdb51",
        [
            f"paths.data_root={tmp_path}",
            f"paths.manifest_root={tmp_path}/manifests",
            "model.clip.source=tiny",
            f"paths.cache_dir={tmp_path}/cache",
            f"paths.output_dir={tmp_path}/runs",
        ],
    )
    with pytest.raises(Exception) as err:
        train(cfg)
    assert "stop-lightning manifest hmdb51" in str(err.value)


def test_eval_without_checkpoint_runs_only_presets_that_train_nothing(cache_dir, tmp_path, capsys):
    from stop_lightning.cli import main

    common = [
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path}",
        "data.synthetic_clips_per_class=8",
    ]
    assert main(["eval", "demo", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ckpt" in err and "model.preset=zero_shot" in err, err
    assert "trainable parameters" in err and not (tmp_path / "demo").exists()  # refused before a run folder
    metrics = evaluate(demo_cfg(cache_dir, tmp_path, "model.preset=zero_shot", "data.protocol=supervised"))
    assert set(metrics) >= {"test/top1", "test/top5"}


def private_dataset(cache_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(videos, manifests): a copy of the demo's synthetic dataset that a test may damage."""
    import shutil

    from stop_lightning.tasks.factory import build_datamodule

    cfg = demo_cfg(cache_dir, tmp_path)
    dm = build_datamodule(cfg.data, "recognition", 64, (0.5,) * 3, (0.5,) * 3, cache_dir=cache_dir)
    videos, manifests = tmp_path / "videos", tmp_path / "manifests"
    shutil.copytree(dm.video_root, videos)
    shutil.copytree(dm.manifest_dir, manifests)
    return videos, manifests


def test_missing_test_file_is_reported_before_training(cache_dir, tmp_path):
    from stop_lightning.data.manifest import ManifestError, read_manifest

    videos, manifests = private_dataset(cache_dir, tmp_path)
    test_rows = read_manifest(manifests / "split1" / "test.jsonl")
    train_paths = {r.path for r in read_manifest(manifests / "split1" / "train.jsonl")}
    only_test = [r.path for r in test_rows if r.path not in train_paths][:2]
    for rel in only_test:
        (videos / rel).unlink()
    (videos / test_rows[-1].path).unlink(missing_ok=True)
    (videos / test_rows[-1].path).mkdir()  # a folder where a file should be
    cfg = demo_cfg(
        cache_dir,
        tmp_path,
        "data.dataset=hmdb51",
        f"data.video_root={videos}",
        f"data.manifest_dir={manifests}",
    )
    with pytest.raises(ManifestError) as err:
        train(cfg)
    text = str(err.value)
    assert text.startswith(f"{len(only_test) + 1} of ") and "\n" not in text  # one line
    named = {path: split for split, path in re.findall(r"\[([^\]]+)\] (.+?)(?=, \[| \(| and \d+ more)", text)}
    for rel in [*only_test, test_rows[-1].path]:
        assert "test" in named[str(videos / rel)], named  # each file named with the split that lists it
    assert not (tmp_path / "demo").exists()  # nothing ran: no run folder, no checkpoint


def test_unreadable_test_videos_are_misses_and_counted(cache_dir, tmp_path, capsys):
    """3 of 4 test videos unreadable (zero bytes, truncated, garbage): each a miss, 3 reported everywhere."""
    import json

    from stop_lightning.data.manifest import read_manifest, write_manifest

    videos, manifests = private_dataset(cache_dir, tmp_path)
    rows = read_manifest(manifests / "split1" / "test.jsonl")
    keep = [next(r for r in rows if r.label == 0), *[r for r in rows if r.label == 1][:3]]
    write_manifest(manifests / "split1" / "test.jsonl", keep)
    bad = [r.path for r in keep[1:]]
    (videos / bad[0]).write_bytes(b"")
    data = (videos / bad[1]).read_bytes()
    (videos / bad[1]).write_bytes(data[: len(data) // 3])
    (videos / bad[2]).write_bytes(b"not a video" * 50)
    capsys.readouterr()
    metrics = evaluate(
        demo_cfg(
            cache_dir,
            tmp_path,
            "data.dataset=hmdb51",
            f"data.video_root={videos}",
            f"data.manifest_dir={manifests}",
            "model.preset=zero_shot",
            "data.bad_video=skip",
        )
    )
    assert metrics["test/unreadable"] == 3
    assert (
        metrics["test/top1"] in (0.0, 0.25) and metrics["test/top5"] == 0.25
    )  # only the readable clip can hit
    assert metrics["test/mean_class"] in (0.0, 0.5)  # class 1's three clips are all misses
    printed = capsys.readouterr().out
    assert "unreadable: 3 of 4 test videos" in printed and all(p in printed for p in bad), printed
    assert metrics["data/test_skipped"] == 3  # the data-health count agrees with the metrics
    run = only_run(tmp_path)
    assert json.loads((run / "run_info.json").read_text())["unreadable"]["test"]["count"] == 3
    table = (run / "confusion_matrix.csv").read_text().strip().splitlines()
    assert table[0].endswith(",unreadable")
    assert [int(v) for v in table[2].split(",")[1:]] == [0, 0, 3]  # class 1: all three in their own column


@pytest.mark.parametrize("which", ["best", "last"])
def test_checkpoint_test_picks_the_weights_that_are_tested(cache_dir, tmp_path, monkeypatch, which):
    import lightning as L

    tested = []
    original = L.Trainer.test

    def spy(self, *args, ckpt_path=None, **kwargs):
        tested.append(ckpt_path)
        return original(self, *args, ckpt_path=ckpt_path, **kwargs)

    monkeypatch.setattr(L.Trainer, "test", spy)
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    train(demo_cfg(cache_dir, tmp_path, f"checkpoint.test={which}"))
    if which == "last":
        assert tested == [None]  # the module in memory: the weights the fit ended with
    else:
        best = Path(tested[0])
        assert best.is_file() and best.parent.name == "checkpoints" and best.name != "last.ckpt"


def test_normalize_on_device_trains_the_same_weights(cache_dir, tmp_path):
    """data.normalize_on_device=true: the Trainer calls the DataModule's after-transfer hook, so the
    model sees the same normalised clips and one epoch ends at the same weights as the float loader."""
    states = []
    for on_device in ("false", "true"):
        out = tmp_path / on_device
        train(demo_cfg(cache_dir, out, "trainer.max_epochs=1", f"data.normalize_on_device={on_device}"))
        states.append(trained_state(only_run(out)))
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=1e-4, atol=1e-5, msg=key)
