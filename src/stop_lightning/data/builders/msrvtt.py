"""MSRVTT: ``videos/**/video<N>.mp4`` + ``MSRVTT_data.json`` (videos and 200k sentences) +
``MSRVTT_train.9k.csv`` (column ``video_id``) + ``MSRVTT_JSFUSION_test.csv``
(``key,vid_key,video_id,sentence``: the 1k-A test set, one caption per video).

Train rows carry every caption of the video (one is sampled per visit); test rows carry the 1k-A
sentence. ``val.jsonl`` is the 1k-A test set as well (the standard protocol has no validation set).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tqdm import tqdm

from ..manifest import ClipRecord
from . import VIDEO_SUFFIXES, BuildError, BuildReport, find_file, probe_records, write_split


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
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
    found = {
        name: find_file(name, places)
        for name in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv")
    }
    for name, path in found.items():
        if path is None:
            raise BuildError(
                f"{name} not found under {annotations or root}; pass the folder holding it with --annotations"
            )

    data = json.loads(found["MSRVTT_data.json"].read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "sentences" not in data:
        raise BuildError(f"{found['MSRVTT_data.json']}: expected a JSON object with a 'sentences' list")
    captions: dict[str, list[str]] = {}
    for i, sent in enumerate(data["sentences"]):
        try:
            captions.setdefault(str(sent["video_id"]), []).append(str(sent["caption"]).strip())
        except (KeyError, TypeError) as err:
            raise BuildError(
                f"{found['MSRVTT_data.json']}: sentences[{i}] lacks 'video_id' or 'caption'"
            ) from err

    train_ids = [r["video_id"].strip() for r in _read_csv(found["MSRVTT_train.9k.csv"], ("video_id",))]
    test_rows = _read_csv(found["MSRVTT_JSFUSION_test.csv"], ("video_id", "sentence"))
    videos = _video_files(root)
    report = BuildReport("msrvtt", root, out_dir)
    missing: list[str] = []

    train: list[ClipRecord] = []
    for vid in tqdm(train_ids, desc="msrvtt train", unit="video", disable=not progress):
        if vid not in videos:
            missing.append(f"{vid}.mp4")
            continue
        if not captions.get(vid):
            raise BuildError(f"{found['MSRVTT_data.json']}: no sentences for training video {vid}")
        train.append(ClipRecord(path=videos[vid], captions=tuple(captions[vid]), video_id=vid))
    test: list[ClipRecord] = []
    for row in tqdm(test_rows, desc="msrvtt test 1k-A", unit="video", disable=not progress):
        vid = row["video_id"].strip()
        if vid not in videos:
            missing.append(f"{vid}.mp4")
            continue
        test.append(ClipRecord(path=videos[vid], captions=(row["sentence"].strip(),), video_id=vid))
    if probe:
        train, test = probe_records(train, root, progress), probe_records(test, root, progress)
    write_split(report, out_dir, "", {"train": train, "val": test, "test": test})
    report.missing = missing
    if not train and not test:
        raise BuildError(f"none of the MSRVTT videos (video<N>.mp4) were found under {root}")
    return report
