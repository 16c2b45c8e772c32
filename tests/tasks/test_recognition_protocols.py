"""The literature's protocols end to end on synthetic 4-class data: few-shot, base-to-novel, zero-shot."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stop_lightning.config import load_config
from stop_lightning.models.backbone import load_clip
from stop_lightning.tasks.factory import build_datamodule
from stop_lightning.tasks.recognition import RecognitionModule, class_prompts, harmonic_mean
from stop_lightning.train import train

FOUR_CLASSES = [
    "data.synthetic_classes=4",
    "data.synthetic_clips_per_class=8",
    "trainer.enable_progress_bar=false",
]


def cfg_for(cache_dir, tmp_path, monkeypatch, *extra):
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    return load_config(
        "demo", [f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}", *FOUR_CLASSES, *extra]
    )


def hand_top1(ckpt) -> float:
    """Top-1 of a checkpoint on its test split, by hand: every test clip's averaged view scores, argmax."""
    from stop_lightning.inference import checkpoint_datamodule
    from stop_lightning.model_io import load_checkpoint

    loaded = load_checkpoint(ckpt, device="cpu")
    dm = checkpoint_datamodule(loaded, "test")
    right, total = 0, 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            scores = loaded.module.multiview_scores(batch["video"]).numpy()
            right += int((np.argmax(scores, 1) == batch["label"].numpy()).sum())
            total += len(scores)
    assert total == len(dm.datasets["test"])
    return right / total


def checkpoint_under_test(run_dir) -> Path:
    """The checkpoint train() tests: the best one (one epoch: the only one besides last.ckpt)."""
    (best,) = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    return best


def test_few_shot_trains_on_exactly_k_clips_per_class(cache_dir, tmp_path, monkeypatch):
    cfg = cfg_for(
        cache_dir, tmp_path, monkeypatch, "data.protocol=few_shot", "data.shots=2", "trainer.max_epochs=1"
    )
    metrics = train(cfg)
    assert metrics["test/top1"] == pytest.approx(
        hand_top1(checkpoint_under_test(tmp_path / "demo" / "run")), abs=1e-6
    )
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
    from stop_lightning.model_io import load_checkpoint

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
    dm = build_datamodule(
        cfg.data,
        "recognition",
        bundle.image_size,
        bundle.image_mean,
        bundle.image_std,
        seed=0,
        cache_dir=cfg.paths.cache_dir,
    )
    dm.setup("test")
    clip, tok = bundle.model, bundle.tokenizer
    enc = tok(
        class_prompts(dm.class_names, list(cfg.task.templates)),
        padding="max_length",
        truncation=True,
        max_length=cfg.data.max_text_tokens,
        return_tensors="pt",
    )
    correct = total = 0
    with torch.no_grad():
        text = F.normalize(clip.get_text_features(**enc).pooler_output, dim=-1)  # [C, E]
        for batch in dm.test_dataloader():
            b, t = batch["video"].shape[:2]
            frames = clip.get_image_features(pixel_values=batch["video"].flatten(0, 1)).pooler_output
            video = F.normalize(frames.view(b, t, -1).mean(1), dim=-1)
            correct += ((video @ text.t()).argmax(-1) == batch["label"]).sum().item()
            total += b
    assert metrics["test/top1"] == pytest.approx(correct / total, abs=1e-6)


def test_linear_head_trains_and_is_saved(cache_dir, tmp_path, monkeypatch):
    from stop_lightning.checkpoint_io import read_checkpoint

    start = {}
    on_train_start = RecognitionModule.on_train_start

    def remember_the_start(self):
        start["weight"] = self.classifier.weight.detach().clone()
        on_train_start(self)

    monkeypatch.setattr(RecognitionModule, "on_train_start", remember_the_start)
    cfg = cfg_for(cache_dir, tmp_path, monkeypatch, "task.head=linear", "trainer.max_epochs=1")
    metrics = train(cfg)
    run_dir = tmp_path / "demo" / "run"
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert state["classifier.weight"].shape == (4, 32)  # [classes, the tiny CLIP projection dim]
    # Trained: the saved head is not the head training started from (lr 1e-3, a few AdamW steps).
    assert (state["classifier.weight"] - start["weight"]).abs().max() > 1e-4
    assert metrics["test/top1"] == pytest.approx(hand_top1(checkpoint_under_test(run_dir)), abs=1e-6)


def test_base_to_novel_training_gives_novel_class_logits_no_gradient(cache_dir, tmp_path, monkeypatch):
    cfg = cfg_for(cache_dir, tmp_path, monkeypatch, "data.protocol=base_to_novel")
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    module = RecognitionModule(cfg, ["a", "b", "c", "d"], base_novel_split=([0, 2], [1, 3]), bundle=bundle)
    logits = {}
    forward = module.forward

    def keep_logits(video):
        out = forward(video)
        out.retain_grad()
        logits["out"] = out
        return out

    module.forward = keep_logits
    module.train()
    torch.manual_seed(0)
    video = torch.randn(6, cfg.data.num_frames, 3, bundle.image_size, bundle.image_size)
    loss = module.training_step({"video": video, "label": torch.tensor([0, 2, 0, 2, 2, 0])}, 0)
    loss.backward()
    grad = logits["out"].grad  # [6, 4]
    assert torch.count_nonzero(grad[:, [1, 3]]) == 0  # novel classes: outside the training softmax
    assert (grad[:, [0, 2]].abs() > 0).all()


def test_training_steps_reuse_the_class_prompts_tokens_and_the_base_classes(cache_dir, tmp_path, monkeypatch):
    """Where the text side trains, every step re-encodes the class prompts: their tokens are made on
    the host once and kept on the device (not tokenized and copied each step), and a base-to-novel
    run's base classes and label remap likewise; the features and the loss are those of tokenizing
    afresh."""
    cfg = cfg_for(
        cache_dir, tmp_path, monkeypatch, "data.protocol=base_to_novel", "model.text_prompts.enabled=true"
    )
    bundle = load_clip(cfg.model.clip, cfg.paths.cache_dir)
    module = RecognitionModule(cfg, ["a", "b", "c", "d"], base_novel_split=([0, 2], [1, 3]), bundle=bundle)
    assert module.model.text_side_trains
    calls = []
    tokenize = module.tokenize
    monkeypatch.setattr(module, "tokenize", lambda texts: calls.append(len(texts)) or tokenize(texts))
    module.train()
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(3, cfg.data.num_frames, 3, bundle.image_size, bundle.image_size, generator=gen)
    batch = {"video": video, "label": torch.tensor([0, 2, 3])}
    losses = []
    for i in range(3):
        torch.manual_seed(0)  # the same dropout masks each step
        losses.append(module.training_step(batch, i).detach())
    assert calls == [len(module.prompts)]  # one chunk, tokenized at the first step only
    # the same numbers as tokenizing afresh (no parameter changed between the steps: no optimiser here)
    assert torch.equal(losses[0], losses[2])
    afresh = module.encode_tokens([tokenize(module.prompts)])
    afresh = torch.nn.functional.normalize(afresh.view(-1, 4, afresh.shape[-1]).mean(0), dim=-1)
    assert torch.equal(module._class_text_features(), afresh)
    ids, remap = module._train_class_remap(torch.device("cpu"))
    assert ids.tolist() == [0, 2] and remap.tolist() == [0, -100, 1, -100]
    assert module._train_class_remap(torch.device("cpu"))[1] is remap  # built once
