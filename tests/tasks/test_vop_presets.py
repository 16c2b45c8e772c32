"""The VoP presets (experiments/presets/vop*.yaml) train on both tasks, and only their own prompts train.

Each preset runs one optimiser step on the retrieval demo and on the recognition demo (tiny CLIP,
synthetic clips). The demos switch the text prompts off for STOP's sake; VoP's are part of the
method, so they are switched back on here. VoP-F splits the demos' 2-layer CLIP after its first layer.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from stop_lightning.config import load_config
from stop_lightning.tasks.factory import build_module
from stop_lightning.train import setup_run

# Trainable parameters each preset must have, by name prefix inside the task module, and nothing else.
TEXT = ("model.text_encoder.prompts",)
LOCAL = ("model.local_prompts.tokens",)
PER_FRAME = ("model.local_prompts.frame_tokens",)  # VoP-P: 4 of the 8 tokens per frame position
CONTEXT = ("model.context_prompts.context.", "model.context_prompts.fc.")  # VoP-C: BiLSTM, FC
FUNCTION = ("model.function_prompts.tokens", "model.function_prompts.frame_position")  # VoP-F
EXPECTED = {
    "vop": LOCAL + TEXT,
    "vop_p": LOCAL + PER_FRAME + TEXT,
    "vop_c": LOCAL + TEXT + CONTEXT,
    "vop_f": LOCAL + TEXT + FUNCTION,
    "vop_fc": LOCAL + TEXT + CONTEXT + FUNCTION,
    "vop_fp": LOCAL + PER_FRAME + TEXT + FUNCTION,
}
DEMOS = {
    "retrieval": ("demo_retrieval", ["data.synthetic_clips_per_class=8", "data.batch_size=4"]),
    "recognition": (
        "demo",
        [
            "data.synthetic_clips_per_class=8",
            "data.synthetic_classes=4",
            "data.synthetic_looks=0",
            "data.batch_size=4",
        ],
    ),
}


class _Record(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {
            n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
        }


def _one_step(cache_dir, tmp_path, task: str, preset: str):
    experiment, data = DEMOS[task]
    cfg = load_config(
        experiment,
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            f"model.preset={preset}",
            "model.text_prompts.enabled=true",
            "model.function_prompts.split_layer=1",  # the demos' CLIP has 2 vision layers (VoP-F: 8 of 12)
            "trainer.enable_progress_bar=false",
            *data,
        ],
    )
    cfg, bundle, datamodule = setup_run(cfg, tmp_path / "run")
    torch.manual_seed(0)
    module = build_module(cfg, datamodule, bundle)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    record = _Record()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[record],
    )
    trainer.fit(module, datamodule=datamodule)
    return module, before, record.grads


@pytest.mark.parametrize("task", sorted(DEMOS))
@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_vop_preset_trains_only_its_prompts(cache_dir, tmp_path, task, preset):
    module, before, grads = _one_step(cache_dir, tmp_path, task, preset)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    prefixes = EXPECTED[preset]
    stray = sorted(n for n in trainable if not n.startswith(prefixes))
    assert not stray, f"{preset}: trainable beyond its prompts: {stray}"
    for prefix in prefixes:  # every part of the preset is there and is trainable
        assert any(n.startswith(prefix) for n in trainable), f"{preset}: nothing trainable under {prefix}"
    assert not any(".clip." in f".{n}." or n.startswith("clip.") for n in trainable)
    after = dict(module.named_parameters())
    frozen_moved = [
        n for n, p in after.items() if not p.requires_grad and not torch.equal(p.detach(), before[n])
    ]
    assert not frozen_moved, frozen_moved
    # The step reached the prompts: every prompt group got a gradient and at least one tensor in it moved.
    for prefix in prefixes:
        names = [n for n in trainable if n.startswith(prefix)]
        assert any(n in grads and grads[n].abs().sum() > 0 for n in names), (
            f"{preset}/{task}: no gradient under {prefix}"
        )
        assert any(not torch.equal(after[n].detach(), before[n]) for n in names), (
            f"{preset}/{task}: {prefix} did not move"
        )
