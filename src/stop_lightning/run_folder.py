"""The run folder: where a new run goes, which folder and checkpoint ``RESUME`` continues, the config
as the run sees it, and the rule that a resumed run keeps the config it started with.

Resume rules (docs/cluster.md): ``last`` continues the newest run of the experiment that has a
``checkpoints/last.ckpt`` and fails (exit 2) when there is none; ``auto`` does the same but starts a
fresh run when there is none (a requeued job can always pass it); a path continues that checkpoint's
run. A resumed run's ``config.yaml`` is its config: a composed config that differs from it stops the
run naming each differing key, unless the key is allowed to change (``--allow-change KEY``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stop_lightning.errors import UserError
from stop_lightning.fileio import StorageError, storage_error
from stop_lightning.schema import (
    ConfigError,
    ExperimentConfig,
    flat_keys,
    key_under,
    project_root,
    rooted_paths,
)

RUN_STAMP_ENV = "STOP_RUN_STAMP"
RESUME_MODES = ("last", "auto")
# Keys that are the run's location, not its settings: never compared on resume.
NEVER_COMPARED = ("paths.run_dir",)
LOCK_FILE = ".run.lock"
_HELD: dict[Path, int] = {}  # run folder -> the open lock file this process holds


def latest_run(experiment_dir: Path) -> Path | None:
    """The newest run folder of an experiment that has a ``checkpoints/last.ckpt``."""
    lasts = sorted(experiment_dir.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return lasts[-1].parent.parent if lasts else None


def run_folder(experiment_dir: Path, resume: str | None = None) -> tuple[Path, str | None]:
    """(run folder, checkpoint to resume from): the one place that reads ``RESUME``.

    A new run's folder is ``<paths.run_dir>/<timestamp>`` as wanted; :func:`claim_run_dir` creates
    it (or a suffixed one when it is taken). The timestamp goes through an environment variable so
    DDP ranks started later by Lightning (which re-run the command) land in the same folder.
    """
    if resume in RESUME_MODES:
        found = latest_run(experiment_dir)
        if found is not None:
            return found, str(found / "checkpoints" / "last.ckpt")
        if resume == "last":
            raise FileNotFoundError(
                f"cannot resume: no run under {experiment_dir} has checkpoints/last.ckpt "
                "(train once without RESUME, pass RESUME=path/to.ckpt, or RESUME=auto to start fresh)"
            )
    elif resume:
        ckpt = Path(resume)
        if not ckpt.exists():  # a folder or an unreadable file is told by the checkpoint reader
            raise FileNotFoundError(f"cannot resume: checkpoint {ckpt} does not exist")
        return ckpt.resolve().parent.parent, str(ckpt)
    if _launched_with_other_ranks() and RUN_STAMP_ENV not in os.environ:
        raise ConfigError(
            f"this process is one rank of a multi-process launch (torchrun, srun): set {RUN_STAMP_ENV} to "
            "the same run name on every node (e.g. STOP_RUN_STAMP=$SLURM_JOB_ID) so all ranks share one "
            "run folder (docs/cluster.md)"
        )
    stamp = os.environ.setdefault(RUN_STAMP_ENV, time.strftime("%Y%m%d-%H%M%S"))
    return experiment_dir / stamp, None


def _nonzero_rank() -> bool:
    """A rank other than the first of a multi-process launch (Lightning's DDP children, torchrun,
    srun, nodes started by hand)."""
    return any(
        os.environ.get(var, "0") not in ("", "0")
        for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "GROUP_RANK")
    )


def _launched_with_other_ranks() -> bool:
    """A rank of a multi-process launch: Lightning's DDP children (``LOCAL_RANK``), torchrun
    (``WORLD_SIZE``), srun (``SLURM_NTASKS``) or nodes started by hand (``NODE_RANK``). These use the
    folder named by ``STOP_RUN_STAMP`` instead of claiming a new one (only one rank could win it)."""
    if _nonzero_rank():
        return True
    return any(os.environ.get(var, "1") not in ("", "1") for var in ("WORLD_SIZE", "SLURM_NTASKS"))


def claim_run_dir(wanted: Path) -> Path:
    """Create a new run's folder atomically: ``wanted``, else ``wanted-2``, ``wanted-3``... (two runs
    started in the same second get two folders). Sets ``STOP_RUN_STAMP`` to the name it got."""
    parent = wanted.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if _launched_with_other_ranks():
            wanted.mkdir(exist_ok=True)
            return wanted
        for n in range(1, 1000):
            candidate = wanted if n == 1 else wanted.with_name(f"{wanted.name}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            os.environ[RUN_STAMP_ENV] = candidate.name
            return candidate
    except OSError as err:
        raise storage_error(err, parent) from err
    raise StorageError(f"cannot create a run folder under {parent}: {wanted.name} and 999 suffixes are taken")


def check_writable(folder: Path) -> None:
    """Write and remove a probe file in ``folder`` (the run folder, before any training)."""
    probe = folder / f".write-probe.{os.getpid()}"
    try:
        probe.write_bytes(b"0")
    except OSError as err:
        raise storage_error(err, folder) from err
    finally:
        probe.unlink(missing_ok=True)


class RunInUseError(UserError, RuntimeError):
    pass


def lock_run(run_dir: Path) -> None:
    """Hold ``<run_dir>/.run.lock`` (an exclusive ``flock``) while this process uses the run.

    A second process on the same run (a requeue that fires twice, two ``--resume auto``) refuses with
    one line instead of writing the same CSV log and checkpoints at once. The lock is the open file:
    it goes with the process however that ends, so a crashed run's lock never blocks the next one.
    The other ranks of a multi-process launch work under rank 0's lock."""
    if _nonzero_rank() or run_dir in _HELD:
        return
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise storage_error(err, path) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunInUseError(
            f"run folder {run_dir} is in use by {holder} (it holds {path}); two processes on one run "
            "would write the same checkpoints and logs: wait for that one to end, then resume"
        ) from None
    try:  # who holds it, for the message above; the lock works without it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    except OSError:
        pass
    _HELD[run_dir] = fd


def release_run_locks() -> None:
    """Release the locks :func:`lock_run` took in this process (closing the file releases it; the
    file stays: removing it could let two processes lock two different files)."""
    while _HELD:
        os.close(_HELD.popitem()[1])


def remove_unstarted(run_dir: Path) -> None:
    """Remove a new run's folder when the run stops before training: no empty run folder is left.
    Not in a multi-process launch: the folder is shared with ranks that may be writing to it."""
    release_run_locks()
    if _launched_with_other_ranks():
        return
    shutil.rmtree(run_dir, ignore_errors=True)


def check_resume_config(
    saved: DictConfig, cfg: DictConfig, allowed: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """The keys where ``cfg`` differs from the run's ``saved`` config; a difference outside
    ``allowed`` (a key or a section prefix such as ``trainer``) stops the run naming each one."""
    # A run saved before folders were absolute (its config.yaml has relative ones) resumes unchanged.
    saved = rooted_paths(OmegaConf.create(OmegaConf.to_container(saved)), project_root())
    a = flat_keys(OmegaConf.to_container(saved, resolve=True))
    b = flat_keys(OmegaConf.to_container(cfg, resolve=True))
    # A key added to the schema after the run was saved counts as its default there, so a run
    # preempted before an upgrade resumes unless the key is set to something else now.
    defaults = flat_keys(OmegaConf.to_container(OmegaConf.structured(ExperimentConfig)))
    a = {**{k: defaults[k] for k in b.keys() - a.keys() if k in defaults}, **a}
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    differ = [k for k in differ if k not in NEVER_COMPARED]
    refused = [k for k in differ if not key_under(k, allowed)]
    if refused:
        listed = "; ".join(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in refused)
        raise ConfigError(
            f"resume would change the run's config ({listed}); a resumed run keeps its config.yaml. "
            f"Drop the override(s), or allow them with --allow-change {' --allow-change '.join(refused)}"
        )
    return differ


def with_run_dir(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The config as the run sees it: ``paths.run_dir`` is this run's own folder."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.paths.run_dir = str(run_dir)
    OmegaConf.set_readonly(cfg, True)
    return cfg
