"""Builders read the synthetic data written in the official layouts (split files, csv, json)."""

import json
import shutil

import pytest

from stop_lightning.data.build import build_manifests, main
from stop_lightning.data.builders import BuildError
from stop_lightning.data.builders.hmdb51 import SPLIT_DIR as HMDB_SPLIT_DIR
from stop_lightning.data.builders.ucf101 import LIST_DIR as UCF_LIST_DIR
from stop_lightning.data.manifest import read_classes, read_manifest
from stop_lightning.data.synthetic import write_synthetic_dataset


def test_hmdb51_counts_and_labels(hmdb):
    root, out = hmdb
    # Alphabetical class order, as the builder assigns indices.
    assert read_classes(out / "classes.txt") == ["move_down", "move_left", "move_right", "move_up"]
    # Per class and split: clips j % 3 == split-1 are test (2 of 6), one more is unused, 3 train.
    for split in (1, 2, 3):
        train = read_manifest(out / f"split{split}" / "train.jsonl")
        test = read_manifest(out / f"split{split}" / "test.jsonl")
        assert len(train) == 4 * 3 and len(test) == 4 * 2
        assert read_manifest(out / f"split{split}" / "val.jsonl") == test  # no val list: val = test
        assert not {r.path for r in train} & {r.path for r in test}
    # Hand-check: split 1, class move_left (label 1): test clips 0 and 3, unused clip 4.
    lines = (root / HMDB_SPLIT_DIR / "move_left_test_split1.txt").read_text().splitlines()
    assert lines[0] == "synthetic_move_left_u_nm_np1_fr_med_0.avi 2 "
    assert lines[4] == "synthetic_move_left_u_nm_np1_fr_med_4.avi 0 "
    test = read_manifest(out / "split1" / "test.jsonl")
    left = [r for r in test if r.label_name == "move_left"]
    assert [r.path for r in left] == [
        "move_left/synthetic_move_left_u_nm_np1_fr_med_0.avi",
        "move_left/synthetic_move_left_u_nm_np1_fr_med_3.avi",
    ]
    assert {r.label for r in left} == {1}
    train = read_manifest(out / "split1" / "train.jsonl")
    assert "move_left/synthetic_move_left_u_nm_np1_fr_med_4.avi" not in {r.path for r in train}


def test_ucf101_counts_labels_crlf_and_case(tmp_path):
    root = write_synthetic_dataset(
        tmp_path / "ucf", "ucf101", num_classes=3, clips_per_class=6, num_frames=4, size=16
    )
    assert b"\r\n" in (root / UCF_LIST_DIR / "classInd.txt").read_bytes()
    # UCF101's folders and lists disagree in case for some classes: the builder must cope.
    (root / "UCF-101" / "MoveUp").rename(root / "UCF-101" / "Moveup")
    report = build_manifests("ucf101", root, None, tmp_path / "out", progress=False)
    assert read_classes(tmp_path / "out" / "classes.txt") == ["MoveLeft", "MoveRight", "MoveUp"]
    # groups g01..g06, split k tests groups with g % 3 == k-1: 2 of 6 per class.
    assert report.clips["split1/train"] == 3 * 4 and report.clips["split1/test"] == 3 * 2
    assert report.missing == []
    test = read_manifest(tmp_path / "out" / "split1" / "test.jsonl")
    assert [(r.path, r.label) for r in test[:2]] == [
        ("UCF-101/MoveLeft/v_MoveLeft_g03_c01.avi", 0),
        ("UCF-101/MoveLeft/v_MoveLeft_g06_c01.avi", 0),
    ]
    up = [r for r in test if r.label == 2]
    assert up and all(r.path.startswith("UCF-101/Moveup/") and (root / r.path).is_file() for r in up)


def test_msrvtt_captions_and_splits(msrvtt):
    root, out = msrvtt
    train = read_manifest(out / "train.jsonl")
    test = read_manifest(out / "test.jsonl")
    assert len(train) == 16 and len(test) == 8  # clips j % 3 == 0 (2 of 6 looks x 4 motions) are 1k-A
    assert all(len(r.captions) == 5 for r in train)  # train rows carry every caption
    assert all(len(r.captions) == 1 for r in test)  # 1k-A: the csv sentence
    csv_rows = (root / "msrvtt_data" / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()
    key, vid_key, vid, sentence = csv_rows[1].split(",")
    assert (test[0].video_id, test[0].captions[0], test[0].path) == (vid, sentence, f"videos/all/{vid}.mp4")
    data = json.loads((root / "msrvtt_data" / "MSRVTT_data.json").read_text())
    first = train[0].video_id
    assert list(train[0].captions) == [s["caption"] for s in data["sentences"] if s["video_id"] == first]
    assert read_manifest(out / "val.jsonl") == test


def test_missing_files_are_reported_and_left_out(tmp_path, capsys):
    root = write_synthetic_dataset(
        tmp_path / "h", "hmdb51", num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    gone = root / "move_left" / "synthetic_move_left_u_nm_np1_fr_med_1.avi"
    gone.unlink()
    assert main(["hmdb51", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet", "--probe"]) == 0
    printed = capsys.readouterr().out
    assert (
        "missing video files: 1" in printed
        and "move_left/synthetic_move_left_u_nm_np1_fr_med_1.avi" in printed
    )
    assert "split1/train" in printed and "classes: 2" in printed
    rows = read_manifest(tmp_path / "out" / "split1" / "train.jsonl")
    assert all(r.num_frames == 4 and r.fps == 8.0 for r in rows)  # --probe


def test_errors_name_what_is_wrong(tmp_path, capsys):
    assert main(["hmdb51", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="testTrainMulti_7030_splits"):
        build_manifests("hmdb51", tmp_path / "empty", None, tmp_path / "o", progress=False)
    with pytest.raises(BuildError, match="MSRVTT_data.json"):
        build_manifests("msrvtt", tmp_path / "empty", None, tmp_path / "o", progress=False)
    root = write_synthetic_dataset(
        tmp_path / "u", "ucf101", num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    bad = root / UCF_LIST_DIR / "trainlist01.txt"
    listed = bad.read_text()
    bad.write_text("MoveLeft/v_MoveLeft_g01_c01.avi 7\r\n")
    with pytest.raises(BuildError, match=r"trainlist01\.txt:1"):
        build_manifests("ucf101", root, None, tmp_path / "o", progress=False)
    shutil.rmtree(root / "UCF-101")
    bad.write_text("")
    with pytest.raises(BuildError, match=r"trainlist01\.txt: is empty \(0 bytes\)"):
        build_manifests("ucf101", root, root / UCF_LIST_DIR, tmp_path / "o", progress=False)
    bad.write_text(listed)
    with pytest.raises(BuildError, match="none of the videos"):
        build_manifests("ucf101", root, root / UCF_LIST_DIR, tmp_path / "o", progress=False)


def test_probe_reports_zero_byte_and_truncated_files_and_drops_them_on_request(tmp_path, capsys):
    from stop_lightning.data.decode import VideoDecodeError, probe_video

    root = write_synthetic_dataset(
        tmp_path / "h", "hmdb51", num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    videos = sorted(root.rglob("*.avi"))
    empty, cut = videos[0], videos[-1]
    empty.write_bytes(b"")
    data = cut.read_bytes()
    for keep in range(len(data) // 2, len(data), 16):  # the shortest cut whose header still reads
        cut.write_bytes(data[:keep])
        try:
            if probe_video(cut).num_frames == 4:
                break
        except VideoDecodeError:
            continue
    assert probe_video(cut).num_frames == 4  # the header survives: only decoding finds the cut
    bad = {
        empty.relative_to(root).as_posix(): ("empty",),
        cut.relative_to(root).as_posix(): ("decod", "truncated"),
    }
    out = tmp_path / "out"
    assert main(["hmdb51", "--root", str(root), "--out", str(out), "--quiet", "--probe"]) == 1
    printed = capsys.readouterr().out
    assert "unreadable video files: 2" in printed and "--drop-unreadable" in printed
    for path, reasons in bad.items():
        line = next(line for line in printed.splitlines() if path in line)
        assert any(r in line for r in reasons), line  # each file with its reason
    kept = {r.path for r in read_manifest(out / "split1" / "train.jsonl")} | {
        r.path for r in read_manifest(out / "split1" / "test.jsonl")
    }
    assert set(bad) <= kept  # reported, not silently dropped

    dropped = tmp_path / "dropped"
    assert (
        main(
            ["hmdb51", "--root", str(root), "--out", str(dropped), "--quiet", "--probe", "--drop-unreadable"]
        )
        == 0
    )
    assert "unreadable video files: 2" in capsys.readouterr().out
    rows = [r for stage in ("train", "test") for r in read_manifest(dropped / "split1" / f"{stage}.jsonl")]
    assert not {r.path for r in rows} & set(bad) and all(r.num_frames == 4 for r in rows)
    listed = (dropped / "dropped_unreadable.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(bad)


def test_drop_unreadable_needs_probe(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["hmdb51", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--drop-unreadable"])
    assert "needs --probe" in capsys.readouterr().err
