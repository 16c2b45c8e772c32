"""Every file the framework writes, on a full or read-only disk (docs/reliability.md, "Writing files
and runs"): one line naming the file and the free space or the permission, exit 2, no temporary
file left, the last good file intact, no empty run folder.

A real full disk is a small tmpfs mounted for the test (as root; skipped elsewhere), a real
read-only one the same tmpfs remounted read-only (root ignores ``chmod``); a simulated full disk
(a write that raises ENOSPC) runs everywhere.
"""

import errno
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from test_runs import DATA, common, one_line, run_cli

from stop_lightning import fileio
from stop_lightning.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from stop_lightning.fileio import StorageError, atomic_dir, atomic_file, atomic_write
from stop_lightning.inference import save_embeddings

MiB = 2**20


class Disk:
    """A tmpfs mounted at ``root``: ``fill(leave)`` takes all but ``leave`` bytes of it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def fill(self, leave: int) -> None:
        ballast = self.root / "ballast"
        with open(ballast, "ab") as f:
            while self.free() > leave:
                try:
                    f.write(b"\0" * min(self.free() - leave, MiB))
                    f.flush()
                except OSError:  # the last page: full is what was wanted
                    break

    def read_only(self, on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.root)], check=True)


@pytest.fixture
def disk(tmp_path):
    """A 24 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed (not root)."""
    root = tmp_path / "disk"
    root.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(root)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files or folders a writer left behind."""
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))]


def assert_full(err: BaseException, target: Path) -> None:
    line = str(err)
    assert isinstance(err, StorageError) and "\n" not in line, line
    assert line.startswith(f"disk full writing {target}: ") and " MiB free" in line, line


# ------------------------------------------------------------------------- each writer, a real full disk
def _torch_file(path: Path) -> None:
    with atomic_file(path) as f:
        torch.save({"x": torch.zeros(2 * MiB // 4)}, f)  # 2 MiB: more than the room left


def _checkpoint(path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"x": torch.zeros(2 * MiB // 4)}}, path)


def _embeddings(suffix: str):
    def write(path: Path) -> None:
        ids = [f"v{i}" for i in range(4096)]
        save_embeddings(path.with_suffix(suffix), torch.zeros(4096, 128), ids, ids, {"about": "test"})

    return write


def _text(path: Path) -> None:
    atomic_write(path, "x" * 2 * MiB)


WRITERS = {
    "text": _text,
    "torch.save": _torch_file,
    "checkpoint": _checkpoint,
    "embeddings.pt": _embeddings(".pt"),
    "embeddings.npz": _embeddings(".npz"),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_each_writer_on_a_full_disk_one_line_old_file_kept(disk, name):
    write = WRITERS[name]
    target = disk.root / "out" / ("file.npz" if name.endswith("npz") else "file.pt")
    target.parent.mkdir()
    target.write_bytes(b"the last good one")
    disk.fill(leave=300 * 1024)
    with pytest.raises(StorageError) as got:
        write(target)
    assert_full(got.value, target)
    assert target.read_bytes() == b"the last good one"
    assert not leftovers(disk.root), leftovers(disk.root)
    # The free space named is the disk's after the temporary file went (within a page or two).
    said = float(str(got.value).split(": ")[1].split(" MiB")[0])
    assert abs(said - disk.free() / MiB) <= 0.06, (said, disk.free())  # printed to 0.1 MiB


def test_a_folder_written_on_a_full_disk_leaves_no_half_folder(disk):
    target = disk.root / "export"
    disk.fill(leave=256 * 1024)
    with pytest.raises(StorageError) as got:
        with atomic_dir(target) as tmp:
            (tmp / "weights.safetensors").write_bytes(b"\0" * 2 * MiB)
    assert_full(got.value, target)
    assert not target.exists() and not leftovers(disk.root)


# ------------------------------------------------------------------------- simulated, everywhere
class FullAfter(io.RawIOBase):
    """A file that takes ``room`` bytes and then raises ENOSPC, as a full disk does."""

    def __init__(self, real, room: int) -> None:
        self.real, self.room = real, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def close(self) -> None:
        self.real.close()
        super().close()


def test_torch_writer_meets_enospc_simulated(tmp_path, monkeypatch):
    """torch.save reports a failed write as ``RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos``; the one line still says disk full and names the checkpoint."""
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0, "state_dict": {"x": torch.ones(3)}}, target)
    real_open = open

    def opens(path, mode):  # the temporary checkpoint gets 4 KiB of room
        return FullAfter(real_open(path, mode), 4096) if mode == "wb" else real_open(path, mode)

    monkeypatch.setattr(fileio, "open", opens, raising=False)
    with pytest.raises(StorageError) as got:
        AtomicCheckpointIO().save_checkpoint({"epoch": 1, "state_dict": {"x": torch.ones(MiB)}}, target)
    assert_full(got.value, target)
    raised_by_torch = got.value.__cause__.__cause__  # StorageError <- the write's OSError <- torch's
    assert isinstance(raised_by_torch, RuntimeError) and "unexpected pos" in str(raised_by_torch)
    monkeypatch.undo()
    assert read_checkpoint(target)["epoch"] == 0 and not leftovers(tmp_path)


def test_other_write_errors_keep_their_type(tmp_path, monkeypatch):
    """Only a full or refused write becomes the storage line; an I/O error stays what it is."""

    def broken(self, *a, **k):
        raise OSError(errno.EIO, "Input/output error", str(self))

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError) as got:
        atomic_write(tmp_path / "x.txt", "y")
    assert not isinstance(got.value, StorageError) and got.value.errno == errno.EIO
    assert not leftovers(tmp_path)


def test_export_on_a_simulated_full_disk_through_the_cli(tmp_path, capsys, monkeypatch, cache_dir):
    code, lines, err = run_cli(
        ["train", "demo", *common(cache_dir, tmp_path / "runs", "trainer.limit_val_batches=0")],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    ckpt = tmp_path / "runs" / "demo" / "run" / "checkpoints" / "last.ckpt"
    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".safetensors"):
            real(self, data[: len(data) // 2])  # half of it, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "exports" / "model"
    line = one_line(*run_cli(["export", str(ckpt), str(out)], capsys, monkeypatch))
    assert line.startswith(f"error: disk full writing {out}: ") and "MiB free" in line, line
    assert (
        not out.exists()
        and not leftovers(tmp_path / "exports")
        and not list((tmp_path / "exports").iterdir())
    )


# ------------------------------------------------------------------ a run on a real full / read-only disk
@pytest.mark.slow
def test_training_on_a_full_disk_one_line_last_good_checkpoint_intact(disk, cache_dir, capsys, monkeypatch):
    args = ["train", "demo", *common(cache_dir, disk.root / "runs", "trainer.limit_val_batches=0")]
    code, lines, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    run = disk.root / "runs" / "demo" / "run"
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    # Room for the config, run info and log lines of a resume, not for a checkpoint.
    disk.fill(leave=len(good) // 4)
    resume = [*args, "trainer.max_epochs=2", "--resume", "auto", "--allow-change", "trainer"]
    line = one_line(*run_cli(resume, capsys, monkeypatch))
    assert line.startswith(f"error: disk full writing {run}") and " MiB free" in line, line
    assert last.read_bytes() == good and read_checkpoint(last)["epoch"] == 0
    assert not leftovers(disk.root), leftovers(disk.root)
    # Space freed, the same resume goes on from the last good checkpoint.
    (disk.root / "ballast").unlink()
    code, lines, err = run_cli(resume, capsys, monkeypatch)
    assert code == 0, err
    assert read_checkpoint(last)["epoch"] == 1


def test_a_new_run_on_a_full_disk_leaves_no_folder(disk, cache_dir, capsys, monkeypatch):
    (disk.root / "runs" / "demo").mkdir(parents=True)
    disk.fill(leave=0)
    args = ["train", "demo", *common(cache_dir, disk.root / "runs")]
    line = one_line(*run_cli(args, capsys, monkeypatch))
    assert line.startswith(f"error: disk full writing {disk.root / 'runs' / 'demo'}"), line
    assert not list((disk.root / "runs" / "demo").iterdir()), "an empty run folder was left"


@pytest.fixture
def read_only(tmp_path, request):
    """(folder, make it read-only): a tmpfs remounted read-only as root, ``chmod 555`` otherwise."""
    if os.geteuid() == 0:
        disk = request.getfixturevalue("disk")
        yield disk.root, disk.read_only
        disk.read_only(False)
    else:
        folder = tmp_path / "ro"
        folder.mkdir()

        def chmod(mode: int):
            return lambda: [p.chmod(mode) for p in [folder, *folder.rglob("*")] if p.is_dir()]

        yield folder, chmod(0o555)
        chmod(0o755)()


def test_read_only_output_folder_new_run_and_resume(read_only, cache_dir, capsys, monkeypatch):
    folder, make_read_only = read_only
    args = ["train", "demo", *common(cache_dir, folder / "runs", "trainer.limit_val_batches=0")]
    # A resume of a run on a disk that went read-only: refused before anything is written.
    code, lines, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    run = folder / "runs" / "demo" / "run"
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    make_read_only()
    resume = [*args, "trainer.max_epochs=2", "--resume", "auto", "--allow-change", "trainer"]
    line = one_line(*run_cli(resume, capsys, monkeypatch))
    assert line.startswith(f"error: cannot write {run}") and "permission denied" in line, line
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == good
    # A new run there: the same line for the experiment folder, no run folder made.
    line = one_line(*run_cli(args, capsys, monkeypatch, stamp="new"))
    assert "cannot write" in line and "permission denied" in line and str(folder / "runs") in line, line
    assert not (folder / "runs" / "demo" / "new").exists()


def test_a_stored_copy_on_a_full_disk_is_the_disk_not_the_video(disk, cache_dir):
    """`stop-lightning preprocess`: a full disk used to make every video a "failed" row of the
    report; now the first copy that meets it stops the command with the one line."""
    from stop_lightning.config import load_config
    from stop_lightning.data.preprocess import _Job
    from stop_lightning.data.sources import video_sources
    from stop_lightning.data.stored_copies import settings_from_config

    cfg = load_config("demo", [f"paths.cache_dir={cache_dir}", *DATA])
    videos, _ = video_sources(cfg.data, cfg.task.name, cache_dir)
    rel = str(next(Path(videos).rglob("*.avi")).relative_to(videos))
    job = _Job(Path(videos), disk.root / "copies", settings_from_config(cfg.data))
    disk.fill(leave=0)
    with pytest.raises(StorageError) as got:
        job(rel)
    assert_full(got.value, disk.root / "copies" / Path(rel).with_suffix(".mp4"))
    assert not [p for p in disk.root.rglob("*") if p.is_file() and p.name != "ballast"]


def test_the_csv_log_on_a_full_disk_names_itself(tmp_path, monkeypatch):
    from stop_lightning.loggers import AppendingExperimentWriter

    writer = AppendingExperimentWriter(log_dir=str(tmp_path))
    writer.log_metrics({"train/loss": 1.0}, step=0)
    writer.save()
    kept = Path(writer.metrics_file_path).read_text()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer._fs, "open", full)
    writer.log_metrics({"train/loss": 0.5}, step=1)
    with pytest.raises(StorageError) as got:
        writer.save()
    assert_full(got.value, Path(writer.metrics_file_path))
    assert Path(writer.metrics_file_path).read_text() == kept


@pytest.mark.parametrize("filename", [None, "/somewhere/metrics.csv"])
def test_a_full_disk_met_by_a_writer_not_ours_is_one_line(tmp_path, capsys, monkeypatch, filename):
    """Lightning, W&B or TensorBoard writing on a full disk: the CLI's one line, exit 2."""
    import stop_lightning.train as train_module

    def fills(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(train_module, "train", fills)
    line = one_line(*run_cli(["train", "demo", f"paths.output_dir={tmp_path}"], capsys, monkeypatch))
    named = filename or "a file (the writer did not name it)"
    assert line.startswith(f"error: disk full writing {named}: "), line


def test_the_tiny_clip_cache_on_a_simulated_full_disk(tmp_path, monkeypatch):
    """The random tiny CLIP written into the cache: a disk that fills while its weights are written
    is one line naming the cache folder, and neither a half model nor a temporary folder is left
    (the next run would otherwise load a cut weights file or trip over the leftover)."""
    from stop_lightning.models import backbone
    from stop_lightning.schema import ClipSource

    def fills_up(out_dir, **kwargs):
        (Path(out_dir) / "config.json").write_text("{}")
        (Path(out_dir) / "model.safetensors").write_bytes(b"\0" * 1024)  # half the weights, then full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backbone, "make_tiny_clip", fills_up)
    cache = tmp_path / "cache"
    source = ClipSource(source="tiny", tiny_width=32, tiny_layers=1, tiny_patch_size=16, tiny_image_size=32)
    with pytest.raises(StorageError) as got:
        backbone._tiny_clip_dir(source, cache)
    assert_full(got.value, cache / "tiny-clip-w32-l1-p16-i32")
    assert not list(cache.iterdir()), list(cache.iterdir())
