"""The literature's protocols end to end on synthetic 4-class data: few-shot, base-to-novel, zero-shot."""

import json

import pytest
import torch
import torch.nn.functional as F

from stop_lightning.config import load_config
from stop_lightning.data.datamodules import build_datamodule
from stop_lightning.models.backbone import load_clip
from stop_lightning.tasks.recognition import class_prompts, harmonic_mean
from stop_lightning.train import train

FOUR_CLASSES = ["data.synthetic_classes=4", "data.synthetic_clips_per_class=8", "trainer.enable_progress_bar=false"]


def cfg_for(cache_dir, tmp_path, monkeypatch, *extra):
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    return load_config("demo", [f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}", *FOUR_CLASSES, *extra])


def test_few_shot_trains_on_exactly_k_clips_per_class(cache_dir, tmp_path, monkeypatch):
    cfg = cfg_for(cache_dir, tmp_path, monkeypatch, "data.protocol=few_shot", "data.shots=2", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/top1"] <= 1.0
    fewshot = list((cache_dir / "synthetic").rglob("train_fewshot_k2_seed0.jsonl"))
    assert len(fewshot) == 1
    rows = [json.loads(line) for line in fewshot[0].read_text().splitlines() if line.strip()]
    per_class = {}
    for row in rows:
        per_class[row["label"]] = per_class.get(row["label"], 0) + 1
    assert per_class == {0: 2, 1: 2, 2: 2, 3: 2}


def test_base_to_novel_reports_base_novel_and_harmonic_mean(cache_dir, tmp_path, monkeypatch):
    cfg = cfg_for(cache_dir, tmp_path, monkeypatch, "data.protocol=base_to_novel", "trainer.max_epochs=1")
    metrics = train(cfg)
    base, novel = metrics["test/base_top1"], metrics["test/novel_top1"]
    assert metrics["test/hm_top1"] == pytest.approx(harmonic_mean(base, novel), abs=1e-6)
    # Each half is a 2-way problem among its own classes.
    assert 0.0 <= base <= 1.0 and 0.0 <= novel <= 1.0
    # The inference path rebuilds the module with the same split (saved in hparams): base = the
    # alphabetically first half of the class names.
    from stop_lightning.inference import load_checkpoint

    loaded = load_checkpoint(tmp_path / "demo" / "run" / "checkpoints" / "last.ckpt", device="cpu")
    names = loaded.module.class_names
    first_half = sorted(names)[: len(names) // 2]
    expected = (
        [i for i, n in enumerate(names) if n in first_half],
        [i for i, n in enumerate(names) if n not in first_half],
    )
    assert loaded.module.base_novel_split == tuple(expected) and loaded.module.train_class_ids == expected[0]


def test_zero_shot_equals_stock_clip_mean_of_frames(cache_dir, tmp_path, monkeypatch):
    cfg = cfg_for(cache_dir, tmp_path, monkeypatch, "model.preset=zero_shot", "data.protocol=zero_shot")
    metrics = train(cfg)
    assert not (tmp_path / "demo" / "run" / "checkpoints").exists()  # nothing trained, nothing saved
    # The same evaluation by hand with the stock HF CLIP API.
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    dm = build_datamodule(cfg.data, "recognition", bundle.image_size, bundle.image_mean, bundle.image_std,
                          seed=0, cache_dir=cfg.paths.cache_dir)
    dm.setup("test")
    clip, tok = bundle.model, bundle.tokenizer
    enc = tok(class_prompts(dm.class_names, list(cfg.task.templates)), padding="max_length", truncation=True,
              max_length=cfg.data.max_text_tokens, return_tensors="pt")
    correct = total = 0
    with torch.no_grad():
        text = F.normalize(clip.get_text_features(**enc).pooler_output, dim=-1)  # [C, E]
        for batch in dm.test_dataloader():
            b, t = batch["video"].shape[:2]
            frames = clip.get_image_features(pixel_values=batch["video"].flatten(0, 1)).pooler_output
            video = F.normalize(frames.view(b, t, -1).mean(1), dim=-1)
            correct += (( video @ text.t()).argmax(-1) == batch["label"]).sum().item()
            total += b
    assert metrics["test/top1"] == pytest.approx(correct / total, abs=1e-6)


def test_linear_head_trains_and_is_saved(cache_dir, tmp_path, monkeypatch):
    from stop_lightning.checkpoint_io import read_checkpoint

    cfg = cfg_for(cache_dir, tmp_path, monkeypatch, "task.head=linear", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/top1"] <= 1.0
    state = read_checkpoint(tmp_path / "demo" / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    assert state["classifier.weight"].shape == (4, 32)  # [classes, the tiny CLIP projection dim]
    assert state["classifier.weight"].abs().sum() > 0
