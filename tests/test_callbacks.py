"""Prompt pictures (mask overlay, frame weights), the image callback, and what an offline W&B run holds."""

import csv
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stop_lightning.callbacks import PromptImageLogger
from stop_lightning.checkpoint_io import read_checkpoint
from stop_lightning.data.transforms import normalize
from stop_lightning.figures import (
    denormalize,
    figure_png,
    frame_weight_figure,
    overlay_mask,
    save_figure,
    spatial_mask_figure,
)
from stop_lightning.models.tiny_clip import CLIP_MEAN, CLIP_STD

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


# ---------------------------------------------------------------------------------- pictures
def test_overlay_tints_exactly_the_masked_patches():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    mask = torch.zeros(2, 2, 2)  # a 2x2 patch grid: each patch covers 4x4 pixels
    mask[0, 0, 1] = 1  # frame 0: top-right patch
    mask[1, 1, 0] = 1  # frame 1: bottom-left patch
    out = overlay_mask(frames, mask, color=(255, 0, 0), opacity=0.5)
    inside = np.zeros((2, 8, 8), dtype=bool)
    inside[0, :4, 4:] = True
    inside[1, 4:, :4] = True
    assert np.array_equal(out[~inside], frames[~inside])
    expected = (
        frames[inside].astype(np.float32) * 0.5 + np.array([255, 0, 0], dtype=np.float32) * 0.5
    ).round()
    assert np.array_equal(out[inside], expected.astype(np.uint8))


def test_denormalize_inverts_the_data_normalisation():
    frames = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)  # [T, 3, H, W]
    normalised = normalize(CLIP_MEAN, CLIP_STD)(frames)
    back = denormalize(normalised, CLIP_MEAN, CLIP_STD)  # [T, H, W, 3]
    assert back.shape == (3, 16, 16, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.permute(0, 2, 3, 1).numpy().astype(int)).max() <= 1


def test_figures_render_to_png(tmp_path):
    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    mask = torch.zeros(4, 4, 4)
    mask[:, 1, 1] = 1
    assert figure_png(spatial_mask_figure(frames, mask))[:8] == PNG_MAGIC
    path = save_figure(frame_weight_figure(torch.tensor([0.0, 0.5, 1.0, 0.25])), tmp_path / "w.png")
    width, height = png_size(path)
    assert width > 100 and height > 100
    assert not list(tmp_path.glob("*.tmp"))


def test_callback_draws_every_n_optimiser_steps_once(monkeypatch):
    callback = PromptImageLogger("unused", every_n_steps=2)
    drawn = []
    monkeypatch.setattr(
        callback,
        "log_prompts",
        lambda trainer, module, video, step, label="": drawn.append((step, tuple(video.shape))),
    )
    batch = {"video": torch.zeros(3, 2, 3, 4, 4)}
    # Gradient accumulation: several batches end on the same optimiser step.
    for step in (0, 1, 1, 2, 2, 3, 4, 4, 5):
        callback.on_train_batch_end(
            SimpleNamespace(global_step=step, is_global_zero=True), None, None, batch, 0
        )
    assert drawn == [(2, (1, 2, 3, 4, 4)), (4, (1, 2, 3, 4, 4))]
    with pytest.raises(ValueError, match="log_images_every_n_steps"):
        PromptImageLogger("unused", every_n_steps=0)


# ---------------------------------------------------------------------------------- a training run
def test_training_saves_prompt_images_every_step(demo_run):
    steps = read_checkpoint(demo_run.ckpt)["global_step"]
    assert steps == 2
    images = sorted(p.name for p in (demo_run.run_dir / "images").glob("*.png"))
    assert images == [
        f"step{s:06d}_{kind}.png" for s in range(1, steps + 1) for kind in ("frame_weights", "spatial_mask")
    ]
    width, height = png_size(demo_run.run_dir / "images" / "step000001_spatial_mask.png")
    assert width > 4 * height  # one panel per frame, side by side


def test_csv_log_has_parameter_count_learning_rate_and_throughput(demo_run):
    with open(demo_run.run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"params/trainable", "params/frozen", "perf/clips_per_s"} <= columns
    assert any(c.startswith("lr-") for c in columns), columns
    trainable = [float(r["params/trainable"]) for r in rows if r["params/trainable"]]
    assert trainable and trainable[0] > 0
    assert all(float(r["perf/clips_per_s"]) > 0 for r in rows if r["perf/clips_per_s"])


def wandb_records(path: Path) -> list:
    """The records of an offline ``run-*.wandb`` file (LevelDB log format: 32 KiB blocks of
    ``crc32 | length | type`` chunks, after a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_offline_wandb_run_holds_config_metrics_and_images(demo_run):
    runs = list((demo_run.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    records = wandb_records(next(runs[0].glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds, "the W&B run was not finished"
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    # logger.name/group/tags unset: named <experiment>/<run folder>, in no group, untagged
    assert (run.display_name, run.run_group, list(run.tags)) == ("demo/run", "", [])
    assert run.project == "stop-lightning"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["name"] == "demo" and config["logger"]["log_images_every_n_steps"] == 1
    assert config["model"]["clip"]["source"] == "tiny"
    history: dict[str, list] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                history.setdefault("/".join(item.nested_key) or item.key, []).append(
                    json.loads(item.value_json)
                )
    assert history["test/top1"] == [pytest.approx(demo_run.metrics["test/top1"])]
    assert history["params/trainable"][0] > 0 and "perf/clips_per_s" in history
    assert (
        len(history["prompts/spatial_mask/filenames"]) == 2
        and len(history["prompts/frame_weights/filenames"]) == 2
    )
    media = sorted((runs[0] / "files" / "media" / "images" / "prompts").glob("*.png"))
    assert len(media) == 4


def test_drawing_images_does_not_change_training(demo_run, cache_dir, tmp_path, monkeypatch):
    """The same run without image logging (and without W&B) ends with the same weights."""
    from stop_lightning.config import load_config
    from stop_lightning.train import train

    monkeypatch.setenv("STOP_RUN_STAMP", "plain")
    cfg = load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            "data.synthetic_clips_per_class=8",
            "data.synthetic_classes=4",
            "data.synthetic_looks=0",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            "logger.log_images_every_n_steps=0",
        ],
    )
    train(cfg)
    assert not (tmp_path / "demo" / "plain" / "images").exists()
    plain = read_checkpoint(tmp_path / "demo" / "plain" / "checkpoints" / "last.ckpt")["state_dict"]
    drawn = read_checkpoint(demo_run.ckpt)["state_dict"]
    assert plain.keys() == drawn.keys()
    for key in plain:
        assert torch.allclose(plain[key], drawn[key], atol=1e-6), key


def test_text_log_lines_for_files(tmp_path):
    """One line every N steps and one per epoch with loss, val metrics, lr, clips/s and ETA."""
    import io

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from stop_lightning.callbacks import TextLog

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            loss = self.w(batch["video"]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, i):
            self.log("val/top1", 0.25)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = [{"video": torch.ones(2)} for _ in range(8)]
    out = io.StringIO()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[TextLog(every_n_steps=2, stream=out)],
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), DataLoader(data, batch_size=2), DataLoader(data, batch_size=4))
    lines = out.getvalue().splitlines()
    steps = [line for line in lines if " done " not in line]
    ends = [line for line in lines if " done " in line]
    assert [line.split(" | ")[0] for line in steps] == [
        "epoch 1/2 [2/4] step 2",
        "epoch 1/2 [4/4] step 4",
        "epoch 2/2 [2/4] step 6",
        "epoch 2/2 [4/4] step 8",
    ]
    assert [line.split(" | ")[0] for line in ends] == ["epoch 1/2 done step 4", "epoch 2/2 done step 8"]
    for line in ends:
        assert (
            "val/top1 0.2500" in line and "train/loss" in line and "lr 1.00e-02" in line and "clips/s" in line
        )
    assert "eta 0:00:00" in ends[-1] and "eta " in steps[0]


def test_epoch_lines_without_validation_show_no_stale_figures_and_early_stopping_says_so(
    cache_dir, tmp_path, capsys, monkeypatch
):
    """Validation every 2nd epoch: the 1st and 3rd epoch lines carry no val/ figures (the last
    validation's would read as fresh). meanP's val/top1 is exactly 0.5 at every validation, so
    EarlyStopping (patience 1) ends the fit after epoch 4 of 6, and the run says so."""
    from stop_lightning.config import load_config
    from stop_lightning.train import train

    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    es = "callbacks.early_stopping"
    cfg = load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            "model.preset=clip4clip_meanp",
            "data.synthetic_clips_per_class=8",
            "data.synthetic_looks=0",
            "trainer.max_epochs=6",
            "trainer.check_val_every_n_epoch=2",
            "trainer.enable_progress_bar=false",
            "logger.wandb=false",
            f"{es}.class_path=lightning.pytorch.callbacks.EarlyStopping",
            f"{es}.init_args.monitor=val/top1",
            f"{es}.init_args.mode=max",
            f"{es}.init_args.patience=1",
        ],
    )
    train(cfg)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " done" in line and line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/6", "2/6", "3/6", "4/6"]
    for line in lines:
        fresh = line.split()[1] in ("2/6", "4/6")
        assert ("val/top1 0.5000" in line) == fresh, line
        assert ("done (no validation)" in line) == (not fresh), line
    assert "early stopping: val/top1 did not improve (mode max, min_delta 0.0) for 1 validations" in out
    assert "stopped after epoch 4 of 6" in out
