"""A run with ``trainer.compile`` on: it trains, and its checkpoint and export load into an eager model
and back into a compiled one, predicting the same. (The text side's compilation is checked in
tests/models/test_compile.py; each compiled part costs a trace here.)"""

from __future__ import annotations

import pytest
import torch

from stop_lightning.config import load_config
from stop_lightning.model_io import load_model
from stop_lightning.models.compile import compile_model, is_compiled
from stop_lightning.pretrained import export
from stop_lightning.train import train


@pytest.mark.slow
def test_a_compiled_run_trains_and_loads_eager_and_back(cache_dir, tmp_path):
    cfg = load_config(
        "demo",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            "data.synthetic_clips_per_class=8",  # demo_run's videos, made once per session
            "data.synthetic_classes=4",
            "data.synthetic_looks=0",
            "data.batch_size=6",  # 32 clips: an uneven last batch of 2
            "model.preset=dgl",  # the cheapest preset to trace
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=0",
            "checkpoint.monitor=''",
            "trainer.limit_test_batches=1",
            "trainer.enable_progress_bar=false",
            "trainer.compile=default",
            "trainer.compile_backend=eager",  # the trace without inductor's code generation
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STOP_RUN_STAMP", "compiled")
        metrics = train(cfg)
    assert metrics and all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values())
    ckpt = tmp_path / "demo" / "compiled" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert saved and not any("_orig_mod" in key for key in saved)

    from_ckpt = load_model(ckpt, device="cpu").module  # an eager model: loading never compiles
    from_export = load_model(export(ckpt, tmp_path / "export"), device="cpu").module
    assert not is_compiled(from_ckpt.model) and not is_compiled(from_export.model)
    video = torch.randn(3, cfg.data.num_frames, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = from_ckpt(video)
        torch.testing.assert_close(from_export(video), eager)
        torch._dynamo.reset()
        compile_model(from_export.model, "default", backend="eager")  # and back into a compiled one
        torch.testing.assert_close(from_export(video), eager, rtol=1e-5, atol=1e-5)
