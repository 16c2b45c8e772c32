"""MSRVTT: ``videos/**/video<N>.mp4`` + ``MSRVTT_data.json`` (videos and 200k sentences) +
``MSRVTT_train.9k.csv`` (column ``video_id``) + ``MSRVTT_JSFUSION_test.csv``
(``key,vid_key,video_id,sentence``: the 1k-A test set, one caption per video).

Train rows carry every caption of the video (one is sampled per visit); test rows carry the 1k-A
sentence. ``val.jsonl`` is the 1k-A test set as well (the standard protocol has no validation set).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tqdm import tqdm

from ..manifest import ClipRecord
from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import VIDEO_SUFFIXES, BuildError, BuildReport, annotation_text, find_file, read_json, write_splits

NAME = "msrvtt"  # the registered name: data.dataset, `stop-lightning manifest <name>`
DATA_FILE = "MSRVTT_data.json"  # videos and their 200k sentences
TRAIN_FILE = "MSRVTT_train.9k.csv"  # column video_id
TEST_FILE = "MSRVTT_JSFUSION_test.csv"  # key,vid_key,video_id,sentence: the 1k-A test set
ANNOTATION_DIR = "msrvtt_data"  # where the synthetic layout keeps the three files
VIDEO_DIR = "videos/all"


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(annotation_text(path), newline=""))
    header = reader.fieldnames or []
    for col in required:
        if col not in header:
            raise BuildError(f"{path}: missing column {col!r} (header: {','.join(header)})")
    return list(reader)


def _video_files(root: Path) -> dict[str, str]:
    """video id (file stem) -> path relative to root, for every video file under root."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            out.setdefault(p.stem, p.relative_to(root).as_posix())
    return out


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    places = [annotations] if annotations is not None else [root]
    found = {name: find_file(name, places) for name in (DATA_FILE, TRAIN_FILE, TEST_FILE)}
    for name, path in found.items():
        if path is None:
            raise BuildError(
                f"{name} not found under {annotations or root}; pass the folder holding it with --annotations"
            )

    what = "a JSON object with a 'sentences' list"
    data = read_json(found[DATA_FILE], what, dict)
    if "sentences" not in data:
        raise BuildError(f"{found[DATA_FILE]}: expected {what}")
    captions: dict[str, list[str]] = {}
    for i, sent in enumerate(data["sentences"]):
        try:
            captions.setdefault(str(sent["video_id"]), []).append(str(sent["caption"]).strip())
        except (KeyError, TypeError) as err:
            raise BuildError(f"{found[DATA_FILE]}: sentences[{i}] lacks 'video_id' or 'caption'") from err

    train_ids = [r["video_id"].strip() for r in _read_csv(found[TRAIN_FILE], ("video_id",))]
    test_rows = _read_csv(found[TEST_FILE], ("video_id", "sentence"))
    videos = _video_files(root)
    report = BuildReport(NAME, root, out_dir)
    missing: list[str] = []

    train: list[ClipRecord] = []
    for vid in tqdm(train_ids, desc="msrvtt train", unit="video", disable=not progress):
        if vid not in videos:
            missing.append(f"{vid}.mp4")
            continue
        if not captions.get(vid):
            raise BuildError(f"{found[DATA_FILE]}: no sentences for training video {vid}")
        train.append(ClipRecord(path=videos[vid], captions=tuple(captions[vid]), video_id=vid))
    test: list[ClipRecord] = []
    for row in tqdm(test_rows, desc="msrvtt test 1k-A", unit="video", disable=not progress):
        vid = row["video_id"].strip()
        if vid not in videos:
            missing.append(f"{vid}.mp4")
            continue
        test.append(ClipRecord(path=videos[vid], captions=(row["sentence"].strip(),), video_id=vid))
    if not train and not test:
        raise BuildError(f"none of the MSRVTT videos (video<N>.mp4) were found under {root}")
    write_splits(report, {"": {"train": train, "val": test, "test": test}}, probe, progress)
    report.missing = missing
    return report


def _is_test(j: int) -> bool:
    return j % 3 == 0


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """``root/videos/all/video<N>.mp4`` and the three annotation files in ``root/msrvtt_data/``."""
    ann_dir = root / ANNOTATION_DIR
    ann_dir.mkdir(parents=True, exist_ok=True)
    num_classes = len(clips.class_names)
    videos: list[dict] = []
    sentences: list[dict] = []
    train_ids: list[str] = []
    test_rows: list[tuple[str, str]] = []
    for j in range(clips.clips_per_class):
        for c in range(num_classes):
            idx = j * num_classes + c
            vid = f"video{idx}"
            clips.write(root / VIDEO_DIR / f"{vid}.mp4", c, j)
            is_test = _is_test(j)
            split = "test" if is_test else "train"
            videos.append({"category": c, "video_id": vid, "id": idx, "split": split})
            caps = clips.captions(c, j)
            for caption in caps:
                sentences.append({"caption": caption, "video_id": vid, "sen_id": len(sentences)})
            if is_test:
                test_rows.append((vid, caps[0]))
            else:
                train_ids.append(vid)
    data = {"info": {"description": "synthetic MSRVTT layout"}, "videos": videos, "sentences": sentences}
    (ann_dir / DATA_FILE).write_text(json.dumps(data))
    (ann_dir / TRAIN_FILE).write_text("video_id\n" + "".join(f"{v}\n" for v in train_ids))
    rows = "".join(f"ret{i},msr{v[5:]},{v},{s}\n" for i, (v, s) in enumerate(test_rows))
    (ann_dir / TEST_FILE).write_text("key,vid_key,video_id,sentence\n" + rows)


register_dataset(
    DatasetSpec(
        name=NAME,
        task="retrieval",
        description="MSR-VTT: 10k captioned videos, 9k train / 1k-A test (videos + MSRVTT_data.json, csvs)",
        build=build,
        write_synthetic=write_synthetic,
        synthetic_default=True,
        annotations_hint=f"<folder with {DATA_FILE}, {TRAIN_FILE} and {TEST_FILE}>",
        multi_caption=True,
    )
)
