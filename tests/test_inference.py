"""predict / embed from a checkpoint, checkpoint size, and `eval` warnings on provenance differences."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from stop_lightning.checkpoint_io import read_checkpoint
from stop_lightning.inference import (
    checkpoint_datamodule,
    embed_main,
    format_predictions,
    predict,
    predict_each,
    predict_main,
)
from stop_lightning.model_io import load_checkpoint
from stop_lightning.provenance import collect_run_info, warn_on_differences


@pytest.fixture(scope="module")
def loaded(demo_run):
    return load_checkpoint(demo_run.ckpt)


@pytest.fixture(scope="module")
def demo_test_set(loaded):
    return checkpoint_datamodule(loaded, "test")


def test_predict_equals_the_modules_forward_and_the_runs_test_accuracy(loaded, demo_test_set, demo_run):
    dataset = demo_test_set.datasets["test"]
    paths = [str(p) for p in dataset.paths]
    predictions = predict(loaded, paths, top=2)
    assert [p.video for p in predictions] == paths
    with torch.no_grad():
        for i in (0, len(paths) - 1):
            expected = loaded.module.multiview_scores(dataset[i]["video"][None])[
                0
            ]  # the test loader's own clip
            assert torch.allclose(predictions[i].probs, expected, atol=1e-6)
    for p in predictions:
        assert len(p.top) == 2 and p.top[0][1] >= p.top[1][1]
        assert p.top[0][0] == loaded.class_names[int(p.probs.argmax())]
    # The reloaded checkpoint reproduces what training measured on the same test set.
    correct = [int(p.probs.argmax()) == r.label for p, r in zip(predictions, dataset.records)]
    assert np.mean(correct) == pytest.approx(demo_run.metrics["test/top1"])


def test_predict_cli_prints_ranked_classes(demo_run, loaded, demo_test_set, capsys):
    video = str(demo_test_set.datasets["test"].paths[0])
    assert predict_main(str(demo_run.ckpt), [video], top=3) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == video and len(lines) == 4
    ranked = [line.split(None, 1)[1].rsplit(None, 1) for line in lines[1:]]  # "  1. move left  0.4630"
    assert [name for name, _ in ranked] == [name for name, _ in predict(loaded, [video], top=3)[0].top]
    scores = [float(s) for _, s in ranked]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_predict_errors_name_the_problem(demo_run, tmp_path, capsys):
    assert predict_main(str(demo_run.ckpt), [str(tmp_path / "missing.mp4")]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    assert predict_main(str(tmp_path / "nothing.ckpt"), [str(tmp_path / "x.mp4")]) == 2
    assert "nothing.ckpt" in capsys.readouterr().err


def test_predict_refuses_a_clip_of_another_shape(demo_run, demo_test_set, tmp_path, capsys):
    from stop_lightning.models.tiny_clip import make_tiny_clip

    other = tmp_path / "clip-w32"
    make_tiny_clip(other, seed=0, width=32, layers=2, patch_size=16, image_size=64)
    video = str(demo_test_set.datasets["test"].paths[0])
    assert predict_main(str(demo_run.ckpt), [video], clip_source=str(other)) == 2
    assert "model.clip.source" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_embed_rows_are_the_models_video_features(demo_run, loaded, demo_test_set, tmp_path, suffix):
    manifest = demo_test_set.manifest_path("test")
    out = tmp_path / f"videos{suffix}"
    assert embed_main(str(demo_run.ckpt), str(manifest), str(out)) == 0
    if suffix == ".pt":
        saved = torch.load(out, weights_only=True)
        emb, paths = saved["embeddings"], saved["paths"]
        assert saved["clip"] == loaded.module.clip_source and saved["task"] == "recognition"
    else:
        saved = np.load(out)
        emb, paths = torch.from_numpy(saved["embeddings"]), list(saved["paths"])
    dataset = demo_test_set.datasets["test"]
    assert paths == [r.path for r in dataset.records]
    assert emb.shape == (len(dataset), loaded.module.model.clip.config.projection_dim)
    with torch.no_grad():
        for i in (0, len(dataset) - 1):
            expected, _ = loaded.module.encode_videos(dataset[i]["video"][None])
            assert torch.allclose(emb[i], expected[0], atol=1e-6)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(dataset)), atol=1e-5)


def test_embed_refuses_unknown_output_format(demo_run, tmp_path, capsys):
    assert embed_main(str(demo_run.ckpt), "unused.jsonl", str(tmp_path / "out.csv")) == 2
    assert ".csv" in capsys.readouterr().err and not (tmp_path / "out.csv").exists()


def test_checkpoint_holds_only_the_trainable_tensors(demo_run, loaded):
    state = read_checkpoint(demo_run.ckpt)["state_dict"]
    trainable = {n for n, p in loaded.module.named_parameters() if p.requires_grad}
    assert trainable <= set(state)
    assert not any(k.startswith("model.clip.") for k in state)
    saved_bytes = sum(t.numel() * t.element_size() for t in state.values())
    clip_bytes = sum(p.numel() * p.element_size() for p in loaded.module.model.clip.parameters())
    # The tiny CLIP is small, so its prompts are a large share (~27% of its bytes);
    # on ViT-B/32 they are a few %.
    assert saved_bytes < 0.35 * clip_bytes
    # The file is those tensors, AdamW's two moments of each and small metadata:
    # nothing frozen hides elsewhere.
    assert demo_run.ckpt.stat().st_size < 3 * saved_bytes + 100_000


def test_unchanged_conditions_raise_no_provenance_warning(demo_run, loaded, demo_test_set):
    checkpoint = read_checkpoint(demo_run.ckpt)
    now = collect_run_info(loaded.cfg, loaded.bundle, demo_test_set)
    lines = warn_on_differences(checkpoint, now)
    assert not [line for line in lines if not line.startswith("git.")], (
        lines
    )  # another engineer may edit the tree


def test_eval_warns_when_versions_or_manifests_differ(demo_run, tmp_path, monkeypatch):
    from stop_lightning.train import evaluate

    ckpt = tmp_path / "altered.ckpt"
    shutil.copy(demo_run.ckpt, ckpt)
    checkpoint = read_checkpoint(ckpt)
    info = checkpoint["stop_lightning"]["run_info"]
    info["versions"]["torch"] = "0.0.1"
    manifest = sorted(info["manifests"])[0]
    info["manifests"][manifest] = "0" * 64
    torch.save(checkpoint, ckpt)

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("stop_lightning.provenance")
    logger.addHandler(handler)
    monkeypatch.setenv("STOP_RUN_STAMP", "eval")
    try:
        cfg = demo_run.cfg
        from stop_lightning.config import load_config

        cfg = load_config(
            "demo",
            [
                f"paths.cache_dir={cfg.paths.cache_dir}",
                f"paths.output_dir={tmp_path}",
                "data.synthetic_clips_per_class=8",
                "data.synthetic_classes=4",
                "data.synthetic_looks=0",
                "trainer.enable_progress_bar=false",
            ],
        )
        metrics = evaluate(cfg, ckpt=str(ckpt))
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("versions.torch: checkpoint '0.0.1'" in w for w in warnings), warnings
    assert any(f"manifests.{manifest}: checkpoint '000000000000'" in w for w in warnings), warnings
    assert not any("clip." in w for w in warnings), warnings
    assert metrics["test/top1"] == pytest.approx(demo_run.metrics["test/top1"])


def test_embed_a_retrieval_checkpoint_and_predict_refuses_it(retrieval_run, tmp_path, capsys):
    ckpt = retrieval_run.ckpt
    loaded = load_checkpoint(ckpt)
    assert loaded.task == "retrieval"
    datamodule = checkpoint_datamodule(loaded, "test")
    dataset = datamodule.datasets["test"]  # one item per video, as retrieval evaluation sees it
    out = tmp_path / "videos.pt"
    assert embed_main(str(ckpt), str(datamodule.manifest_dir / "test.jsonl"), str(out)) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["ids"] == [r.video_id for r in dataset.records] and saved["task"] == "retrieval"
    with torch.no_grad():
        expected, _ = loaded.module.encode_videos(
            torch.stack([dataset[i]["video"] for i in range(len(dataset))])
        )
    assert torch.allclose(saved["embeddings"], expected, atol=1e-5)
    assert predict_main(str(ckpt), [str(dataset.paths[0])]) == 2
    assert "stop-lightning embed" in capsys.readouterr().err


def test_predict_reports_every_file_and_fails_if_any_failed(
    demo_run, loaded, demo_test_set, tmp_path, capsys
):
    good = [str(p) for p in demo_test_set.datasets["test"].paths[:2]]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 64)
    missing = tmp_path / "missing.mp4"
    videos = [good[0], str(corrupt), str(missing), good[1]]
    assert predict_main(str(demo_run.ckpt), videos, top=2) == 2
    captured = capsys.readouterr()
    # The good files are scored exactly as when they are predicted alone, in their order.
    assert captured.out.strip() == format_predictions(predict(loaded, good, top=2))
    errors = [
        line for line in captured.err.splitlines() if line.startswith("error:")
    ]  # not transformers' progress bars
    assert errors[0].startswith(f"error: {corrupt}: ") and errors[1] == f"error: {missing}: no such file"
    assert errors[2] == "error: 2 of 4 videos could not be read (listed above)" and len(errors) == 3
    assert "bad_video" not in captured.err and "Traceback" not in captured.err
    results = predict_each(loaded, videos, top=2)
    assert [type(r).__name__ for r in results] == ["Prediction", "FailedVideo", "FailedVideo", "Prediction"]


def test_embed_takes_a_manifest_of_paths_only(demo_run, demo_test_set, tmp_path):
    records = demo_test_set.datasets["test"].records
    paths_only = tmp_path / "paths.jsonl"
    paths_only.write_text("".join(json.dumps({"path": r.path}) + "\n" for r in records))
    full, bare = tmp_path / "full.pt", tmp_path / "bare.pt"
    assert embed_main(str(demo_run.ckpt), str(demo_test_set.manifest_path("test")), str(full)) == 0
    assert embed_main(str(demo_run.ckpt), str(paths_only), str(bare)) == 0
    a, b = torch.load(full, weights_only=True), torch.load(bare, weights_only=True)
    assert b["paths"] == [r.path for r in records] and torch.equal(a["embeddings"], b["embeddings"])


def test_eval_records_and_prints_what_it_scored(demo_run, tmp_path, capsys, monkeypatch):
    """The eval folder's run_info.json names the checkpoint and the fingerprint of the weights it
    scored (the same fingerprint as the checkpoint loaded on its own), and the console prints the folder."""
    import json

    from stop_lightning.cli import main
    from stop_lightning.model_io import load_checkpoint, model_fingerprint

    monkeypatch.setenv("STOP_RUN_STAMP", "scored")
    cfg = demo_run.cfg
    overrides = [
        f"paths.cache_dir={cfg.paths.cache_dir}",
        f"paths.output_dir={tmp_path}",
        "data.synthetic_clips_per_class=8",
        "data.synthetic_classes=4",
        "data.synthetic_looks=0",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
    ]
    assert main(["eval", "demo", "--ckpt", str(demo_run.ckpt), *overrides]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "demo" / "scored"
    assert f"eval folder: {folder}" in out
    scored = json.loads((folder / "run_info.json").read_text())["evaluated"]
    expected = model_fingerprint(load_checkpoint(demo_run.ckpt).module)
    assert scored == {
        "what": "checkpoint",
        "checkpoint": str(demo_run.ckpt.resolve()),
        "fingerprint": expected,
    }
    assert f"model {expected[:12]}" in out
