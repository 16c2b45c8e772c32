import json
from pathlib import Path

import pytest

from stop_lightning.data.manifest import (
    ClipRecord,
    ManifestError,
    check_labels,
    read_classes,
    read_manifest,
    readable_class_name,
    resolve_video_path,
    write_classes,
    write_manifest,
)


def _write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_round_trip(tmp_path):
    rows = [
        ClipRecord("a/x.avi", label=0, label_name="brush_hair", num_frames=30, fps=25.0),
        ClipRecord("videos/v1.mp4", captions=("a man sings", "a song"), video_id="video1"),
    ]
    path = write_manifest(tmp_path / "m" / "train.jsonl", rows)
    assert read_manifest(path) == rows
    assert json.loads(path.read_text().splitlines()[0]) == {
        "path": "a/x.avi",
        "label": 0,
        "label_name": "brush_hair",
        "num_frames": 30,
        "fps": 25.0,
    }


def test_start_and_end_round_trip_and_rows_without_them_are_written_as_before(tmp_path):
    spans = [
        ClipRecord("v.mp4", captions=("a man jumps",), start=3.5, end=7.25),
        ClipRecord("v.mp4", captions=("he lands",), start=7.25),
        ClipRecord("w.mp4", label=1, end=2),
    ]
    path = write_manifest(tmp_path / "spans.jsonl", spans)
    assert read_manifest(path) == spans
    assert [json.loads(line).get("start") for line in path.read_text().splitlines()] == [3.5, 7.25, None]
    assert isinstance(read_manifest(path)[2].end, float)
    plain = [ClipRecord("a/x.avi", label=0, num_frames=30, fps=25.0)]
    text = write_manifest(tmp_path / "plain.jsonl", plain).read_text()
    assert text == '{"path": "a/x.avi", "label": 0, "num_frames": 30, "fps": 25.0}\n'


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"path": "a.avi", "label": 0, "start": -0.5}, "'start' = -0.5 is not a non-negative number"),
        ({"path": "a.avi", "label": 0, "start": "3"}, "'start'"),
        ({"path": "a.avi", "label": 0, "start": True}, "'start'"),
        ({"path": "a.avi", "label": 0, "end": 0}, "'end' = 0 is not a positive number"),
        ({"path": "a.avi", "label": 0, "end": float("inf")}, "'end'"),
        ({"path": "a.avi", "label": 0, "start": float("nan")}, "'start'"),
        ({"path": "a.avi", "label": 0, "start": 4.0, "end": 4.0}, "'end' = 4.0 is not after 'start' = 4.0"),
        ({"path": "a.avi", "label": 0, "start": 5, "end": 2.5}, "'end' = 2.5 is not after 'start' = 5"),
    ],
)
def test_bad_spans_name_file_line_and_field(tmp_path, row, field):
    path = _write_lines(tmp_path / "bad.jsonl", [{"path": "ok.avi", "label": 0, "start": 1, "end": 2}, row])
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}:2: field ") and field in str(err.value)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"label": 1}, "'path'"),
        ({"path": "a.avi", "label": "3"}, "'label'"),
        ({"path": "a.avi", "label": -1}, "'label'"),
        ({"path": "a.avi", "label": True}, "'label'"),
        ({"path": "a.avi", "captions": ["ok", ""]}, "'captions'"),
        ({"path": "a.avi", "label": 0, "fps": 0}, "'fps'"),
        ({"path": "a.avi", "label": 0, "num_frames": 2.5}, "'num_frames'"),
        ({"path": "a.avi", "label": 0, "colour": "red"}, "'colour'"),
        ({"path": "a.avi"}, "'label' or 'captions'"),
        ({"path": 7, "label": 0}, "'path'"),
    ],
)
def test_malformed_row_names_file_line_and_field(tmp_path, row, field):
    path = _write_lines(tmp_path / "bad.jsonl", [{"path": "ok.avi", "label": 0}, "", row])
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert f"{path}:3:" in msg  # the blank line still counts
    assert field in msg


def test_invalid_json_names_line(tmp_path):
    path = _write_lines(
        tmp_path / "bad.jsonl", [{"path": "ok.avi", "label": 0}, '{"path": "x.avi", label: 1}']
    )
    with pytest.raises(ManifestError, match=r"bad\.jsonl:2: not valid JSON"):
        read_manifest(path)


@pytest.mark.parametrize("path", ["../secret.avi", "a/../../b.avi", "/etc/passwd", "C:/videos/a.avi"])
def test_paths_escaping_the_root_are_refused(tmp_path, path):
    manifest = _write_lines(tmp_path / "m.jsonl", [{"path": path, "label": 0}])
    with pytest.raises(ManifestError, match="'path'") as err:
        read_manifest(manifest)
    assert "m.jsonl:1" in str(err.value)
    with pytest.raises(ManifestError):
        resolve_video_path(tmp_path, path)


def test_symlink_out_of_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "v.avi").write_bytes(b"x")
    (root / "link").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside data.video_root"):
        resolve_video_path(root, "link/v.avi")
    assert resolve_video_path(root, "sub/v.avi") == (root / "sub" / "v.avi").resolve()


@pytest.mark.parametrize(
    "path",
    [
        "link/v.avi",
        "../videos_private/v.avi",
        "..\\videos_private\\v.avi",
        "sub\\..\\..\\videos_private\\v.avi",
    ],
)
def test_a_sibling_folder_sharing_the_roots_prefix_is_outside(tmp_path, path):
    """``videos_private`` starts with the text ``videos`` but is not inside it (a string-prefix
    check would accept it); backslash paths climb out like slash paths."""
    root, sibling = tmp_path / "videos", tmp_path / "videos_private"
    root.mkdir()
    sibling.mkdir()
    (sibling / "v.avi").write_bytes(b"x")
    (root / "link").symlink_to(sibling)
    with pytest.raises(ManifestError):
        resolve_video_path(root, path)
    assert resolve_video_path(root, "videos_private_not/v.avi").parent == root / "videos_private_not"


def test_classes_and_label_checks(tmp_path):
    path = write_classes(tmp_path / "classes.txt", ["brush_hair", "cartwheel"])
    names = read_classes(path)
    assert names == ["brush_hair", "cartwheel"]
    check_labels([ClipRecord("a.avi", label=1, label_name="cartwheel")], names, "m")
    with pytest.raises(ManifestError, match="2 classes"):
        check_labels([ClipRecord("a.avi", label=2)], names, "m")
    with pytest.raises(ManifestError, match="'label_name'"):
        check_labels([ClipRecord("a.avi", label=0, label_name="cartwheel")], names, "m")
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ManifestError, match="twice"):
        read_classes(tmp_path / "dup.txt")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("brush_hair", "brush hair"),
        ("ApplyEyeMakeup", "apply eye makeup"),
        ("YoYo", "yo yo"),
        ("PlayingDaf", "playing daf"),
        ("Skijet", "skijet"),
        ("shoot_ball", "shoot ball"),
        ("TVShow", "tv show"),
        ("move up left slowly", "move up left slowly"),
    ],
)
def test_readable_class_name(raw, words):
    assert readable_class_name(raw) == words
