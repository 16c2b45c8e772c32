"""One atomic write for every file; callbacks and loggers from config (checked before a run folder
exists, taking effect in a run); the offline W&B sync hint; readable prompt-picture titles."""

import csv
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from stop_lightning.callbacks import PromptImageLogger, clip_label
from stop_lightning.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from stop_lightning.cli import main
from stop_lightning.config import load_config
from stop_lightning.data.manifest import ClipRecord
from stop_lightning.fileio import atomic_path, atomic_write
from stop_lightning.loggers import build_loggers, finish_wandb
from stop_lightning.schema import ConfigError

ES = "lightning.pytorch.callbacks.EarlyStopping"


# ---------------------------------------------------------------------------------- atomic_write
def test_atomic_write_replaces_text_and_bytes(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, "one")
    atomic_write(path, "two\n")
    assert path.read_text() == "two\n"
    atomic_write(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.bin", "f.txt"]


def test_an_exception_mid_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="stopped"):
        with atomic_path(path) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("stopped")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failing_checkpoint_save_keeps_the_last_good_one(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # how pickle refuses a local function
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "bad": lambda: None}, path)  # not picklable
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---------------------------------------------------------------------------------- checked at load
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [f"callbacks.es.class_path={ES[:-1]}"],
            r"callbacks.es.class_path.*no class 'EarlyStoppin'.*EarlyStopping",
        ),
        (
            ["callbacks.es.class_path=no_such_package.Thing"],
            r"callbacks.es.class_path.*cannot import module 'no_such_package'",
        ),
        (
            [
                f"callbacks.es.class_path={ES}",
                "callbacks.es.init_args.monitor=val/top1",
                "callbacks.es.init_args.patiense=2",
            ],
            r"callbacks.es.init_args.patiense.*EarlyStopping has no argument 'patiense'.*'patience'",
        ),
        (
            [f"callbacks.es.class_path={ES}"],
            r"callbacks.es.init_args.*monitor",
        ),  # a required argument missing
        (
            ["callbacks.csv.class_path=lightning.pytorch.loggers.CSVLogger"],
            r"callbacks.csv.class_path.*is not a .*Callback",
        ),
        (["loggers.x.class_path=CSVLogger"], r"loggers.x.class_path.*dotted path"),
    ],
)
def test_bad_callback_or_logger_entries_name_themselves(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides)


def test_tensorboard_and_mlflow_say_which_package_to_install():
    for key, cls, package in (("tb", "TensorBoardLogger", "tensorboard"), ("ml", "MLFlowLogger", "mlflow")):
        try:
            __import__(package)
        except ImportError:
            with pytest.raises(ConfigError, match=rf"loggers.{key}.class_path.*pip install {package}"):
                load_config("demo", [f"loggers.{key}.class_path=lightning.pytorch.loggers.{cls}"])
        else:
            assert load_config("demo", [f"loggers.{key}.class_path=lightning.pytorch.loggers.{cls}"])


def test_a_misspelled_callback_is_refused_before_any_run_folder(tmp_path, capsys):
    code = main(
        [
            "train",
            "demo",
            f"paths.output_dir={tmp_path}",
            "callbacks.es.class_path=lightning.pytorch.callbacks.EarlyStoping",
            "callbacks.es.init_args.monitor=val/top1",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "callbacks.es.class_path" in err and "EarlyStopping" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_entries_are_removed_by_name(tmp_path):
    cfg = load_config("demo", ["loggers.csv.enabled=false", "logger.wandb=false"])
    assert build_loggers(cfg, tmp_path) == []
    assert [
        type(x).__name__ for x in build_loggers(load_config("demo", ["logger.wandb=false"]), tmp_path)
    ] == ["AppendingCSVLogger"]  # CSVLogger that appends on resume (loggers.py)


# ---------------------------------------------------------------------------------- in a run
def test_callback_and_logger_from_config_take_effect(cache_dir, tmp_path, monkeypatch):
    """EarlyStopping that no epoch can satisfy (min_delta 10 on an accuracy) stops after the second
    validation; an extra CSV logger named in config writes its own metrics; the LR monitor, removed
    by name, logs no lr- column."""
    from stop_lightning.train import train

    monkeypatch.setenv("STOP_RUN_STAMP", "es")
    max_epochs = 4
    cfg = load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            "data.synthetic_clips_per_class=8",
            "data.synthetic_classes=4",
            "data.synthetic_looks=0",
            f"trainer.max_epochs={max_epochs}",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "logger.log_images_every_n_steps=0",
            f"callbacks.stop.class_path={ES}",
            "callbacks.stop.init_args.monitor=val/top1",
            "callbacks.stop.init_args.mode=max",
            "callbacks.stop.init_args.min_delta=10",
            "callbacks.stop.init_args.patience=0",
            "callbacks.lr_monitor.enabled=false",
            "loggers.extra.class_path=lightning.pytorch.loggers.CSVLogger",
            "loggers.extra.init_args.name=extra",
        ],
    )
    train(cfg)
    run_dir = tmp_path / "demo" / "es"
    with open(run_dir / "extra" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = {int(r["epoch"]) for r in rows if r.get("val/top1")}
    assert epochs == {0, 1}, (
        "EarlyStopping(patience=0) must stop at the first validation that does not improve"
    )
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert not any(c.startswith("lr-") for c in rows[0]), rows[0].keys()
    assert (run_dir / "csv" / "metrics.csv").is_file()  # the default logger is still there


# ---------------------------------------------------------------------------------- W&B
def test_offline_wandb_run_prints_its_folder_and_the_sync_command(tmp_path, capsys):
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    wandb.init(mode="offline", dir=str(tmp_path), project="stop-lightning-test")
    wandb.log({"x": 1.0})
    hint = finish_wandb()
    out = capsys.readouterr().out
    assert hint is not None and hint in out
    sync_dir = Path(out.split("wandb sync ")[1].split()[0])
    assert sync_dir.is_dir() and sync_dir.parent == tmp_path / "wandb" and list(sync_dir.glob("run-*.wandb"))
    assert finish_wandb() is None  # nothing left to close


def test_wandb_gets_the_config_once(demo_run):
    from test_callbacks import wandb_records

    run_file = next(next((demo_run.run_dir / "wandb").glob("offline-run-*")).glob("run-*.wandb"))
    keys = [
        item.key
        for r in wandb_records(run_file)
        if r.WhichOneof("record_type") in ("run", "config")
        for item in (r.run.config.update if r.WhichOneof("record_type") == "run" else r.config.update)
    ]
    assert "model" in keys and "cfg" not in keys, keys
    assert len(keys) == len(set(keys)), "a config key was stored twice"


# ---------------------------------------------------------------------------------- pictures
def test_picture_titles_name_the_clip_and_its_class():
    records = [ClipRecord(path=f"a/clip{i}.mp4", label=i % 2) for i in range(3)]
    dm = SimpleNamespace(datasets={"train": SimpleNamespace(records=records)}, class_names=["left", "right"])
    assert (
        clip_label(dm, {"index": torch.tensor([2, 0]), "label": torch.tensor([0, 0])})
        == "clip clip2, class left (0)"
    )
    retrieval = [ClipRecord(path="v/x.mp4", captions=("a red square", "b"), video_id="video7")]
    dm = SimpleNamespace(datasets={"train": SimpleNamespace(records=retrieval)})
    assert clip_label(dm, {"index": torch.tensor([0])}) == "clip video7: a red square"
    assert clip_label(None, {"video": torch.zeros(1)}) == ""

    callback = PromptImageLogger("unused", every_n_steps=1)
    seen = []
    callback.log_prompts = lambda trainer, module, video, step, label="": seen.append(label)
    trainer = SimpleNamespace(
        global_step=1,
        is_global_zero=True,
        datamodule=SimpleNamespace(
            datasets={"train": SimpleNamespace(records=records)}, class_names=["left", "right"]
        ),
    )
    callback.on_train_batch_end(
        trainer,
        None,
        None,
        {"video": torch.zeros(2, 2, 3, 4, 4), "index": torch.tensor([1, 2]), "label": torch.tensor([1, 0])},
        0,
    )
    assert seen == ["clip clip1, class right (1)"]


def test_the_demos_draw_prompt_pictures():
    for name, steps in (("demo", 96), ("demo_retrieval", 120)):
        every = load_config(name).logger.log_images_every_n_steps
        assert 0 < every <= steps // 2, (name, every)


def _no_network(monkeypatch):
    import socket

    from stop_lightning import loggers

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loggers.reachable.cache_clear()
    return loggers


def test_wandb_auto_falls_back_to_offline_without_a_network(monkeypatch, caplog):
    loggers = _no_network(monkeypatch)
    with caplog.at_level("WARNING", logger="stop_lightning.loggers"):
        assert loggers.wandb_mode("auto") == "offline"
    assert "api.wandb.ai:443 unreachable (Network is unreachable); logging offline" in caplog.text
    loggers.reachable.cache_clear()
    monkeypatch.setattr(
        "socket.create_connection", lambda *a, **k: type("C", (), {"close": lambda s: None})()
    )
    assert loggers.wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setattr("netrc.netrc", lambda *a: (_ for _ in ()).throw(FileNotFoundError()))
    assert loggers.wandb_mode("auto") == "offline"  # no key: offline, no network asked
    loggers.reachable.cache_clear()


def test_wandb_online_without_a_network_is_one_line_before_any_run_folder(
    cache_dir, tmp_path, monkeypatch, capsys
):
    loggers = _no_network(monkeypatch)
    out = tmp_path / "runs"
    code = main(
        [
            "train",
            "demo",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={out}",
            "logger.wandb=true",
            "logger.mode=online",
            "trainer.max_epochs=1",
        ]
    )
    err = capsys.readouterr().err
    loggers.reachable.cache_clear()
    assert code == 2 and "Traceback" not in err
    assert (
        "error: logger.mode=online but api.wandb.ai:443 unreachable" in err and "logger.mode=offline" in err
    )
    assert not out.exists() or not any(out.rglob("config.yaml"))  # no run folder made
