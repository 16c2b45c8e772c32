"""The five captioned retrieval sets: counts, captions and every quirk of their official layouts,
checked against expectations computed here from the annotation files the synthetic layouts wrote."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest

from stop_lightning.data.build import build_manifests, main
from stop_lightning.data.builders import BuildError, didemo, lsmdc, msvd, vatex
from stop_lightning.data.builders import activitynet as anet
from stop_lightning.data.manifest import read_manifest
from stop_lightning.data.registry import get_dataset
from stop_lightning.data.synthetic import write_synthetic_dataset

CLASSES, CLIPS = 4, 6  # 24 videos: video idx = j * CLASSES + c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (root, manifest dir, report, `stop-lightning manifest` stdout) for the five datasets."""
    base = tmp_path_factory.mktemp("retrieval_sets")
    out = {}
    for name in ("activitynet", "didemo", "vatex", "msvd", "lsmdc"):
        root = write_synthetic_dataset(
            base / name, name, num_classes=CLASSES, clips_per_class=CLIPS, num_frames=4, size=16
        )
        report = build_manifests(name, root, None, base / f"{name}_m", progress=False)
        out[name] = (root, base / f"{name}_m", report)
    return out


def rows(built, name: str, stage: str):
    return read_manifest(built[name][1] / f"{stage}.jsonl")


def by_id(records):
    return {r.video_id: r for r in records}


def test_registry_properties():
    for name in ("activitynet", "didemo"):
        assert get_dataset(name).paragraph and not get_dataset(name).multi_caption
    for name in ("vatex", "msvd", "lsmdc"):
        assert get_dataset(name).multi_caption and not get_dataset(name).paragraph
    for name in ("activitynet", "didemo", "vatex", "msvd", "lsmdc"):
        assert get_dataset(name).task == "retrieval" and get_dataset(name).buildable


# ------------------------------------------------------------------------------------ ActivityNet


def test_activitynet_paragraphs_prefix_and_dropped_ids(built):
    root, _, report = built["activitynet"]
    ann = root / anet.ANNOTATION_DIR
    for stage, ids_file, caps_file in (
        ("train", "train_ids.json", "train.json"),
        ("val", "val_ids.json", "val_1.json"),
    ):
        ids = json.loads((ann / ids_file).read_text())
        caps = json.loads((ann / caps_file).read_text(encoding="utf-8"))
        expected = {
            v: " ".join(s.strip() for s in caps[v]["sentences"])
            for v in ids
            if v in caps and v != anet.FILELESS_ID
        }
        got = by_id(rows(built, "activitynet", stage))
        assert {v: r.captions for v, r in got.items()} == {v: (p,) for v, p in expected.items()}
    # 24 videos, j % 3 == 0 -> val: j = 0, 3 -> 8 val, 16 train.
    assert report.clips == {"train": 16, "val": 8, "test": 8}
    assert rows(built, "activitynet", "test") == rows(built, "activitynet", "val")  # both are val_1
    assert report.dropped == {
        "listed without a caption": ["v_noCaption01"],
        "listed without a video file": ["v_noVideoFile"],
    }
    assert report.missing == ["v_noVideoFile"]
    # The prefix is two characters: v_v_000000004 lives in v_000000004.mp4, v__v000000005 in _v000000005.mp4.
    train = by_id(rows(built, "activitynet", "train"))
    assert train["v_v_000000004"].path == "videos/v_000000004.mp4"
    assert train["v__v000000005"].path == "videos/_v000000005.mp4"
    assert train["v_Ab000000011"].path == "videos/v_Ab000000011.avi"
    # Idx 7 (j=1, c=3) ends with the non-ASCII sentence, idx 6 (j=1, c=2) has a sentence twice: both kept.
    assert train["v_Ab000000007"].captions[0].endswith(anet.NON_ASCII.strip())
    first = json.loads((ann / "train.json").read_text(encoding="utf-8"))["v_vv000000006"]["sentences"][
        0
    ].strip()
    assert train["v_vv000000006"].captions[0].count(first) == 2
    assert report.duplicate_captions == sum(1 for idx in range(24) if idx % 5 == 1)


def test_activitynet_prefix_is_never_a_pattern():
    assert anet.without_prefix("v_v_abc") == "v_abc"
    assert anet.without_prefix("v__vx") == "_vx"
    assert anet.without_prefix("vvabc") == "vvabc"  # no "v_": nothing removed
    assert anet.without_prefix("v_") == ""


def test_activitynet_video_path_json_wins(built, tmp_path):
    root, _, _ = built["activitynet"]
    ann = root / anet.ANNOTATION_DIR
    # The STOP scripts' own file: keys without v_, a path relative to the root and an absolute one.
    (tmp_path / "ann").mkdir()
    for f in ann.iterdir():
        (tmp_path / "ann" / f.name).write_bytes(f.read_bytes())
    mapping = {
        "v_000000004": "videos/Ab000000015.avi",
        "_v000000005": str(root / "videos" / "vv000000014.avi"),
    }
    (tmp_path / "ann" / anet.VIDEO_PATH_FILE).write_text(json.dumps(mapping))
    build_manifests("activitynet", root, tmp_path / "ann", tmp_path / "out", progress=False)
    train = by_id(read_manifest(tmp_path / "out" / "train.jsonl"))
    assert train["v_v_000000004"].path == "videos/Ab000000015.avi"
    assert train["v__v000000005"].path == "videos/vv000000014.avi"
    assert train["v_Ab000000007"].path == "videos/Ab000000007.mp4"  # not in the file: searched


# ------------------------------------------------------------------------------------ DiDeMo


def test_didemo_paragraphs_forms_and_ambiguity(built):
    root, _, report = built["didemo"]
    for stage in didemo.STAGES:
        items = json.loads((root / f"{stage}_data.json").read_text(encoding="utf-8"))
        listed = (root / f"{stage}_list.txt").read_text().split()
        joined: dict[str, list[str]] = {}
        for item in items:
            joined.setdefault(item["video"], []).append(item["description"].strip())
        expected = {v: (" ".join(joined[v]),) for v in listed if v in joined and v != didemo.FILELESS_ID}
        assert {v: r.captions for v, r in by_id(rows(built, "didemo", stage)).items()} == expected
    # j = 0, 3 test; 1, 4 train; 2, 5 val: 8 videos each.
    assert report.clips == {"train": 8, "val": 8, "test": 8}
    assert report.dropped == {
        "listed without a caption": [didemo.UNDESCRIBED_ID],
        "listed without a video file": [didemo.FILELESS_ID],
    }
    every = {
        **by_id(rows(built, "didemo", "train")),
        **by_id(rows(built, "didemo", "val")),
        **by_id(rows(built, "didemo", "test")),
    }
    # idx 0: id + .mp4; idx 4: the id itself; idx 8: extension replaced;
    # idx 12-14: two files, the first form taken.
    assert every[didemo.video_id(0)].path == f"videos/{didemo.video_id(0)}.mp4"
    assert every[didemo.video_id(4)].path == f"videos/{didemo.video_id(4)}"
    assert every[didemo.video_id(8)].path == "videos/" + didemo.video_id(8).rsplit(".", 1)[0] + ".mp4"
    assert every[didemo.video_id(12)].path == f"videos/{didemo.video_id(12)}.mp4"
    ambiguous = [didemo.video_id(i) for i in (12, 13, 14)]
    notes = " ".join(report.notes)
    assert notes.startswith("3 ids match several files") and all(v in notes for v in ambiguous)
    assert (
        not (root / "videos" / didemo.video_id(1)).exists()
        and (root / "videos" / f"{didemo.video_id(1)}.mp4").is_file()
    )


def test_didemo_never_takes_another_ids_file(tmp_path):
    root = tmp_path / "d"
    (root / "videos").mkdir(parents=True)
    # "a.mov" and "a.mp4" are two videos; only a.mp4 is on disk: a.mov must not take it.
    for stage in didemo.STAGES:
        (root / f"{stage}_list.txt").write_text("a.mov\na.mp4\n")
        (root / f"{stage}_data.json").write_text(
            json.dumps(
                [
                    {"video": "a.mov", "description": "one", "times": [[0, 0]]},
                    {"video": "a.mp4", "description": "two", "times": [[0, 0]]},
                ]
            )
        )
    (root / "videos" / "a.mp4").write_bytes(b"")
    report = build_manifests("didemo", root, None, tmp_path / "o", progress=False)
    assert [(r.video_id, r.path) for r in read_manifest(tmp_path / "o" / "test.jsonl")] == [
        ("a.mp4", "videos/a.mp4")
    ]
    assert report.dropped["listed without a video file"] == ["a.mov"] * 3


# ------------------------------------------------------------------------------------ VATEX


def test_vatex_ten_captions_ids_and_split(built):
    root, _, report = built["vatex"]
    ref = json.loads((root / vatex.ANNOTATION_DIR / "ref_captions.json").read_text(encoding="utf-8"))
    for stage, list_file in (("train", "train_list.txt"), ("test", "test_list.txt")):
        listed = (root / vatex.ANNOTATION_DIR / list_file).read_text().split()
        expected = {
            v: tuple(c.strip() for c in ref[v]) for v in listed if v in ref and v != vatex.FILELESS_ID
        }
        got = by_id(rows(built, "vatex", stage))
        assert {v: r.captions for v, r in got.items()} == expected
        assert all(len(r.captions) == 10 for r in got.values())
        assert all(r.path == f"videos/{r.video_id}.mp4" for r in got.values())
    assert report.clips == {"train": 16, "val": 8, "test": 8}
    assert rows(built, "vatex", "val") == rows(built, "vatex", "test")
    assert report.dropped == {
        "listed without a caption": [vatex.UNCAPTIONED_ID],
        "listed without a video file": [vatex.FILELESS_ID],
    }
    # ids hold "_" and "-" in their YouTube part; all parse as <youtube>_<start:06d>_<end:06d>.
    assert vatex.VIDEO_ID.match(vatex.video_id(1))["youtube"] == "_Yt0001_-x1"
    assert not any("not <youtube_id>" in n for n in report.notes)
    # The synthetic FILELESS id has 10 identical captions (9 duplicates) + one per idx % 3 == 1 video.
    assert report.duplicate_captions == 9 + sum(1 for i in range(24) if i % 3 == 1)
    test = by_id(rows(built, "vatex", "test"))
    assert test[vatex.video_id(2)].captions[-1] == vatex.NON_ASCII


def test_vatex_official_files_without_ref_captions(built, tmp_path):
    root, _, _ = built["vatex"]
    ann = tmp_path / "ann"
    ann.mkdir()
    for name in ("train_list.txt", "test_list.txt", *vatex.OFFICIAL_FILES.values()):
        (ann / name).write_bytes((root / vatex.ANNOTATION_DIR / name).read_bytes())
    report = build_manifests("vatex", root, ann, tmp_path / "o", progress=False)
    assert report.clips == {"train": 16, "val": 8, "test": 8}
    # The FILELESS id is in no official file: now it lacks captions rather than a file.
    assert report.dropped["listed without a caption"] == [vatex.UNCAPTIONED_ID, vatex.FILELESS_ID]
    assert read_manifest(tmp_path / "o" / "test.jsonl") == rows(built, "vatex", "test")


# ------------------------------------------------------------------------------------ MSVD


def test_msvd_token_captions_and_lists(built):
    root, _, report = built["msvd"]
    tokens = pickle.loads((root / msvd.CAPTION_FILE).read_bytes())  # the test's own file: trusted here
    for stage in msvd.STAGES:
        listed = (root / f"{stage}_list.txt").read_text().split()
        expected = {
            v: tuple(" ".join(t) for t in tokens[v]) for v in listed if v in tokens and v != msvd.FILELESS_ID
        }
        got = by_id(rows(built, "msvd", stage))
        assert {v: r.captions for v, r in got.items()} == expected
        assert all(r.path == f"YouTubeClips/{r.video_id}.avi" for r in got.values())
    assert report.clips == {"train": 8, "val": 8, "test": 8}
    assert report.num_captions["train"] == sum(
        len(tokens[msvd.video_id(j * 4 + c)]) for j in (1, 4) for c in range(4)
    )
    assert report.dropped == {
        "listed without a caption": [msvd.UNCAPTIONED_ID],
        "listed without a video file": [msvd.FILELESS_ID],
    }
    assert (
        by_id(rows(built, "msvd", "test"))[msvd.video_id(2)].captions[-1] == "un carré rouge glisse — ça va"
    )


class Shell:
    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.parametrize(
    "payload, says",
    [
        (Shell(), "refers to (__builtin__|builtins).print"),
        ({"vid": [("a", "b")]}, "is a tuple"),
        ({"vid": [["a", 3]]}, "is a int"),
        ({1: [["a"]]}, "key 1 in the pickle is a int"),
        (["vid"], "holds a list"),
        (Counter(a=1), "refers to collections.Counter"),
    ],
)
def test_msvd_pickle_refuses_anything_but_plain_data(tmp_path, payload, says, capsys):
    root = write_synthetic_dataset(
        tmp_path / "m", "msvd", num_classes=1, clips_per_class=3, num_frames=2, size=16
    )
    (root / msvd.CAPTION_FILE).write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(BuildError, match=f"raw-captions.pkl: refused.*{says}"):
        build_manifests("msvd", root, None, tmp_path / "o", progress=False)
    assert main(["msvd", "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "this would have run" not in captured.out and captured.err.count("\n") == 1


# ------------------------------------------------------------------------------------ LSMDC


def test_lsmdc_tsv_repeats_folders_and_publictect(built):
    root, _, report = built["lsmdc"]
    for stage, name in lsmdc.FILES.items():
        expected: dict[str, list[str]] = {}
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")
            expected.setdefault(cols[0], []).append("\t".join(cols[5:]).strip())
        expected.pop(lsmdc.FILELESS_CLIP, None)
        got = by_id(rows(built, "lsmdc", stage))
        assert {v: r.captions for v, r in got.items()} == {v: tuple(c) for v, c in expected.items()}
        assert all(r.path == f"avi/{r.video_id.rsplit('_', 1)[0]}/{r.video_id}.avi" for r in got.values())
    assert "publictect" in lsmdc.FILES["test"]
    assert report.clips == {"train": 8, "val": 8, "test": 8}
    assert report.dropped == {"listed without a video file": [lsmdc.FILELESS_CLIP]}
    # Per split: 8 clips, idx % 4 != 0 gives a second row: 6 repeated rows.
    assert [n.split(":")[1].strip().split()[0] for n in report.notes] == ["6", "6", "6"]
    clip = by_id(rows(built, "lsmdc", "train"))[
        lsmdc.clip_id(5)
    ]  # idx 5: j=1, c=1, a tab in its second sentence
    assert len(clip.captions) == 2 and "\t" in clip.captions[1]
    assert lsmdc.movie_of("3001_21_JUMP_STREET_00.01.02.003-00.01.04.005") == "3001_21_JUMP_STREET"


def test_lsmdc_short_row_names_file_and_line(built, tmp_path):
    root, _, _ = built["lsmdc"]
    ann = tmp_path / "ann"
    ann.mkdir()
    for name in lsmdc.FILES.values():
        (ann / name).write_bytes((root / name).read_bytes())
    with (ann / lsmdc.FILES["val"]).open("a") as f:
        f.write("0001_American_Beauty_00.00.01.000-00.00.02.000\t1\t2\tonly four\n")
    # 8 val clips, 6 of them on two rows: the appended row is line 15.
    with pytest.raises(BuildError, match=r"LSMDC16_annos_val.csv:15: expected 6 tab-separated columns"):
        build_manifests("lsmdc", root, ann, tmp_path / "o", progress=False)


# ------------------------------------------------------------------------------------ all five


@pytest.mark.parametrize("name", ["activitynet", "didemo", "vatex", "msvd", "lsmdc"])
def test_manifest_command_reports_what_it_dropped(built, name, tmp_path, capsys):
    root = built[name][0]
    assert main([name, "--root", str(root), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name}: manifests in") and "missing video files: 1 (left out)" in out
    assert "duplicate captions within a video (kept):" in out
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("name", ["activitynet", "didemo", "vatex", "msvd", "lsmdc"])
def test_missing_annotations_is_one_clear_error(name, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="not found under|no VATEX captions"):
        build_manifests(name, tmp_path / "empty", None, tmp_path / "o", progress=False)


def test_non_ascii_round_trips_unescaped(built):
    text = (built["msvd"][1] / "test.jsonl").read_text(encoding="utf-8")
    assert "carré" in text and "\\u" not in text


def test_lsmdc_accepts_a_renamed_test_file(built, tmp_path):
    root, _, _ = built["lsmdc"]
    ann = tmp_path / "ann"
    ann.mkdir()
    for stage, name in lsmdc.FILES.items():
        target = lsmdc.TEST_FILE_CORRECTED if stage == "test" else name
        (ann / target).write_bytes((root / name).read_bytes())
    build_manifests("lsmdc", root, ann, tmp_path / "o", progress=False)
    assert read_manifest(tmp_path / "o" / "test.jsonl") == rows(built, "lsmdc", "test")
