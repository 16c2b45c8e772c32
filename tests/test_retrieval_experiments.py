"""Each retrieval experiment (experiments/<name>.yaml) trains one step on its synthetic official layout
through the command line, as `make manifest`-then-`make train EXP=<name> ARGS=...` would run it."""

from __future__ import annotations

import shlex

import pytest

from stop_lightning.cli import main
from stop_lightning.config import load_config
from stop_lightning.data.synthetic import write_synthetic_dataset

# What a user types to try an experiment on the tiny random CLIP: everything else is the experiment's.
TINY = (
    "model.clip.source=tiny data.num_frames=4 data.fps=2.0 data.batch_size=4 data.eval_batch_size=4 "
    "data.num_workers=0 data.persistent_workers=false data.pin_memory=false "
    "trainer.max_epochs=1 trainer.limit_train_batches=1 trainer.accelerator=cpu trainer.devices=1 "
    "trainer.precision=32-true trainer.enable_progress_bar=false logger.wandb=false"
)


@pytest.mark.parametrize(
    "name, extra",
    [
        (
            "activitynet",
            "model.clip.activation_checkpointing=true",
        ),  # the switch, through the whole train path
        ("didemo", ""),
        ("vatex", ""),
        ("msvd", ""),
        ("lsmdc", ""),
    ],
)
def test_experiment_trains_one_step_on_its_synthetic_layout(name, extra, tmp_path, cache_dir, monkeypatch):
    # 16-frame clips at 8 fps (2 s): 4 frames at the overridden 2 fps.
    root = write_synthetic_dataset(
        tmp_path / name, name, num_classes=2, clips_per_class=6, num_frames=16, size=32
    )
    manifests = tmp_path / "manifests"
    assert main(["manifest", name, "--root", str(root), "--out", str(manifests), "--quiet"]) == 0

    args = (
        f"{TINY} {extra} data.video_root={root} data.manifest_dir={manifests} "
        f"paths.cache_dir={cache_dir} paths.output_dir={tmp_path / 'runs'}"
    )
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    assert main(["train", name, *shlex.split(args)]) == 0  # `make train EXP=<name> ARGS="..."`
    run = tmp_path / "runs" / name / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    saved = (run / "config.yaml").read_text()
    assert f"dataset: {name}" in saved and "source: tiny" in saved


@pytest.mark.parametrize(
    "name, frames, tokens, lr, batch, epochs",
    [
        ("activitynet", 64, 64, 1e-3, 16, 10),
        ("didemo", 64, 64, 1e-3, 16, 10),
        ("vatex", 12, 32, 5e-3, 64, 10),
        ("msvd", 12, 32, 1e-3, 32, 5),
        ("lsmdc", 12, 32, 1e-3, 32, 5),
    ],
)
def test_reference_settings(name, frames, tokens, lr, batch, epochs):
    cfg = load_config(name)
    assert (cfg.data.dataset, cfg.task.name, cfg.data.sampling, cfg.data.fps) == (
        name,
        "retrieval",
        "fps",
        3.0,
    )
    assert (cfg.data.num_frames, cfg.data.max_text_tokens, cfg.model.text_prompts.max_text_tokens) == (
        frames,
        tokens,
        tokens,
    )
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.data.batch_size, cfg.trainer.max_epochs) == (
        lr,
        0.2,
        batch,
        epochs,
    )
    assert cfg.data.hflip is False and cfg.model.clip.source == "openai/clip-vit-base-patch32"
