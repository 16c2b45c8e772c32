"""Kinetics-400/600 and Something-Something v2 builders on synthetic copies of their official layouts:
counts and labels against expectations written by hand, the format quirks each release has, and
SSv2's horizontal flip staying off through the DataModule and the transform it trains with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest
import torch

from stop_lightning.config import load_config
from stop_lightning.data.build import build_manifests, main
from stop_lightning.data.builders import BuildError
from stop_lightning.data.builders.k400 import clip_name, youtube_id
from stop_lightning.data.builders.ssv2 import LABELS_FILE, VIDEO_DIR, template_class
from stop_lightning.data.manifest import read_classes, read_manifest
from stop_lightning.data.synthetic import write_synthetic_dataset
from stop_lightning.tasks.factory import build_datamodule

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
NAMES = ["move left", "move right", "move up", "move down"]  # synthetic class c = NAMES[c]
CLIPS = 6  # per class: j % 3 == 0 val, 1 test, 2 train


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("recognition_layouts")
    return {
        name: write_synthetic_dataset(
            base / name, name, num_classes=4, clips_per_class=CLIPS, num_frames=8, size=32
        )
        for name in ("k400", "k600", "ssv2")
    }


def copy_of(layouts: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(layouts[name], tmp_path / name))


# ------------------------------------------------------------------------------------ Kinetics


def kinetics_expected(stage_j: tuple[int, ...]) -> dict[str, str]:
    """Clip stem -> class name for the clips j of every class (the writer's ids and times)."""
    return {clip_name(youtube_id(c, j), 10 * j, 10 * j + 10): NAMES[c] for c in range(4) for j in stage_j}


def check_kinetics(out: Path, stage: str, stage_j: tuple[int, ...]) -> None:
    classes = read_classes(out / "classes.txt")
    rows = read_manifest(out / f"{stage}.jsonl")
    expected = kinetics_expected(stage_j)
    assert len(rows) == len(expected)
    for r in rows:
        name = expected[Path(r.path).stem]
        assert r.label_name == name and r.label == classes.index(name)


@pytest.mark.parametrize("name", ["k400", "k600"])
def test_kinetics_counts_and_labels(layouts, tmp_path, name):
    out = tmp_path / "out"
    report = build_manifests(name, layouts[name], None, out, progress=False)
    # Alphabetical order of the training labels, by hand.
    assert read_classes(out / "classes.txt") == ["move down", "move left", "move right", "move up"]
    assert report.clips == {"train": 8, "val": 8, "test": 8} and report.missing == []
    check_kinetics(out, "train", (2, 5))
    check_kinetics(out, "val", (0, 3))
    if name == "k400":  # CVDF: val.csv, quoted labels, flat split folders, labelled test.csv
        check_kinetics(out, "test", (1, 4))
        assert all(r.path.count("/") == 1 for r in read_manifest(out / "train.jsonl"))
        assert '"move left"' in (layouts[name] / "annotations" / "train.csv").read_text()
    else:  # DeepMind's validate.csv, unquoted labels, per-class folders, test.csv without labels
        assert (layouts[name] / "annotations" / "validate.csv").is_file()
        assert "label" not in (layouts[name] / "annotations" / "test.csv").read_text().splitlines()[0]
        assert read_manifest(out / "test.jsonl") == read_manifest(out / "val.jsonl")
        assert {r.path.split("/")[1] for r in read_manifest(out / "train.jsonl")} == {
            n.replace(" ", "_") for n in NAMES
        }
    dashed = [r for r in read_manifest(out / "train.jsonl") if Path(r.path).name.startswith("-")]
    assert dashed, "the layout has youtube ids starting with '-'"


def test_kinetics_missing_clips_are_counted_and_left_out(layouts, tmp_path):
    root = copy_of(layouts, "k400", tmp_path)
    gone = [clip_name(youtube_id(0, 2), 20, 30), clip_name(youtube_id(3, 0), 0, 10)]  # a train and a val clip
    (root / "train" / f"{gone[0]}.mp4").unlink()
    (root / "val" / f"{gone[1]}.mp4").unlink()
    report = build_manifests("k400", root, None, tmp_path / "out", progress=False)
    assert report.clips == {"train": 7, "val": 7, "test": 8}
    assert sorted(report.missing) == sorted([f"train: {gone[0]}", f"val: {gone[1]}"])
    assert "missing video files: 2 (left out)" in report.summary()


def test_kinetics_csv_variants(tmp_path):
    """Columns in another order with is_cc, quoted labels holding parentheses, float times, a clip
    saved as .mkv in a class folder, a blank label in a labelled list."""
    root = tmp_path / "k"
    (root / "annotations").mkdir(parents=True)
    (root / "train.csv").write_text("")  # a stray empty file at the root: annotations/ wins
    ann = root / "annotations"
    (ann / "train.csv").write_text(
        "youtube_id,is_cc,label,time_end,time_start,split\n"
        '-abcdefghij,0,"tying knot (not on a tie)",20.0,10.0,train\n'
        "bbbbbbbbbbb,1,abseiling,5,0,train\n"
    )
    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,ccccccccccc,3,13,val\n"
    )
    for rel in (
        "train/-abcdefghij_000010_000020.mp4",
        "abseiling/bbbbbbbbbbb_000000_000005.mkv",
        "val/ccccccccccc_000003_000013.mp4",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    report = build_manifests("k400", root, None, tmp_path / "out", progress=False)
    assert read_classes(tmp_path / "out" / "classes.txt") == ["abseiling", "tying knot (not on a tie)"]
    rows = read_manifest(tmp_path / "out" / "train.jsonl")
    assert [(r.path, r.label) for r in rows] == [
        ("train/-abcdefghij_000010_000020.mp4", 1),
        ("abseiling/bbbbbbbbbbb_000000_000005.mkv", 0),
    ]
    assert report.clips == {"train": 2, "val": 1, "test": 1}
    (ann / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\n,ccccccccccc,3,13,val\n")
    with pytest.raises(BuildError, match=r"validate.csv:2: empty label"):
        build_manifests("k400", root, None, tmp_path / "out", progress=False)
    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nflying,ccccccccccc,3,13,val\n"
    )
    with pytest.raises(BuildError, match=r"validate.csv:2: label 'flying' is not a class of .*train.csv"):
        build_manifests("k400", root, None, tmp_path / "out", progress=False)


def test_kinetics_bad_files_end_in_one_line(tmp_path, capsys):
    root = tmp_path / "k"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text("label,id,start,end\nabseiling,x,0,10\n")
    (root / "annotations" / "val.csv").write_text("label,youtube_id,time_start,time_end\n")
    assert main(["k400", "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.csv: no column(s) youtube_id, time_start, time_end" in err
    (root / "annotations" / "val.csv").unlink()
    assert main(["k400", "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no val.csv or validate.csv or val.txt or kinetics-400_val.csv or kinetics_val.csv under" in (
        capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------ SSv2

# Labels file indices run in reverse class order; odd classes carry a [part] bracket.
SSV2_CLASSES = [
    "Moving part of something down",  # class 3
    "Moving something up",  # class 2
    "Moving part of something right",  # class 1
    "Moving something left",  # class 0
]


def test_ssv2_counts_labels_and_webm(layouts, tmp_path):
    out = tmp_path / "out"
    report = build_manifests("ssv2", layouts["ssv2"], None, out, progress=False)
    assert read_classes(out / "classes.txt") == SSV2_CLASSES
    assert report.clips == {"train": 8, "val": 8, "test": 8} and report.missing == []
    for stage, js in (("train", {2, 5}), ("val", {0, 3})):
        rows = read_manifest(out / f"{stage}.jsonl")
        assert len(rows) == 8
        for r in rows:
            vid = int(Path(r.path).stem)
            c, j = vid // 1000 - 1, vid % 1000
            assert r.path == f"{VIDEO_DIR}/{vid}.webm" and j in js
            assert r.label == 3 - c and r.label_name == SSV2_CLASSES[3 - c]
    assert read_manifest(out / "test.jsonl") == read_manifest(out / "val.jsonl")
    with av.open(str(layouts["ssv2"] / VIDEO_DIR / "1002.webm")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "vp9"
        assert sum(1 for _ in container.decode(stream)) == 8
    labels = json.loads((layouts["ssv2"] / LABELS_FILE).read_text())
    assert all(isinstance(v, str) for v in labels.values())  # indices are strings, as released


def test_ssv2_template_brackets():
    assert template_class("Pushing [something] from left to right") == "Pushing something from left to right"
    assert template_class("Putting [something] into [part] of [something in it]") == (
        "Putting something into part of something in it"
    )
    assert template_class("Poking a hole into [some substance]") == "Poking a hole into some substance"


def test_ssv2_missing_videos_and_bad_labels(layouts, tmp_path):
    root = copy_of(layouts, "ssv2", tmp_path)
    (root / VIDEO_DIR / "1002.webm").unlink()  # class 0, j = 2: a training clip
    report = build_manifests("ssv2", root, None, tmp_path / "out", progress=False)
    assert report.clips["train"] == 7 and report.missing == [f"train: {VIDEO_DIR}/1002.webm"]
    labels = json.loads((root / LABELS_FILE).read_text())
    labels["Moving something left"] = "three"
    (root / LABELS_FILE).write_text(json.dumps(labels))
    with pytest.raises(BuildError, match="index of 'Moving something left' is 'three', expected a number"):
        build_manifests("ssv2", root, None, tmp_path / "out", progress=False)


def _flips(dm, frames: torch.Tensor, draws: int = 24) -> int:
    transform = dm._transform("train")
    plain = transform(frames.clone())
    return sum(not torch.equal(transform(frames.clone()), plain) for _ in range(draws))


def test_ssv2_hflip_off_whatever_the_experiment_says(layouts, tmp_path):
    out = tmp_path / "out"
    build_manifests("ssv2", layouts["ssv2"], None, out, progress=False)
    # A frame whose left half is bright: a flip is visible; full-frame crops leave nothing else random.
    frames = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    frames[..., :16] = 255
    paths = [
        f"data.video_root={layouts['ssv2']}",
        f"data.manifest_dir={out}",
        "data.train_crop_scale=[1.0,1.0]",
    ]
    cfg = load_config("ssv2", [*paths, "data.hflip=true"])
    dm = build_datamodule(cfg.data, "recognition", 32, MEAN, STD)
    assert dm.cfg.hflip is False and _flips(dm, frames) == 0
    # The same experiment on a dataset that allows flips does flip: the check above can fail.
    allowed = load_config("ssv2", [*paths, "data.hflip=true", "data.dataset=manifest"])
    assert _flips(build_datamodule(allowed.data, "recognition", 32, MEAN, STD), frames) > 0
