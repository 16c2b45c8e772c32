"""`stop-lightning export` and `from_pretrained`: the folder reloads to the same predictions
as the checkpoint."""

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from stop_lightning.checkpoint_io import read_checkpoint
from stop_lightning.cli import main
from stop_lightning.inference import checkpoint_datamodule
from stop_lightning.model_io import (
    EXPORT_FILES,
    ExportError,
    from_pretrained,
    load_checkpoint,
    model_fingerprint,
)
from stop_lightning.pretrained import export
from stop_lightning.tasks.base import CheckpointMismatchError


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "demo-stop"
    assert main(["export", str(demo_run.ckpt), str(out)]) == 0
    return out


def test_export_folder_holds_the_trained_tensors_config_and_card(demo_run, exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted(EXPORT_FILES)
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    checkpoint = read_checkpoint(demo_run.ckpt)
    tensors = load_file(str(exported / "model.safetensors"))
    assert set(tensors) == set(checkpoint["state_dict"])
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(tensors[name], value), name
    meta = json.loads((exported / "stop_lightning.json").read_text())
    assert meta["clip"] == checkpoint["stop_lightning"]["clip"]
    assert meta["run_info"] == checkpoint["stop_lightning"]["run_info"]
    assert meta["hparams"]["class_names"] == checkpoint["hyper_parameters"]["class_names"]
    # Metrics: the last value of each test/ column of the run's metrics.csv, read here independently.
    with (demo_run.run_dir / "csv" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    top1 = [float(r["test/top1"]) for r in rows if r.get("test/top1")][-1]
    assert meta["metrics"]["test/top1"] == pytest.approx(top1) == pytest.approx(demo_run.metrics["test/top1"])
    card = (exported / "README.md").read_text()
    assert f"| `test/top1` | {top1:.4f} |" in card and "stop-lightning export" in card
    assert "synthetic" in card and "recognition" in card and meta["fingerprint"][:16] in card


def test_from_pretrained_predicts_what_the_checkpoint_predicts(demo_run, exported):
    original = load_checkpoint(demo_run.ckpt, device="cpu")
    rebuilt = from_pretrained(exported, device="cpu")
    assert type(rebuilt.module) is type(original.module) and rebuilt.class_names == original.class_names
    assert model_fingerprint(rebuilt.module) == model_fingerprint(original.module)
    test_set = checkpoint_datamodule(original, "test").datasets["test"]
    video = torch.stack([test_set[i]["video"] for i in range(4)])  # [4, (V,) T, 3, S, S]
    with torch.no_grad():
        a, b = original.module.multiview_scores(video), rebuilt.module.multiview_scores(video)
        ea, _ = original.module.encode_videos(video.flatten(0, 1) if video.ndim == 6 else video)
        eb, _ = rebuilt.module.encode_videos(video.flatten(0, 1) if video.ndim == 6 else video)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(ea, eb, atol=1e-6)
    # Not a vacuous comparison: the trained prompts change the output against a fresh module.
    fresh = type(original.module)(original.cfg, original.class_names, bundle=original.bundle).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh.multiview_scores(video), a, atol=1e-4)


def test_from_pretrained_refuses_a_clip_of_another_shape(exported, tmp_path):
    from stop_lightning.models.tiny_clip import make_tiny_clip

    other = tmp_path / "clip-w32"
    make_tiny_clip(other, seed=0, width=32, layers=2, patch_size=16, image_size=64)
    with pytest.raises(CheckpointMismatchError, match="model.clip.source"):
        from_pretrained(exported, clip_source=str(other))


def test_export_refuses_a_non_empty_folder_and_from_pretrained_a_partial_one(
    demo_run, exported, tmp_path, capsys
):
    assert main(["export", str(demo_run.ckpt), str(exported)]) == 2
    assert "already exists" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "stop_lightning.json").write_text("{}")
    with pytest.raises(ExportError, match="model.safetensors is missing"):
        from_pretrained(partial)
    torn = tmp_path / "torn"
    shutil.copytree(exported, torn)
    (torn / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ExportError, match=r"model\.safetensors: cut short"):
        from_pretrained(torn)


def test_predict_takes_an_export_folder(demo_run, exported, capsys):
    loaded = load_checkpoint(demo_run.ckpt)
    video = str(checkpoint_datamodule(loaded, "test").datasets["test"].paths[0])
    assert main(["predict", "--ckpt", str(demo_run.ckpt), video]) == 0
    from_ckpt = capsys.readouterr().out
    assert main(["predict", "--ckpt", str(exported), video]) == 0
    assert capsys.readouterr().out == from_ckpt


def test_export_into_a_new_folder_is_atomic(demo_run, tmp_path, monkeypatch):
    import stop_lightning.pretrained as pretrained

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pretrained, "model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        export(demo_run.ckpt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temp folder is left


def test_export_is_readable_by_colleagues_and_its_card_says_which_weights_were_tested(demo_run, exported):
    """A shared filesystem: the folder and its files get the modes the umask allows (not mkdtemp's
    private 0700); the card names no local path and says what `checkpoint.test` chose."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(exported.stat().st_mode) == 0o777 & ~umask
    for item in exported.iterdir():
        assert stat.S_IMODE(item.stat().st_mode) == 0o666 & ~umask, item
    card = (exported / "README.md").read_text()
    assert str(demo_run.ckpt.resolve().parent) not in card and "<run folder>/checkpoints/last.ckpt" in card
    tested = demo_run.cfg.checkpoint.test
    assert ("`checkpoint.test=last`" in card) == (tested == "last")
    assert ("the best by `checkpoint.monitor`" in card) == (tested == "best")


def test_eval_scores_an_export_folder_as_it_scores_its_checkpoint(
    demo_run, exported, cache_dir, tmp_path, capsys
):
    """`eval --ckpt` takes an export folder (its help says so): the same metrics and the same model
    fingerprint as the checkpoint it was exported from."""
    data = ["data.synthetic_clips_per_class=8", "data.synthetic_classes=4", "data.synthetic_looks=0"]
    seen = []
    for ckpt, name in ((demo_run.ckpt, "ckpt"), (exported, "export")):
        capsys.readouterr()
        args = ["eval", "demo", "--ckpt", str(ckpt), f"paths.cache_dir={cache_dir}"]
        args += [f"paths.output_dir={tmp_path / name}", "logger.wandb=false"]
        args += ["trainer.enable_progress_bar=false"]
        assert main(args + data) == 0
        metrics = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test/")]
        (info,) = (tmp_path / name).rglob("run_info.json")
        seen.append((metrics, json.loads(info.read_text())["evaluated"]["fingerprint"]))
    assert seen[0][0] and seen[0] == seen[1]
