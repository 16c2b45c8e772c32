"""Manifest builders on the layouts the download scripts leave: every usable Kinetics clip kept (a
header that over-counts a frame included), the scripts' annotation names read, a replacement copy
chosen whatever the folder order, and the caption counts printed after ``--drop-unreadable``."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import pytest
from test_videos import garble_packets  # tests/faults/test_videos.py

from stop_lightning.data.build import build_manifests, main
from stop_lightning.data.builders import k400, probe_file
from stop_lightning.data.decode import VideoDecodeError, VideoFile
from stop_lightning.data.frame_indices import segment_indices
from stop_lightning.data.manifest import read_manifest
from stop_lightning.data.synthetic import frame_code_frames, write_synthetic_dataset, write_video

HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]


def loader_reads(path: Path) -> bool:
    """Independent of the builder: the file exists and an evaluation clip of 8 frames decodes."""
    try:
        with VideoFile(path) as video:
            video.get_frames(segment_indices(video.info.num_frames, 8, train=False))
    except VideoDecodeError:
        return False
    return True


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def test_k600_cvdf_layout_keeps_every_usable_clip(tmp_path):
    """CVDF's Kinetics-600 as its download and extract scripts leave it: annotations/train.txt, val.txt,
    test.csv (no labels), kinetics600_holdout_test.csv; flat split folders, one class extracted into its
    own folder with macOS '._' companions. Six val clips are usable, one of them with a header that
    counts one frame more than decodes: six rows, as an independent count of the usable files says."""
    root = tmp_path / "k600"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    frames = frame_code_frames(16, 32)
    labels = ["abseiling", "mountain climber (exercise)"]
    train, val = [], []
    for c, label in enumerate(labels):
        for j in range(2):
            stem = k400.clip_name(k400.youtube_id(c, j), 10 * j, 10 * j + 10)
            write_video(root / "train" / f"{stem}.mp4", frames)
            train.append([label, k400.youtube_id(c, j), str(10 * j), str(10 * j + 10), "train"])
        for j in range(2, 5):
            stem = k400.clip_name(k400.youtube_id(c, j), 10 * j, 10 * j + 10)
            folder = root / "val" / (label if c == 1 else "")
            write_video(folder / f"{stem}.mp4", frames)
            if c == 1:
                (folder / f"._{stem}.mp4").write_bytes(b"\x00\x05\x16\x07" * 20)
            val.append([label, k400.youtube_id(c, j), str(10 * j), str(10 * j + 10), "val"])
    (root / "val" / "._mountain climber (exercise)").write_bytes(b"\x00\x05\x16\x07")
    over = root / "val" / f"{k400.clip_name(k400.youtube_id(0, 3), 30, 40)}.mp4"
    garble_packets(over, slice(-1, None))  # the header counts one frame more than decodes
    write_csv(ann / "train.txt", HEADER, train)
    write_csv(ann / "val.txt", HEADER, val)
    write_csv(ann / "test.csv", HEADER[1:], [row[1:4] + ["test"] for row in val])
    write_csv(ann / "kinetics600_holdout_test.csv", HEADER[1:], [])
    listed = {row[1] for row in val}
    usable = [
        p for p in (root / "val").rglob("*.mp4") if p.name[:11] in listed and loader_reads(p)
    ]  # the '._' companions are not listed: their names start with '._'
    assert len(usable) == 6 and over in usable
    report = build_manifests(
        "k600", root, None, tmp_path / "out", probe=True, drop_unreadable=True, progress=False
    )
    assert report.clips == {"train": 4, "val": len(usable), "test": len(usable)}
    assert report.probe is not None and not report.probe.unreadable
    rows = {r.path: r for r in read_manifest(tmp_path / "out" / "val.jsonl")}
    assert set(rows) == {p.relative_to(root).as_posix() for p in usable}
    assert rows[over.relative_to(root).as_posix()].num_frames == 15  # the frames that are there


def test_a_file_cut_short_is_still_dropped(tmp_path):
    """The slack for a header one or two frames over is not a pass for a truncated file."""
    path = write_video(tmp_path / "cut.avi", frame_code_frames(48, 32))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])
    assert isinstance(probe_file(path), str)
    assert probe_file(write_video(tmp_path / "whole.avi", frame_code_frames(48, 32))) == (48, 8.0)


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kinetics_names")
    return {
        name: write_synthetic_dataset(
            base / name, name, num_classes=3, clips_per_class=3, num_frames=4, size=16
        )
        for name in ("k400", "k600")
    }


# The published names of each stage's csv, per download script (the order: train, val, test).
SCRIPT_NAMES = {
    "k400": {
        "ActivityNet crawler, first lists": ("kinetics_train.csv", "kinetics_val.csv", "kinetics_test.csv"),
        "ActivityNet crawler": ("kinetics-400_train.csv", "kinetics-400_val.csv", "kinetics-400_test.csv"),
    },
    "k600": {
        "CVDF k600_downloader.sh": ("train.txt", "val.txt", "test.csv"),
        "ActivityNet crawler": ("kinetics-600_train.csv", "kinetics-600_val.csv", "kinetics-600_test.csv"),
    },
}


@pytest.mark.parametrize(
    ("dataset", "script"), [(d, s) for d, scripts in SCRIPT_NAMES.items() for s in scripts]
)
def test_kinetics_reads_the_download_scripts_annotation_names(kinetics, tmp_path, dataset, script):
    reference = build_manifests(dataset, kinetics[dataset], None, tmp_path / "ref", progress=False)
    root = Path(shutil.copytree(kinetics[dataset], tmp_path / dataset))
    ann = root / "annotations"
    own = sorted(ann.iterdir())  # train.csv, test.csv and val.csv or validate.csv
    for stage, new in zip(("train", "val", "test"), SCRIPT_NAMES[dataset][script]):
        old = next(
            p for p in own if p.name.startswith(stage) or (stage == "val" and p.name.startswith("valid"))
        )
        old.rename(ann / new)
    report = build_manifests(dataset, root, None, tmp_path / "out", progress=False)
    assert report.clips == reference.clips and report.missing == reference.missing
    for stage in ("train", "val", "test"):
        assert read_manifest(tmp_path / "out" / f"{stage}.jsonl") == read_manifest(
            tmp_path / "ref" / f"{stage}.jsonl"
        )


def test_kinetics_refuses_another_releases_names_in_one_line(kinetics, tmp_path, capsys):
    root = Path(shutil.copytree(kinetics["k400"], tmp_path / "k400"))
    for stage in ("train", "val", "test"):
        (root / "annotations" / f"{stage}.csv").rename(root / "annotations" / f"kinetics-600_{stage}.csv")
    assert main(["k400", "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no train.csv or train.txt or kinetics-400_train.csv or kinetics_train.csv under" in err


def reversed_walk(real_walk):
    """``os.walk`` listing every folder's entries in reverse order (another file system's order)."""

    def walk(top, *args, **kwargs):
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):
            dirnames.reverse()  # in place: the walk descends in this order
            yield dirpath, dirnames, filenames[::-1]

    return walk


@pytest.mark.parametrize("order", ["listed", "reversed"])
def test_the_replacement_copy_wins_whatever_the_folder_order(kinetics, tmp_path, monkeypatch, order):
    """CVDF's k400_extractor.sh puts fixed copies in replacement/replacement_for_corrupted_k400/: the
    manifest lists that copy, not the corrupted one, in either listing order; a clip found twice
    elsewhere is listed from its first path in sorted order."""
    if order == "reversed":
        monkeypatch.setattr(k400.os, "walk", reversed_walk(os.walk))
    root = Path(shutil.copytree(kinetics["k400"], tmp_path / "k400"))
    val = sorted((root / "val").glob("*.mp4"))
    fixed_dir = root / "replacement" / "replacement_for_corrupted_k400"
    fixed_dir.mkdir(parents=True)
    fixed = Path(shutil.copy(val[0], fixed_dir / val[0].name))
    # The corrupted copy, in a folder that sorts before replacement/ (split folders merged into one).
    (root / "clips").mkdir()
    val[0].rename(root / "clips" / val[0].name)
    (root / "clips" / val[0].name).write_bytes(b"")
    (root / "aaa_extra").mkdir()  # another copy of a clip, in a folder that sorts before val/
    twice = Path(shutil.copy(val[1], root / "aaa_extra" / val[1].name))
    build_manifests("k400", root, None, tmp_path / "out", progress=False)
    paths = {Path(r.path).name: r.path for r in read_manifest(tmp_path / "out" / "val.jsonl")}
    assert paths[val[0].name] == fixed.relative_to(root).as_posix()
    assert paths[val[1].name] == min(twice.relative_to(root).as_posix(), val[1].relative_to(root).as_posix())


# ------------------------------------------------------------------------------------ caption counts

SUMMARY_ROW = re.compile(r"^  (\S+)\s+(\d+) clips, (\d+) captions$")


@pytest.mark.parametrize("name", ["activitynet", "didemo", "vatex", "msvd", "lsmdc"])
def test_caption_counts_after_drop_unreadable_are_those_of_the_rows_kept(tmp_path, capsys, name):
    root = write_synthetic_dataset(
        tmp_path / name, name, num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    reference = build_manifests(name, root, None, tmp_path / "ref", progress=False)
    first = read_manifest(next((tmp_path / "ref").rglob("*.jsonl")))[0]
    (root / first.path).write_bytes(b"")  # one listed video unreadable
    out = tmp_path / "out"
    assert (
        main([name, "--root", str(root), "--out", str(out), "--quiet", "--probe", "--drop-unreadable"]) == 0
    )
    printed = capsys.readouterr().out
    summary = {m[1]: (int(m[2]), int(m[3])) for m in map(SUMMARY_ROW.match, printed.splitlines()) if m}
    assert set(summary) == set(reference.num_captions), printed
    for key, (clips, captions) in summary.items():
        kept = read_manifest(out / f"{key}.jsonl")
        assert (clips, captions) == (len(kept), sum(len(r.captions) for r in kept)), key
    dropped = [k for k in summary if summary[k][1] < reference.num_captions[k]]
    assert dropped, "the unreadable video's captions left at least one split"
