"""Suite-wide fixtures. Every test is offline: W&B never reaches the network."""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One tiny CLIP and one set of synthetic videos per configuration for the whole session."""
    return tmp_path_factory.mktemp("stop_cache")


@pytest.fixture(scope="session")
def demo_run(cache_dir, tmp_path_factory):
    """One trained tiny demo run for the tests that need a checkpoint (inference, callbacks, notebook):
    1 epoch, W&B offline, metrics and prompt images logged every step.
    ``.run_dir``, ``.ckpt``, ``.metrics``."""
    from types import SimpleNamespace

    from stop_lightning.config import load_config
    from stop_lightning.train import train

    out = tmp_path_factory.mktemp("demo_run")
    cfg = load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={out}",
            "data.synthetic_clips_per_class=8",
            "data.synthetic_classes=4",
            "data.synthetic_looks=0",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "logger.wandb=true",
            "logger.mode=offline",
            "logger.log_images_every_n_steps=1",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STOP_RUN_STAMP", "run")
        metrics = train(cfg)
    run_dir = out / "demo" / "run"
    return SimpleNamespace(
        run_dir=run_dir, ckpt=run_dir / "checkpoints" / "last.ckpt", metrics=metrics, cfg=cfg
    )


@pytest.fixture(scope="session")
def retrieval_run(cache_dir, tmp_path_factory):
    """One tiny retrieval run (1 epoch, no validation) for the tests that need a retrieval checkpoint
    (embed, search, export). ``.run_dir``, ``.ckpt``, ``.metrics``."""
    from types import SimpleNamespace

    from stop_lightning.config import load_config
    from stop_lightning.train import train

    out = tmp_path_factory.mktemp("retrieval_run")
    cfg = load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={out}",
            "data.synthetic_clips_per_class=8",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "task.name=retrieval",
            "data.synthetic_heldout_looks=false",  # the captions name the colours
            "trainer.limit_val_batches=0",
            "checkpoint.monitor=''",
            "checkpoint.save_top_k=0",
            "name=demo_retrieval",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STOP_RUN_STAMP", "ret")
        metrics = train(cfg)
    run_dir = out / "demo_retrieval" / "ret"
    return SimpleNamespace(
        run_dir=run_dir, ckpt=run_dir / "checkpoints" / "last.ckpt", metrics=metrics, cfg=cfg
    )


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Each test leaves torch's intra-op thread count as it found it. The benchmarks a few tests drive
    set it to 1; a later training in the same process then sums in another order than the session's
    `demo_run` did (measured: 6e-6 apart after one epoch with 2 threads), and equal-weights tests fail."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
