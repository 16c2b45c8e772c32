"""The dataset registry: every registered layout builds, and a dataset added in ONE place (here, inside
the test) is built by the CLI, accepted by the config, loaded by the DataModule and trained on."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from stop_lightning.config import load_config
from stop_lightning.data.build import build_manifests, main
from stop_lightning.data.builders import (
    BuildError,
    BuildReport,
    read_text_lines,
    write_class_list,
    write_split,
)
from stop_lightning.data.manifest import ClipRecord, read_classes, read_manifest
from stop_lightning.data.registry import (
    DatasetSpec,
    SyntheticClips,
    UnknownDatasetError,
    dataset_names,
    get_dataset,
    register_dataset,
    synthetic_layout,
    unregister_dataset,
)
from stop_lightning.data.synthetic import write_synthetic_dataset
from stop_lightning.schema import ConfigError
from stop_lightning.tasks.factory import build_datamodule

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

# ------------------------------------------------------------------ a dataset defined in one place
# "Toy Actions": root/clips/<class>/<n>.mp4 and root/toy_labels.csv ("path,class,split").
TOY = "toy_actions"
LABELS_FILE = "toy_labels.csv"


def build_toy(
    root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool
) -> BuildReport:
    labels = (annotations or root) / LABELS_FILE
    rows = list(csv.DictReader(read_text_lines(labels)))
    classes = sorted({r["class"] for r in rows})
    report = BuildReport(TOY, root, out_dir)
    write_class_list(report, out_dir, classes)
    by_split: dict[str, list[ClipRecord]] = {"train": [], "test": []}
    for r in rows:
        if not (root / r["path"]).is_file():
            raise BuildError(f"{labels}: {r['path']} is not under {root}")
        by_split[r["split"]].append(
            ClipRecord(r["path"], label=classes.index(r["class"]), label_name=r["class"])
        )
    write_split(
        report, out_dir, "", {"train": by_split["train"], "val": by_split["test"], "test": by_split["test"]}
    )
    return report


def write_toy(root: Path, clips: SyntheticClips) -> None:
    lines = ["path,class,split"]
    for c, name in enumerate(clips.class_names):
        for j in range(clips.clips_per_class):
            rel = f"clips/{name.replace(' ', '-')}/{j}.mp4"
            clips.write(root / rel, c, j)
            lines.append(f"{rel},{name},{'test' if j % 3 == 0 else 'train'}")
    (root / LABELS_FILE).write_text("\n".join(lines) + "\n")


@pytest.fixture
def toy_registered():
    spec = register_dataset(
        DatasetSpec(
            name=TOY,
            task="recognition",
            description="a test-only dataset",
            build=build_toy,
            write_synthetic=write_toy,
            hflip=False,  # moving squares: a flip changes the class
        )
    )
    yield spec
    unregister_dataset(TOY)


def test_new_dataset_builds_loads_and_trains_one_step(toy_registered, tmp_path, cache_dir, caplog):
    root = write_synthetic_dataset(
        tmp_path / "toy", TOY, num_classes=2, clips_per_class=6, num_frames=8, size=32
    )
    out = tmp_path / "manifests"
    assert main([TOY, "--root", str(root), "--out", str(out), "--quiet"]) == 0  # `stop-lightning manifest`
    assert read_classes(out / "classes.txt") == ["move left", "move right"]
    assert len(read_manifest(out / "train.jsonl")) == 8 and len(read_manifest(out / "test.jsonl")) == 4

    from stop_lightning.train import train

    cfg = load_config(
        "demo",
        [
            f"data.dataset={TOY}",
            f"data.video_root={root}",
            f"data.manifest_dir={out}",
            "data.hflip=true",
            "data.batch_size=4",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path / 'runs'}",
            "trainer.max_epochs=1",
            "trainer.max_steps=1",
            "trainer.enable_progress_bar=false",
        ],
    )
    with caplog.at_level(logging.INFO, logger="stop_lightning"):
        metrics = train(cfg)
    assert 0.0 <= metrics["test/top1"] <= 1.0
    assert f"data.hflip=true ignored: a horizontal flip changes the class of {TOY} clips" in caplog.text
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    assert ckpt.is_file()


def test_hflip_follows_the_dataset_spec(toy_registered, hmdb, data_cfg):
    root, manifests = hmdb
    flip = data_cfg(root, manifests, hflip=True)
    assert build_datamodule(flip, "recognition", 32, MEAN, STD).cfg.hflip is True  # manifest: flip allowed
    assert (
        build_datamodule(
            data_cfg(root, manifests, hflip=True, dataset=TOY), "recognition", 32, MEAN, STD
        ).cfg.hflip
        is False
    )
    assert (
        build_datamodule(
            data_cfg(root, manifests, hflip=False, dataset=TOY), "recognition", 32, MEAN, STD
        ).cfg.hflip
        is False
    )


def test_config_choices_and_unknown_names_come_from_the_registry(toy_registered):
    assert {"hmdb51", "ucf101", "msrvtt", "manifest", "synthetic", TOY} <= set(dataset_names())
    assert TOY in dataset_names(buildable=True) and "manifest" not in dataset_names(buildable=True)
    assert load_config("demo", [f"data.dataset={TOY}"]).data.dataset == TOY
    unregister_dataset(TOY)
    with pytest.raises(ConfigError, match=f"'data.dataset' = '{TOY}'.*not one of: .*hmdb51"):
        load_config("demo", [f"data.dataset={TOY}"])
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'nope'; choose one of: .*msrvtt"):
        get_dataset("nope")
    with pytest.raises(BuildError, match="no manifest builder for dataset 'synthetic'; choose one of"):
        build_manifests("synthetic", ".", None, "o")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(DatasetSpec(name="hmdb51", task="recognition", description="another hmdb51"))


def test_synthetic_layout_per_task():
    for task in ("recognition", "retrieval"):
        spec = synthetic_layout(task)
        assert spec.task == task and spec.synthetic_default and spec.write_synthetic is not None


# Official lists that name a video the release does not hold: their synthetic layouts list one such id
# on purpose (tests/data/test_retrieval_builders.py checks which, and that it is reported).
LISTS_A_MISSING_VIDEO = {"activitynet", "didemo", "vatex", "msvd", "lsmdc"}


@pytest.mark.parametrize("name", [n for n in dataset_names() if get_dataset(n).write_synthetic is not None])
def test_every_registered_layout_builds(name, tmp_path):
    """A new dataset module is covered here without a line added: its synthetic layout must build."""
    spec = get_dataset(name)
    root = write_synthetic_dataset(
        tmp_path / name, name, num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    report = build_manifests(name, root, None, tmp_path / "out", progress=False)
    assert report.clips and all(n > 0 for n in report.clips.values())
    assert len(report.missing) == (1 if name in LISTS_A_MISSING_VIDEO else 0)
    first = sorted((tmp_path / "out").rglob("train.jsonl"))[0]
    rows = read_manifest(first)
    if spec.task == "recognition":
        assert report.num_classes == 2 and {r.label for r in rows} == {0, 1}
    else:
        assert all(r.captions for r in rows)
        assert spec.multi_caption == any(len(r.captions) > 1 for r in rows)
    if spec.splits:
        assert {f"split{k}/train" for k in spec.splits} <= set(report.clips)
