"""Relative folders of a config lie under the project root, not the current directory: a run, its
cache and its data are found from anywhere (schema.ROOTED_KEYS, README "Configuration")."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stop_lightning.cli import main
from stop_lightning.config import load_config
from stop_lightning.measured import setting_fingerprint
from stop_lightning.schema import PROJECT_ROOT_ENV, ROOTED_KEYS, portable, project_root, rooted

# The demo_run fixture's data settings (conftest.py): its synthetic clips are in the session cache.
DEMO_DATA = ("data.synthetic_clips_per_class=8", "data.synthetic_classes=4", "data.synthetic_looks=0")


def _tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (links followed) with its modification time in ns."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("runs", "{root}/runs"),
        ("./a/../b", "{root}/a/../b"),
        ("/abs/runs", "/abs/runs"),
        ("s3://bucket/shards", "s3://bucket/shards"),
        ("", ""),
    ],
)
def test_rooted_puts_relative_folders_under_the_root_and_portable_undoes_it(tmp_path, value, expected):
    want = expected.format(root=tmp_path)
    assert rooted(value, tmp_path) == want
    if value and not value.startswith("/") and "://" not in value:
        assert portable(want, tmp_path) == Path(want).relative_to(tmp_path).as_posix()
    assert portable("/elsewhere/x", tmp_path) == "/elsewhere/x"  # outside the project: kept absolute


def test_every_folder_key_is_absolute_under_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the current directory plays no part
    for name in (PROJECT_ROOT_ENV, "STOP_DATA_ROOT", "STOP_CACHE_DIR"):  # whatever the shell set
        monkeypatch.delenv(name, raising=False)
    default = load_config("hmdb51")
    root = project_root()
    assert root == Path(__file__).resolve().parents[1]  # a checkout: the repository
    for key in ROOTED_KEYS:
        value = OmegaConf.select(default, key)
        assert Path(value).is_absolute() and Path(value).is_relative_to(root), (key, value)
    assert default.data.video_root == str(root / "data" / "hmdb51" / "videos")
    k600 = load_config("k600_zero_shot")  # a key built from a folder key is absolute too
    assert k600.data.class_subset == str(root / "data_manifests" / "k600" / "novel_classes.csv")
    cfg = load_config("hmdb51", ["paths.output_dir=/abs/out", "data.shard_dir=s3://b/s"])
    assert cfg.paths.run_dir == "/abs/out/hmdb51" and cfg.data.shard_dir == "s3://b/s"

    here = setting_fingerprint(load_config("demo"))
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(tmp_path / "proj"))
    moved = load_config("hmdb51", ["paths.cache_dir=cache"])
    assert moved.paths.cache_dir == str(tmp_path / "proj" / "cache")
    assert moved.paths.run_dir == str(tmp_path / "proj" / "runs" / "hmdb51")
    # A setting's fingerprint does not depend on where the checkout is (experiments/measured/*.json).
    assert setting_fingerprint(load_config("demo")) == here


@pytest.mark.slow
def test_a_run_trained_in_one_directory_predicts_from_another(cache_dir, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / ".cache").mkdir(parents=True)
    (project / ".cache" / "stop_lightning").symlink_to(cache_dir)  # the default paths.cache_dir
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(project))
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    trained_in, predicted_in = tmp_path / "train_here", tmp_path / "predict_here"
    trained_in.mkdir()
    predicted_in.mkdir()

    monkeypatch.chdir(trained_in)
    args = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger.wandb=false"]
    assert main(["train", "demo", *DEMO_DATA, *args]) == 0
    run = project / "runs" / "demo" / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert not any(trained_in.iterdir())  # nothing written where the command ran
    saved = OmegaConf.load(run / "config.yaml")  # the run records the absolute folders it used
    assert saved.paths.cache_dir == str(project / ".cache" / "stop_lightning")
    assert saved.paths.run_dir == str(run)

    video = sorted((cache_dir / "synthetic").glob("*/videos/*/*"))[0]
    cache_before = _tree(cache_dir)
    monkeypatch.chdir(predicted_in)
    monkeypatch.delenv(PROJECT_ROOT_ENV)  # a notebook elsewhere: the checkpoint's folders are absolute
    capsys.readouterr()
    assert main(["predict", "--ckpt", str(ckpt), "--top", "2", str(video)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(video)
    assert not any(predicted_in.iterdir())  # no tiny CLIP or clips regenerated here
    assert _tree(cache_dir) == cache_before  # the run's own cache was read, not rebuilt


def test_a_run_or_checkpoint_saved_with_relative_folders_resumes_and_loads(demo_run, cache_dir, tmp_path):
    """Runs and checkpoints written before folders were absolute hold relative ones: read under the root."""
    import torch

    from stop_lightning.checkpoint_io import read_checkpoint
    from stop_lightning.model_io import load_checkpoint
    from stop_lightning.run_folder import check_resume_config
    from stop_lightning.schema import portable_paths

    def relative(cfg):
        return portable_paths(OmegaConf.create(OmegaConf.to_container(cfg)), project_root())

    cfg = load_config("demo")
    saved = relative(cfg)
    assert saved.paths.output_dir == "runs" and saved.data.manifest_dir == "data_manifests/synthetic"
    assert check_resume_config(saved, cfg) == []  # no folder counts as changed

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PROJECT_ROOT_ENV, str(cache_dir.parent))  # the session cache lies under this root
        checkpoint = read_checkpoint(demo_run.ckpt)
        checkpoint["hyper_parameters"]["cfg"] = OmegaConf.to_container(relative(demo_run.cfg))
        assert checkpoint["hyper_parameters"]["cfg"]["paths"]["cache_dir"] == cache_dir.name
        old = tmp_path / "old.ckpt"
        torch.save(checkpoint, old)
        assert load_checkpoint(old, device="cpu").cfg.paths.cache_dir == str(cache_dir)
