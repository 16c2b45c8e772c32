"""Cluster behaviour (docs/cluster.md): preemption, exact mid-epoch resume, RESUME=auto, a resumed
run that keeps its config and metrics, run folders that never collide, storage faults, checks
before the run folder exists."""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from stop_lightning import cli
from stop_lightning.checkpoint_io import read_checkpoint
from stop_lightning.config import load_config
from stop_lightning.preemption import EXIT_PREEMPTED
from stop_lightning.run_folder import claim_run_dir, run_folder
from stop_lightning.schema import ConfigError
from stop_lightning.train import build_trainer, train

SRC = Path(__file__).resolve().parents[1] / "src"


def overrides(cache_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "data.synthetic_clips_per_class=8",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "data.batch_size=2",  # 3 steps/epoch
        "logger.wandb=false",
        *extra,
    ]


class SeenBatches(L.Callback):
    """Every training batch as (epoch, batch_idx, item indices); optionally SIGTERM itself at one."""

    def __init__(self, seen: list, kill_at: tuple[int, int] | None = None) -> None:
        self.seen, self.kill_at = seen, kill_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch_idx, tuple(int(i) for i in batch["index"])))
        if (trainer.current_epoch, batch_idx) == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # as the scheduler would, in the middle of a step


def fresh_cli_logging(monkeypatch) -> None:
    """cli.configure_logging binds its handler to the sys.stderr of the first test that ran the CLI
    (an earlier capsys stream, closed since); a fresh one writes to this test's stderr."""
    import logging

    monkeypatch.setattr(logging.getLogger("stop_lightning"), "handlers", [])


def with_callback(monkeypatch, callback):
    import stop_lightning.train as train_module
    from stop_lightning.callbacks import build_callbacks

    monkeypatch.setattr(train_module, "build_callbacks", lambda *a: build_callbacks(*a) + [callback])


def test_sigterm_mid_epoch_saves_and_resume_is_exact(cache_dir, tmp_path, monkeypatch, capsys):
    # Uninterrupted reference run.
    straight: list = []
    with_callback(monkeypatch, SeenBatches(straight))
    monkeypatch.setenv("STOP_RUN_STAMP", "straight")
    train(load_config("demo", overrides(cache_dir, tmp_path / "a")))

    # SIGTERM during epoch 1's first step: exit 75 (not 0), checkpoint of that step, no test.
    seen: list = []
    with_callback(monkeypatch, SeenBatches(seen, kill_at=(1, 0)))
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    assert cli.main(["train", "demo", *overrides(cache_dir, tmp_path / "b")]) == EXIT_PREEMPTED
    err = capsys.readouterr().err
    assert "preempted: SIGTERM: saved" in err and "RESUME=auto" in err
    run = tmp_path / "b" / "demo" / "run"
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4 and ckpt["stop_lightning"]["sampler"] == {"epoch": 1, "batches": 1}
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers handed back
    assert not list(run.rglob("*.tmp"))

    # A changed override is refused with the key named, before anything runs.
    with pytest.raises(ConfigError, match=r"data\.batch_size: 2 -> 4.*--allow-change data\.batch_size"):
        train(load_config("demo", overrides(cache_dir, tmp_path / "b", "data.batch_size=4")), resume="auto")

    # RESUME=auto continues the interrupted run at epoch 1's second batch.
    with_callback(monkeypatch, SeenBatches(seen))
    monkeypatch.setenv("STOP_RUN_STAMP", "unused-by-resume")
    train(load_config("demo", overrides(cache_dir, tmp_path / "b")), resume="auto")
    assert sorted(p.name for p in (tmp_path / "b" / "demo").iterdir()) == ["run"]
    assert seen == straight, "a batch was run twice or skipped"
    a = read_checkpoint(tmp_path / "a" / "demo" / "straight" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    for key in a["state_dict"]:
        assert torch.allclose(a["state_dict"][key], b["state_dict"][key], atol=1e-6, rtol=0), key
    # metrics.csv appended, not rewritten: validation rows of both epochs, training steps of both.
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    epochs = {r.split(",")[header.index("epoch")] for r in rows[1:] if r.split(",")[header.index("val/top1")]}
    assert epochs == {"0", "1"}, rows


def test_resume_auto_fresh_and_last_without_run(tmp_path, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "fresh")
    assert run_folder(tmp_path / "exp", "auto") == (tmp_path / "exp" / "fresh", None)
    with pytest.raises(FileNotFoundError, match="RESUME=auto"):
        run_folder(tmp_path / "exp", "last")
    (tmp_path / "exp" / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "exp" / "old" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert run_folder(tmp_path / "exp", "auto") == (
        tmp_path / "exp" / "old",
        str(tmp_path / "exp" / "old" / "checkpoints" / "last.ckpt"),
    )


def test_allowed_change_is_kept(tmp_path):
    from stop_lightning.run_folder import check_resume_config

    saved = load_config("demo", ["trainer.max_epochs=2"])
    assert check_resume_config(
        saved, load_config("demo", ["trainer.max_epochs=5"]), ["trainer.max_epochs"]
    ) == ["trainer.max_epochs"]
    assert check_resume_config(saved, load_config("demo", ["trainer.max_epochs=5"]), ["trainer"]) == [
        "trainer.max_epochs"
    ]
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        check_resume_config(saved, load_config("demo", ["trainer.max_epochs=5"]), ["trainer.max_steps"])


def test_a_key_added_to_the_schema_later_resumes_at_its_default():
    """A run saved before a schema key existed resumes when the key is at its default now, and is
    refused, naming the key, when it is set to something else."""
    from omegaconf import OmegaConf

    from stop_lightning.run_folder import check_resume_config

    saved = OmegaConf.to_container(load_config("demo"), resolve=True)
    del saved["logger"]["group"], saved["model"]["init_from"]  # as a config.yaml written before them
    saved = OmegaConf.create(saved)
    assert check_resume_config(saved, load_config("demo")) == []
    with pytest.raises(ConfigError, match=r"logger.group: '' -> 'team'"):
        check_resume_config(saved, load_config("demo", ["logger.group=team"]))


def test_two_processes_claim_two_folders(tmp_path):
    """The same wanted folder claimed by two processes at once: two folders, both exit 0."""
    code = (
        "import sys; from pathlib import Path; "
        "from stop_lightning.run_folder import claim_run_dir, check_writable;"
        "d = claim_run_dir(Path(sys.argv[1])); check_writable(d); print(d.name)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "STOP_RUN_STAMP": "same"}
    env.pop("RANK", None), env.pop("LOCAL_RANK", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "exp" / "same")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    names = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert names == ["same", "same-2"] and sorted(p.name for p in (tmp_path / "exp").iterdir()) == names


def test_claim_in_process_gets_suffixes(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    got = [claim_run_dir(tmp_path / "x").name for _ in range(3)]
    assert got == ["x", "x-2", "x-3"]
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child joins rank 0's folder
    assert claim_run_dir(tmp_path / "x") == tmp_path / "x"


def test_full_disk_during_save_one_line_no_tmp(cache_dir, tmp_path, monkeypatch, capsys):
    import stop_lightning.checkpoint_io as cio

    real_save, calls = torch.save, []

    def save_until_full(obj, f, *a, **k):  # f: the open temporary file (fileio.atomic_file)
        calls.append(f)
        if len(calls) <= 2:  # epoch 0: best and last are written
            return real_save(obj, f, *a, **k)
        f.write(b"partial")  # the disk fills mid-write
        raise OSError(errno.ENOSPC, "No space left on device", f.name)

    monkeypatch.setattr(cio.torch, "save", save_until_full)
    fresh_cli_logging(monkeypatch)
    monkeypatch.setenv("STOP_RUN_STAMP", "full")
    assert cli.main(["train", "demo", *overrides(cache_dir, tmp_path)]) == 2
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in out, out
    run = tmp_path / "demo" / "full"
    assert err[0].startswith(f"error: disk full writing {run / 'checkpoints'}") and " MiB free" in err[0], err
    assert ".tmp" not in err[0]
    assert not list(run.rglob("*.tmp")), "a failed save left its temporary file"
    monkeypatch.setattr(cio.torch, "save", real_save)
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # the last good one, intact


def test_read_only_output_folder_one_line_no_folder(cache_dir, tmp_path, monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):  # root ignores chmod, so the refusal is simulated
        if str(self).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    fresh_cli_logging(monkeypatch)
    monkeypatch.setenv("STOP_RUN_STAMP", "ro")
    assert cli.main(["train", "demo", *overrides(cache_dir, tmp_path / "ro")]) == 2
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in out, out
    assert "permission denied" in err[0] and str(tmp_path / "ro") in err[0], err
    assert not list((tmp_path / "ro").glob("demo/*"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.devices=banana", "trainer.devices"),
        ("trainer.devices=[0,-1]", "trainer.devices"),
        ("data.num_workers=-1", "data.num_workers"),
        ("trainer.limit_train_batches=1.5", "limit_train_batches"),
        ("trainer.limit_val_batches=-2", "limit_val_batches"),
    ],
)
def test_bad_values_stop_before_any_folder(tmp_path, capsys, override, key):
    assert cli.main(["train", "demo", f"paths.output_dir={tmp_path}/out", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("devices", ["auto", "1", "-1", "0,1", "[0,1]", "2"])
def test_good_devices_pass(devices):
    load_config("demo", [f"trainer.devices={devices}"])


def test_limit_batches_int_is_a_count_float_a_fraction(tmp_path):
    one = load_config("demo", ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1.0"])
    assert one.trainer.limit_train_batches == 1 and isinstance(one.trainer.limit_train_batches, int)
    assert isinstance(one.trainer.limit_val_batches, float)
    t = build_trainer(
        load_config("demo", ["trainer.limit_train_batches=1", "logger.wandb=false"]), tmp_path, "fit"
    )
    assert t.limit_train_batches == 1 and isinstance(t.limit_train_batches, int)
    t = build_trainer(
        load_config("demo", ["trainer.limit_train_batches=0.5", "logger.wandb=false"]), tmp_path, "fit"
    )
    assert t.limit_train_batches == 0.5


def test_two_nodes_of_one_process_match_one_process(cache_dir, tmp_path):
    """Two "nodes" (one process each) on 127.0.0.1 via Lightning's own environment variables,
    against one process with their combined batch: the same steps and the same test metrics.
    (Weights are not compared: AdamW turns the float noise of a near-zero gradient summed in another
    order into a full-size step of either sign.)"""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [
        f"paths.cache_dir={cache_dir}",
        "data.synthetic_clips_per_class=8",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger.wandb=false",
        "model.spatial.dropout=0.0",
        "trainer.accelerator=cpu",
        "trainer.limit_val_batches=0",
        "checkpoint.monitor=''",
        "checkpoint.save_top_k=0",
    ]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    base.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", STOP_RUN_STAMP="mn")

    def cli(out: str, env: dict, *extra: str) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "stop_lightning.cli",
            "train",
            "demo",
            f"paths.output_dir={tmp_path / out}",
            *common,
            *extra,
        ]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    node = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", LOCAL_RANK="0")
    procs = [cli("single", base, "data.batch_size=4")] + [
        cli(
            "nodes",
            {**base, **node, "NODE_RANK": str(r)},
            "data.batch_size=2",
            "trainer.num_nodes=2",
            "trainer.devices=1",
            "trainer.strategy=ddp",
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    def table(stdout: str) -> dict[str, str]:
        return {ln.split()[0]: ln.split()[1] for ln in stdout.splitlines() if ln.startswith("test/")}

    assert table(outs[0][0]) and table(outs[1][0]) == table(outs[0][0]), (outs[0][0], outs[1][0])
    a = read_checkpoint(tmp_path / "single" / "demo" / "mn" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "nodes" / "demo" / "mn" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] > 0
    assert [p.name for p in (tmp_path / "nodes" / "demo").iterdir()] == ["mn"]
