"""Config -> datamodule, module, callbacks, loggers, Trainer -> fit, test -> metrics.

Read top to bottom, this is everything ``make train EXP=<name>`` does.
"""

from __future__ import annotations

import logging
import shlex
import sys
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector
from omegaconf import DictConfig

from stop_lightning.callbacks import build_callbacks
from stop_lightning.checkpoint_io import AtomicCheckpointIO, load_trained_weights, read_checkpoint
from stop_lightning.config import check_init_from, read_yaml
from stop_lightning.data.class_lists import write_protocol_files
from stop_lightning.data.datasets import SKIP_ADVICE
from stop_lightning.data.decode import VideoDecodeError
from stop_lightning.data.manifest import retrieval_manifest_path
from stop_lightning.errors import EXIT_USER_ERROR, UserError
from stop_lightning.loggers import build_loggers, finish_wandb, wandb_mode
from stop_lightning.measured import measured_line
from stop_lightning.model_io import (
    apply_initial_weights,
    model_fingerprint,
    read_initial_weights,
    read_trained,
)
from stop_lightning.models.backbone import ClipBundle, load_clip
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.preemption import EXIT_PREEMPTED, Preempted
from stop_lightning.provenance import collect_run_info, update_run_info, write_run_info
from stop_lightning.published import report_published
from stop_lightning.run_folder import (
    check_resume_config,
    check_writable,
    claim_run_dir,
    lock_run,
    release_run_locks,
    remove_unstarted,
    run_folder,
    with_run_dir,
)
from stop_lightning.schema import ConfigError, save_config
from stop_lightning.tasks.base import CheckpointMismatchError, VideoTaskModule
from stop_lightning.tasks.factory import build_module, run_datamodule

log = logging.getLogger(__name__)


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def device_settings(cfg: DictConfig) -> dict:
    """The Trainer arguments that pick devices, processes and number formats."""
    t = cfg.trainer
    return {
        "accelerator": t.accelerator,
        "devices": t.devices,
        "strategy": t.strategy,
        "num_nodes": t.num_nodes,
        "precision": resolve_precision(t.precision),
    }


class DeviceSettingsError(ConfigError):
    pass


def check_device_settings(cfg: DictConfig) -> None:
    """Lightning's refusals of ``trainer.accelerator/devices/strategy/num_nodes/precision`` on this
    machine (no GPU, fewer GPUs than asked, a strategy that needs GPUs or a missing package), and the
    combinations it would change silently (16-mixed on CPU runs as bf16-mixed) or that fail only in
    the first step (bf16 on a GPU without it), as one line before any run folder is made."""
    settings = device_settings(cfg)
    asked = ", ".join(f"trainer.{k}={v}" for k, v in settings.items())
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the real Trainer prints its device lines once, later
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            connector = _AcceleratorConnector(**settings, plugins=trainer_plugins(cfg))
    except Exception as err:  # MisconfigurationException, ValueError, TypeError, ModuleNotFoundError...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DeviceSettingsError(
            f"{asked}: Lightning refuses these on this machine ({reason}); "
            "change the trainer keys (docs/cluster.md)"
        ) from err
    finally:
        quiet.setLevel(level)
    cpu = isinstance(connector.accelerator, CPUAccelerator)
    if cpu and settings["precision"] in ("16-mixed", "16"):
        raise DeviceSettingsError(
            f"{asked}: fp16 mixed precision does not run on a CPU (Lightning would use bf16-mixed "
            "instead); set trainer.precision=bf16-mixed or 32-true"
        )
    bf16 = str(settings["precision"]).startswith("bf16")
    if bf16 and isinstance(connector.accelerator, CUDAAccelerator) and not torch.cuda.is_bf16_supported():
        raise DeviceSettingsError(
            f"{asked}: this GPU ({torch.cuda.get_device_name()}) has no bfloat16; "
            "set trainer.precision=16-mixed or 32-true"
        )


def build_trainer(cfg: DictConfig, run_dir: Path, stage: str) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        **device_settings(cfg),
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=None if t.val_check_interval == 1.0 else t.val_check_interval,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_train_batches=t.limit_train_batches,  # int: batches, float: fraction (config.py)
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        num_sanity_val_steps=t.num_sanity_val_steps,
        fast_dev_run=t.fast_dev_run,
        overfit_batches=t.overfit_batches,
        max_time=t.max_time or None,
        profiler=t.profiler or None,
        detect_anomaly=t.detect_anomaly,
        benchmark=t.benchmark,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar and sys.stdout.isatty(),  # files get TextLog lines
        callbacks=build_callbacks(cfg, run_dir, stage),
        logger=build_loggers(cfg, run_dir),
        plugins=trainer_plugins(cfg),
        use_distributed_sampler=False,  # our EpochSampler shards across ranks itself (exact resume)
    )


def trainer_plugins(cfg: DictConfig) -> list:
    """Atomic checkpoint saves; under SLURM, Lightning's SLURM environment without its own requeue
    handler (preemption.py saves at a step boundary and requeues when ``trainer.requeue``)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def report_early_stop(trainer: L.Trainer) -> None:
    """One line when an EarlyStopping callback ended the fit before ``max_epochs``."""
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch:
            print(
                f"early stopping: {callback.monitor} did not improve (mode {callback.mode}, min_delta "
                f"{abs(callback.min_delta)}) for {callback.patience} validations; the fit stopped after "
                f"epoch {callback.stopped_epoch + 1} of {trainer.max_epochs}"
            )


def print_metrics_table(metrics: dict[str, float], title: str) -> str:
    width = max([len(k) for k in metrics] + [6])
    lines = [title, "-" * (width + 12)]
    lines += [f"{k:<{width}}  {v:>9.4f}" for k, v in sorted(metrics.items())]
    text = "\n".join(lines)
    print(text)
    return text


def report_unreadable(module: VideoTaskModule, run_dir: Path, shown: int = 5) -> None:
    """Under the metrics table and in ``run_info.json``: "unreadable: N of M test videos" and the first
    paths."""
    found = getattr(module, "unreadable", {})
    if not found.get("count"):
        return
    first = ", ".join(found["paths"][:shown]) + (", ..." if found["count"] > shown else "")
    print(f"unreadable: {found['count']} of {found['total']} test videos, each scored as a miss ({first})")
    update_run_info(run_dir, "unreadable", {"test": {**found, "paths": found["paths"][:20]}})


class NothingTrainedError(UserError, RuntimeError):
    """A run with nothing to train or test on: no figure is claimed, the exit code is not 0."""


def refuse_empty_splits(datamodule, splits: tuple[str, ...]) -> None:
    """An empty split of ``splits`` (a 0-byte or header-only manifest, every row filtered out) stops
    the run before its folder is made: Lightning would skip the loop and end with exit 0."""
    for name in splits:
        dataset = datamodule.datasets.get(name)
        if dataset is not None and len(dataset) == 0:
            # Recognition knows the split's file; retrieval's are <manifest_dir>/<split>.jsonl.
            where = getattr(
                datamodule, "manifest_path", partial(retrieval_manifest_path, datamodule.manifest_dir)
            )
            raise NothingTrainedError(
                f"the {name} split has no videos (manifest {where(name)}); "
                f"a run needs {name} rows: fill the manifest or check data.dataset and data.split"
            )


def refuse_no_steps(trainer: L.Trainer, cfg: DictConfig) -> None:
    """A fit that ended without one optimiser step (``trainer.limit_train_batches=0``, ``max_steps``
    already reached, every batch skipped) trained nothing: stop before testing."""
    if trainer.global_step == 0:
        t = cfg.trainer
        raise NothingTrainedError(
            f"the fit made no optimiser step (trainer.limit_train_batches={t.limit_train_batches}, "
            f"trainer.max_steps={t.max_steps}, trainer.max_epochs={t.max_epochs}): "
            "nothing was trained, nothing is tested"
        )


def refuse_all_unreadable(module: VideoTaskModule) -> None:
    """Every test video unreadable (``data.bad_video=skip``): each would be scored as a miss, a figure
    of the files rather than of the model."""
    found = getattr(module, "unreadable", {})
    if found.get("total") and found.get("count") == found["total"]:
        raise NothingTrainedError(
            f"all {found['total']} test videos were unreadable (first: {found['paths'][0]}); "
            "no figure is reported: check data.video_root and the files"
        )


def setup_run(
    cfg: DictConfig,
    run_dir: Path,
    resuming: bool = False,
    allow_change: tuple[str, ...] = (),
    reads: tuple[str, ...] = ("train", "val", "test"),
    bundle=None,
):
    """CLIP and data, then the run folder, then seed: what fitting and evaluating both need.

    Every video file of the splits in ``reads`` is checked before the run folder is made, and those of
    its validation and test splits probed (``data.probe_videos``). A new
    run's folder is claimed atomically (:func:`stop_lightning.run_folder.claim_run_dir`); a resumed run
    keeps its folder and its ``config.yaml`` (a change outside ``allow_change`` stops it). Either is
    locked (:func:`stop_lightning.run_folder.lock_run`) until the caller's ``unlock_run``."""
    if resuming:
        lock_run(run_dir)  # first: a second process on this run stops before it writes anything
    if resuming and (run_dir / "config.yaml").exists():
        saved = read_yaml(
            run_dir / "config.yaml",
            ConfigError,
            "the run's own config is damaged: resume from a copy of the run, or start a new run",
        )
        changed = check_resume_config(saved, with_run_dir(cfg, run_dir), allow_change)
        if changed:
            log.info("resuming with allowed config changes: %s", ", ".join(changed))
    # Weights and data first: a run that cannot start leaves no empty run folder behind.
    bundle = bundle if bundle is not None else load_clip(cfg.model.clip, cfg.paths.cache_dir)
    datamodule = run_datamodule(cfg, bundle)
    datamodule.prepare_data()
    datamodule.setup("fit" if cfg.data.protocol != "zero_shot" else "test")
    datamodule.setup("test")  # every run ends with a test: its files are checked now, with the rest
    datamodule.check_files(reads)
    refuse_empty_splits(datamodule, tuple(s for s in reads if s != "val" or cfg.trainer.limit_val_batches))
    datamodule.probe_videos(tuple(split for split in reads if split != "train"))
    if cfg.logger.wandb:
        wandb_mode(cfg.logger.mode)  # W&B asked for online and unreachable: one line, before any folder
    if not resuming:
        run_dir = claim_run_dir(run_dir)
        lock_run(run_dir)
    try:
        check_writable(run_dir)
        cfg = with_run_dir(cfg, run_dir)
        log.info("run folder: %s", run_dir)
        save_config(cfg, run_dir / "config.yaml")
        write_run_info(cfg, run_dir, bundle, datamodule)
        # What the protocol drew (class subsets, base/novel halves, few-shot lists), kept with the run.
        write_protocol_files(getattr(datamodule, "protocol_files", {}), run_dir)
    except BaseException:
        if not resuming:  # a disk full or read-only before the run began: no half-made folder stays
            remove_unstarted(run_dir)
        raise
    # Seeded last: building a missing tiny CLIP or synthetic dataset draws random numbers, and the
    # prompts' initialisation must not depend on whether those were already in the cache.
    L.seed_everything(cfg.seed, workers=True)
    return cfg, bundle, datamodule


def train(cfg: DictConfig, resume: str | None = None, allow_change: tuple[str, ...] = ()) -> dict[str, float]:
    """Fit (unless the protocol is zero-shot or max_epochs is 0), then test the best checkpoint (or,
    with ``checkpoint.test=last``, the weights the fit ended with).

    ``resume``: ``last``, ``auto`` or a checkpoint path (:func:`stop_lightning.run_folder.run_folder`). A
    preemption signal ends the fit with a checkpoint and :class:`stop_lightning.preemption.Preempted`
    (no test)."""
    check_device_settings(cfg)
    run_dir, resume_ckpt = run_folder(Path(cfg.paths.run_dir), resume)
    try:
        return _fit_and_test(cfg, run_dir, resume_ckpt, allow_change)
    finally:
        release_run_locks()


def _fit_and_test(
    cfg: DictConfig, run_dir: Path, resume_ckpt: str | None, allow_change: tuple[str, ...]
) -> dict[str, float]:
    if resume_ckpt is not None:
        read_checkpoint(resume_ckpt)  # an empty, cut or foreign checkpoint ends here, before any work
    bundle, init = None, None
    if cfg.model.init_from and resume_ckpt is None:  # a resumed run has its own weights already
        check_init_from(cfg.model.init_from)
        bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
        init = read_initial_weights(cfg, bundle)  # refused here: no run folder yet
    cfg, bundle, datamodule = setup_run(
        cfg, run_dir, resuming=resume_ckpt is not None, allow_change=allow_change, bundle=bundle
    )
    run_dir = Path(cfg.paths.run_dir)
    module = build_module(cfg, datamodule, bundle)
    if init is not None:
        update_run_info(run_dir, "initialised_from", apply_initial_weights(module, init))
    trainer = build_trainer(cfg, run_dir, "fit")
    fits = cfg.data.protocol != "zero_shot" and cfg.trainer.max_epochs != 0
    ckpt_for_test = None
    if fits:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_ckpt)
        except Preempted:
            finish_wandb(exit_code=EXIT_PREEMPTED)
            raise
        refuse_no_steps(trainer, cfg)
        report_early_stop(trainer)
        if cfg.checkpoint.test == "best":
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            ckpt_for_test = best or None
    try:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_for_test, verbose=False)
    except VideoDecodeError as err:
        if not fits:
            raise
        weights = ckpt_for_test or last_checkpoint(trainer)
        finish_wandb(exit_code=EXIT_USER_ERROR)  # the W&B run keeps the fit's curves, closed
        raise UntestedFitError(untested_fit_message(err, run_dir, weights)) from err
    refuse_all_unreadable(module)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        print_metrics_table(
            metrics, title=f"{cfg.name}, model.preset={cfg.model.preset}: test metrics ({run_dir})"
        )
        report_unreadable(module, run_dir)
        expected = measured_line(cfg, metrics)
        if expected:
            print(expected)
        report_published(cfg, metrics, run_dir)
    finish_wandb()
    return metrics


class UntestedFitError(UserError):
    """The fit ended but a test video failed to decode (one the probe could not tell from a good one)."""


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The ``last.ckpt`` the fit wrote (``checkpoint.save_last``), else the newest checkpoint it kept."""
    paths = [getattr(c, "last_model_path", "") or c.best_model_path for c in trainer.checkpoint_callbacks]
    written = [Path(p) for p in paths if p and Path(p).is_file()]
    named_last = [p for p in written if p.name == "last.ckpt"]
    if named_last or written:
        return str((named_last or sorted(written, key=lambda p: p.stat().st_mtime))[-1])
    return None


def untested_fit_message(err: VideoDecodeError, run_dir: Path, ckpt: str | None) -> str:
    """One line: the video that failed the test after the fit, where the trained weights are and the
    ``eval`` command that scores them with the run's own config, skipping the bad video."""
    reason = err.reason.removesuffix(f"({SKIP_ADVICE})").rstrip()
    failed = f"{err.path}: {reason}; the fit finished but its test did not"
    if ckpt is None:
        return f"{failed}, and it kept no checkpoint (checkpoint.save_last=false, save_top_k=0)"
    command = (
        f"stop-lightning eval {shlex.quote(str(run_dir / 'config.yaml'))} --ckpt {shlex.quote(ckpt)} "
        f"data.bad_video=skip {shlex.quote(f'paths.run_dir={run_dir.parent}')}"
    )
    return f"{failed}: the trained weights are in {ckpt}; score them (the bad video a miss) with: {command}"


def refuse_untrained(cfg: DictConfig, bundle: ClipBundle) -> None:
    """Without a checkpoint only a preset that trains nothing may be evaluated: anything else would
    score randomly initialised prompts as if they were CLIP."""
    trainable, _ = STOPVideoModel(cfg.model, bundle.model, cfg.data.num_frames).trainable_parameter_count()
    head = cfg.task.head == "linear"
    if trainable or head:
        what = f"{trainable:,} trainable parameters" + (" and a linear head" if head else "")
        raise ConfigError(
            f"eval without --ckpt runs only a preset that trains nothing, "
            f"but model.preset={cfg.model.preset} has "
            f"{what}, randomly initialised; "
            "pass --ckpt <a checkpoint or export folder>, or model.preset=zero_shot"
        )


def evaluate(
    cfg: DictConfig, ckpt: str | None = None, untrained: bool = False, dump: bool = False
) -> dict[str, float]:
    """Test a checkpoint (trained weights on top of the frozen CLIP) or zero-shot CLIP.

    Without ``ckpt`` a preset with trainable parts is refused (:func:`refuse_untrained`) unless
    ``untrained`` asks for its freshly initialised weights on purpose (a before-training baseline).
    ``dump`` writes the test's raw scores into the eval folder (:mod:`stop_lightning.tasks.scores_dump`).
    """
    check_device_settings(cfg)
    checkpoint = read_trained(ckpt) if ckpt is not None else None  # a bad file ends before any folder
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    if ckpt is None and not untrained:
        refuse_untrained(cfg, bundle)
    run_dir, _ = run_folder(Path(cfg.paths.run_dir))
    try:
        return _test(cfg, run_dir, bundle, ckpt, checkpoint, untrained, dump)
    finally:
        release_run_locks()


def _test(
    cfg: DictConfig,
    run_dir: Path,
    bundle: ClipBundle,
    ckpt: str | None,
    checkpoint: dict | None,
    untrained: bool,
    dump: bool,
) -> dict[str, float]:
    cfg, bundle, datamodule = setup_run(cfg, run_dir, reads=("test",), bundle=bundle)
    run_dir = Path(cfg.paths.run_dir)
    module = build_module(cfg, datamodule, bundle)
    if ckpt is not None:
        run_info = collect_run_info(cfg, bundle, datamodule)
        try:
            load_trained_weights(module, ckpt, run_info=run_info, checkpoint=checkpoint)
        except CheckpointMismatchError:
            remove_unstarted(run_dir)  # nothing was evaluated: no folder says otherwise
            raise
    scored = {  # what this evaluation scored, kept with its results
        "what": "checkpoint" if ckpt is not None else ("untrained" if untrained else "zero-shot"),
        "checkpoint": str(Path(ckpt).resolve()) if ckpt is not None else None,
        "fingerprint": model_fingerprint(module),
    }
    module.keep_test_scores = dump
    trainer = build_trainer(cfg, run_dir, "test")
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    refuse_all_unreadable(module)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        print_metrics_table(metrics, title=f"{cfg.name}: evaluation ({ckpt or scored['what']})")
        if dump:
            written = module.write_test_scores(run_dir)
            scored["scores"] = written.name  # the dump, beside run_info.json
            print(f"scores: {written} (format: docs/metrics.md)")
        report_unreadable(module, run_dir)
        report_published(cfg, metrics, run_dir)
        update_run_info(run_dir, "evaluated", scored)
        print(
            f"eval folder: {run_dir} (model {scored['fingerprint'][:12]}; run_info.json says what was scored)"
        )
    finish_wandb()
    return metrics
