"""What the builders share (``data/builders/__init__.py``): the one annotation-JSON reader, and the
end every recognition builder has (class list, split manifests, probing, missing files)."""

import json

import pytest

from stop_lightning.data.build import build_manifests
from stop_lightning.data.builders import BuildError, BuildReport, finish_recognition, read_json
from stop_lightning.data.builders.msrvtt import DATA_FILE as MSRVTT_DATA_FILE
from stop_lightning.data.builders.ssv2 import LABELS_FILE
from stop_lightning.data.manifest import ClipRecord, read_classes, read_manifest
from stop_lightning.data.synthetic import write_synthetic_dataset

WHAT = '{"<id>": [...]}'


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "does not exist"),
        (b"", "empty file"),
        (b" \n\t\n", "empty file"),
        (b'{"a": [1, 2', "cut short"),
        (b'{"a": "half a capt', "cut short"),
        (b'{"a": ', "cut short"),
        (
            b"{'a': 1}",
            "not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)",
        ),
        (b'{"a": 1} {"b": 2}', "not valid JSON (Extra data at line 1, column 10)"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[1, 2]", "expected " + WHAT + ", got a JSON array"),
        (b'"text"', "got a JSON string"),
        (b"null", "got a JSON null"),
    ],
)
def test_read_json_bad_files_are_one_line_naming_the_file(tmp_path, content, says):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BuildError) as err:
        read_json(path, WHAT, dict)
    msg = str(err.value)
    assert str(path) in msg and says in msg and WHAT in msg
    assert "\n" not in msg


def test_read_json_ignores_a_bom_and_checks_the_type_only_when_asked(tmp_path):
    path = tmp_path / "ann.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"v": ["caf\u00e9"]}).encode())
    assert read_json(path, WHAT, dict) == {"v": ["caf\u00e9"]}
    path.write_text("[1]")
    assert read_json(path, "anything") == [1]


def _rows(*names: str) -> list[ClipRecord]:
    return [ClipRecord(path=f"{n}.avi", label=0, label_name="c") for n in names]


def test_finish_recognition_writes_classes_then_splits_and_keeps_the_missing_list(tmp_path):
    report = BuildReport("x", tmp_path, tmp_path / "out")
    test = _rows("b")
    splits = {
        "split1": {"train": _rows("a"), "val": test, "test": test},
        "split2": {"train": [], "val": test, "test": test},  # one split without training rows is fine
    }
    finish_recognition(report, ["c"], splits, ["gone.avi"], False, False, "unused")
    out = tmp_path / "out"
    assert report.written == [
        out / "classes.txt",
        *(out / s / f"{stage}.jsonl" for s in ("split1", "split2") for stage in ("train", "val", "test")),
    ]
    assert report.clips == {
        "split1/train": 1,
        "split1/val": 1,
        "split1/test": 1,
        "split2/train": 0,
        "split2/val": 1,
        "split2/test": 1,
    }
    assert report.missing == ["gone.avi"] and report.num_classes == 1
    assert read_classes(out / "classes.txt") == ["c"]
    assert read_manifest(out / "split1" / "val.jsonl") == test


def test_finish_recognition_without_training_rows_raises_before_writing(tmp_path):
    report = BuildReport("x", tmp_path, tmp_path / "out")
    with pytest.raises(BuildError, match="^no videos under R$"):
        finish_recognition(
            report, ["c"], {"": {"train": [], "val": _rows("a")}}, [], False, False, "no videos under R"
        )
    assert not (tmp_path / "out").exists() and report.written == []


def test_finish_recognition_probes_a_list_shared_by_two_stages_once(tmp_path, monkeypatch):
    import stop_lightning.data.builders as builders

    calls = []

    def fake_probe(rows, root, progress, cache):
        calls.append(len(rows))
        return [ClipRecord(path=r.path, label=r.label, num_frames=4, fps=8.0) for r in rows]

    monkeypatch.setattr(builders, "probe_records", fake_probe)
    report = BuildReport("x", tmp_path, tmp_path / "out")
    val = _rows("b", "c")
    finish_recognition(
        report, ["c"], {"": {"train": _rows("a"), "val": val, "test": val}}, [], True, False, "-"
    )
    assert calls == [1, 2]
    assert [r.num_frames for r in read_manifest(tmp_path / "out" / "test.jsonl")] == [4, 4]


def test_a_truncated_annotation_file_stops_the_builder_with_its_name(tmp_path):
    """SSv2 and MSRVTT read their JSON through ``read_json``: the file is named, not a traceback."""
    ssv2 = write_synthetic_dataset(
        tmp_path / "s", "ssv2", num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    labels = ssv2 / LABELS_FILE
    labels.write_text(labels.read_text()[:-5])
    with pytest.raises(BuildError, match=f"{labels}: cut short"):
        build_manifests("ssv2", ssv2, None, tmp_path / "o1", progress=False)
    msrvtt = write_synthetic_dataset(
        tmp_path / "m", "msrvtt", num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    data = next(msrvtt.rglob(MSRVTT_DATA_FILE))
    data.write_text("")
    with pytest.raises(BuildError, match=f"{data}: empty file"):
        build_manifests("msrvtt", msrvtt, None, tmp_path / "o2", progress=False)


def test_msrvtt_reads_a_data_file_saved_with_a_bom(tmp_path):
    root = write_synthetic_dataset(
        tmp_path / "m", "msrvtt", num_classes=2, clips_per_class=3, num_frames=4, size=16
    )
    data = next(root.rglob(MSRVTT_DATA_FILE))
    plain = build_manifests("msrvtt", root, None, tmp_path / "plain", progress=False)
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    bom = build_manifests("msrvtt", root, None, tmp_path / "bom", progress=False)
    assert bom.clips == plain.clips
    assert (tmp_path / "bom" / "train.jsonl").read_bytes() == (
        tmp_path / "plain" / "train.jsonl"
    ).read_bytes()
