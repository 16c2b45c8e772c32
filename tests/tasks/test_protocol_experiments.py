"""The recognition protocols of X-CLIP / ViFi-CLIP on synthetic copies of the official layouts:
class-list files, base/novel splits and class subsets; every new experiment trains one step (or
evaluates) through the CLI; the zero-shot protocol from a K400-layout checkpoint to HMDB51, UCF101
and K600 in one command."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from stop_lightning.cli import main
from stop_lightning.config import load_config
from stop_lightning.data.build import build_manifests
from stop_lightning.data.builders.k400 import TEST_VIEWS as K400_VIEWS
from stop_lightning.data.builders.ssv2 import TEST_VIEWS as SSV2_VIEWS
from stop_lightning.data.class_lists import class_ids, read_class_list, seeded_subset
from stop_lightning.data.class_splits import base_novel_split
from stop_lightning.data.datamodules import RecognitionDataModule
from stop_lightning.data.manifest import ManifestError, read_manifest
from stop_lightning.data.registry import get_dataset
from stop_lightning.data.synthetic import write_synthetic_dataset
from stop_lightning.schema import ConfigError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DATASETS = ("hmdb51", "ucf101", "k400", "k600", "ssv2")
NOVEL = ["move up", "move left", "move down"]  # the "novel" classes of the synthetic K600 copy
TRAINED = [
    "k400",
    "ssv2",
    "hmdb51_few_shot",
    "ucf101_few_shot",
    "ssv2_few_shot",
    "k400_base_to_novel",
    "hmdb51_base_to_novel",
    "ucf101_base_to_novel",
    "ssv2_base_to_novel",
]
ZERO_SHOT = ["hmdb51_zero_shot", "ucf101_zero_shot", "k600_zero_shot"]


# ----------------------------------------------------------------------------- class-list files


def test_class_list_formats_and_matching(tmp_path):
    classes = ["brush_hair", "ride_bike", "ApplyEyeMakeup", "dyeing hair"]
    vifi = tmp_path / "base_labels.csv"
    vifi.write_text("id,name\n0,ride bike\n1,apply eye makeup\n")
    plain = tmp_path / "names.txt"
    plain.write_text("# a comment\n\nbrush_hair\n dyeing hair \n")
    assert read_class_list(vifi) == ["ride bike", "apply eye makeup"]
    assert read_class_list(plain) == ["brush_hair", "dyeing hair"]
    assert class_ids(read_class_list(vifi), classes, vifi) == [1, 2]
    assert base_novel_split(classes, str(vifi)) == ([1, 2], [0, 3])
    assert base_novel_split(classes, "alphabetical") == ([0, 2], [1, 3])  # ApplyEyeMakeup < brush_hair
    seeded = base_novel_split(classes, "seeded", seed=5)
    assert seeded[0] == sorted(random.Random(5).sample(range(4), 2))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,name\n0,dying hair\n1,ride bike\n")
    with pytest.raises(
        ManifestError,
        match=r"wrong.csv: 1 listed class\(es\) .*'dying hair' \(did you mean 'dyeing hair'\?\)",
    ):
        class_ids(read_class_list(wrong), classes, wrong)
    twice = tmp_path / "twice.txt"
    twice.write_text("ride_bike\nride_bike\n")
    with pytest.raises(ManifestError, match="listed twice"):
        read_class_list(twice)
    with pytest.raises(ConfigError, match="not alphabetical, seeded or a class-list file"):
        base_novel_split(classes, "random")


def test_seeded_subsets_are_the_seeds_draw():
    ids = list(range(0, 440, 2))  # 220 classes
    for seed in range(3):
        subset = seeded_subset(ids, 160, seed, "list")
        assert subset == sorted(random.Random(seed).sample(ids, 160)) and len(set(subset)) == 160
    assert seeded_subset(ids, 160, 0, "list") != seeded_subset(ids, 160, 1, "list")
    with pytest.raises(ManifestError, match="data.subset_size=221 but list lists 220 classes"):
        seeded_subset(ids, 221, 0, "list")


# ----------------------------------------------------------------------------- synthetic data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """paths.data_root / paths.manifest_root holding every dataset's synthetic copy, as the
    experiments' default data.video_root / data.manifest_dir expect them."""
    base = tmp_path_factory.mktemp("protocol_data")
    for name in DATASETS:
        root = write_synthetic_dataset(
            base / "data" / name / "videos", name, num_classes=4, clips_per_class=6, num_frames=8, size=32
        )
        build_manifests(name, root, None, base / "manifests" / name, progress=False)
    (base / "manifests" / "k600" / "novel_classes.csv").write_text(
        "id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(NOVEL))
    )
    return {"data_root": base / "data", "manifest_root": base / "manifests", "base": base}


def tiny(data, cache_dir, out: Path) -> list[str]:
    return [
        f"paths.data_root={data['data_root']}",
        f"paths.manifest_root={data['manifest_root']}",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "model.clip.source=tiny",
        "data.num_frames=4",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer.max_epochs=1",
        "trainer.max_steps=1",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "logger.wandb=false",
        "trainer.limit_val_batches=1",
        "data.test_clips=1",
        "data.test_crops=1",
    ]


def test_class_subset_restricts_and_renumbers(data, tmp_path):
    cfg = load_config(
        "k600_zero_shot",
        [
            f"paths.manifest_root={data['manifest_root']}",
            f"paths.data_root={data['data_root']}",
            "data.subset_size=2",
            "data.protocol_seed=1",
        ],
    )
    dm = RecognitionDataModule(cfg.data, 32, MEAN, STD)
    dm.setup("test")
    all_classes = ["move down", "move left", "move right", "move up"]  # classes.txt, by hand
    listed = sorted(all_classes.index(n) for n in NOVEL)  # [0, 1, 3]
    kept = sorted(random.Random(1).sample(listed, 2))
    assert dm.raw_class_names == [all_classes[i] for i in kept]
    test_rows = read_manifest(data["manifest_root"] / "k600" / "test.jsonl")
    expected = sorted((r.path, kept.index(r.label)) for r in test_rows if r.label in kept)
    assert sorted((r.path, r.label) for r in dm.datasets["test"].records) == expected
    assert read_class_list_text(dm.protocol_files["class_subset.csv"]) == dm.raw_class_names
    bad = data["base"] / "bad_novel.csv"
    bad.write_text("id,name\n0,move sideways\n")
    broken = RecognitionDataModule(
        load_config(
            "k600_zero_shot",
            [
                f"paths.manifest_root={data['manifest_root']}",
                f"paths.data_root={data['data_root']}",
                f"data.class_subset={bad}",
            ],
        ).data,
        32,
        MEAN,
        STD,
    )
    with pytest.raises(ManifestError, match="bad_novel.csv: 1 listed class.*'move sideways'"):
        broken.setup("test")


def read_class_list_text(text: str) -> list[str]:
    return [line.split(",", 1)[1] for line in text.splitlines()[1:]]


# ----------------------------------------------------------------------------- experiments


def test_experiment_views_and_templates_follow_the_dataset_modules():
    """The experiments state the dataset spec's templates and its multi-view defaults."""
    for name in TRAINED + ZERO_SHOT:
        cfg = load_config(name)
        assert tuple(cfg.task.templates) == get_dataset(cfg.data.dataset).templates, name
        assert cfg.data.hflip is False or get_dataset(cfg.data.dataset).hflip, name
    assert (load_config("k400").data.test_clips, load_config("k400").data.test_crops) == K400_VIEWS == (4, 3)
    assert (load_config("ssv2").data.test_clips, load_config("ssv2").data.test_crops) == SSV2_VIEWS


@pytest.mark.parametrize("experiment", TRAINED)
def test_experiment_trains_one_step(experiment, data, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    args = (
        [*tiny(data, cache_dir, tmp_path), "data.shots=2"]
        if "_" in experiment
        else tiny(data, cache_dir, tmp_path)
    )
    assert main(["train", experiment, *args]) == 0
    run = tmp_path / experiment / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    protocol = {p.name for p in (run / "protocol").glob("*")} if (run / "protocol").is_dir() else set()
    if experiment.endswith("few_shot"):
        assert protocol == {"train_fewshot_k2_seed0.jsonl"}
        assert len(read_manifest(run / "protocol" / "train_fewshot_k2_seed0.jsonl")) == 4 * 2
    if experiment.endswith("base_to_novel"):
        # Named after the split rule: a list cached next to the manifests under another rule is not reused.
        assert protocol == {
            "base_classes.csv",
            "novel_classes.csv",
            "train_base_seeded_fewshot_k2_seed0.jsonl",
        }
        base = read_class_list(run / "protocol" / "base_classes.csv")
        assert len(base) == 2 and not set(base) & set(read_class_list(run / "protocol" / "novel_classes.csv"))


@pytest.mark.parametrize("experiment", ZERO_SHOT)
def test_zero_shot_experiment_evaluates_stock_clip(
    experiment, data, cache_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    args = [a for a in tiny(data, cache_dir, tmp_path) if not a.startswith("trainer.max")]
    assert (
        main(
            [
                "eval",
                experiment,
                *args,
                "data.subset_size=2" if experiment.startswith("k600") else "data.split=2",
            ]
        )
        == 0
    )
    assert "test/top1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the zero-shot protocol


def test_zero_shot_protocol_end_to_end(data, cache_dir, tmp_path, monkeypatch, capsys):
    """Train on the K400 layout, then one command evaluates HMDB51 and UCF101 (3 splits each) and
    K600 (3 seeded subsets of the novel classes, each saved with its run) and prints one table."""
    monkeypatch.setenv("STOP_RUN_STAMP", "run")
    assert main(["train", "k400", *tiny(data, cache_dir, tmp_path)]) == 0
    ckpt = tmp_path / "k400" / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    shared = [
        a
        for a in tiny(data, cache_dir, tmp_path)
        if not a.startswith(("trainer.max", "data.num_frames", "model.clip"))
    ]
    assert main(["protocol", "zero_shot", "--ckpt", str(ckpt), *shared, "k600:data.subset_size=2"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "zero_shot" / "run"
    result = json.loads((folder / "zero_shot.json").read_text())
    assert result["runs"] == {
        "hmdb51": ["split1", "split2", "split3"],
        "ucf101": ["split1", "split2", "split3"],
        "k600": ["protocol_seed0", "protocol_seed1", "protocol_seed2"],
    }
    # Each evaluation prints its own metrics table: the protocol's numbers are those, in run order.
    printed = [float(v) for v in re.findall(r"test/top1\s+([0-9.]+)", out)]
    assert printed == pytest.approx([v for values in result["top1"].values() for v in values], abs=1e-4)
    for name, values in result["top1"].items():
        assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
        mean = 100 * sum(values) / 3
        assert f"| {name} |" in out and f"{mean:.1f} +-" in out
    listed = [1, 3, 0]  # classes.txt ids of NOVEL: move up, move left, move down
    for seed in range(3):
        run = folder / "k600" / f"protocol_seed{seed}" / "run"
        drawn = read_class_list(run / "protocol" / "class_subset.csv")
        all_classes = ["move down", "move left", "move right", "move up"]
        assert drawn == [all_classes[i] for i in sorted(random.Random(seed).sample(sorted(listed), 2))]
        assert (
            "num_frames: 4" in (run / "config.yaml").read_text()
        )  # the checkpoint's, not the experiment's 32
    assert (folder / "hmdb51" / "split3" / "run" / "confusion_matrix.csv").is_file()


def test_zero_shot_protocol_refuses_unknown_targets(tmp_path, capsys):
    assert main(["protocol", "zero_shot", "--ckpt", str(tmp_path / "x.ckpt"), "--only", "ssv2"]) == 2
    assert "--only ssv2: not a zero-shot target" in capsys.readouterr().err
    assert main(["protocol", "zero_shot", "--ckpt", str(tmp_path / "x.ckpt")]) == 2
    assert "x.ckpt does not exist" in capsys.readouterr().err
    assert main(["protocol", "zero_shot", "--ckpt", str(tmp_path / "x.ckpt"), "k700:data.split=2"]) == 2
    assert "'k700' is not a target" in capsys.readouterr().err
