"""VATEX (several captions per video): the retrieval split of the STOP/CLIP4Clip releases,
``train_list.txt`` and ``test_list.txt`` (one video id per line; the test set is half of the official
validation set) with ``ref_captions.json`` (``{video_id: [captions]}``), and the official files
``vatex_training_v1.0.json`` / ``vatex_validation_v1.0.json`` (lists of ``{"videoID", "enCap",
"chCap"}``, exactly 10 English captions per video).

- Captions: ``ref_captions.json`` when present, else ``enCap`` of the official files (``chCap`` is
  not used). A video with other than 10 English captions is kept and counted.
- Without the split lists, train is the official training file and test its validation file (all
  3000 videos, not the papers' 1500: the summary says so).
- Ids are ``<youtube_id>_<start:06d>_<end:06d>`` (YouTube ids hold ``_`` and ``-``: split from the
  right); files ``<id>.<ext>`` anywhere under ``--root``. Ids of another form are kept and counted.
- val = test (the retrieval split has no validation set, as MSRVTT's 1k-A protocol).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import VIDEO_SUFFIXES, BuildError, BuildReport, read_json, read_text_lines
from .captioned import (
    CaptionReport,
    VideoFiles,
    caption_rows,
    clean_captions,
    finish,
    optional,
    write_clip_as,
    write_json,
)

NAME = "vatex"
LIST_FILES = {"train": "train_list.txt", "test": "test_list.txt"}
CAPTION_FILE = "ref_captions.json"  # {video_id: [captions]}
OFFICIAL_FILES = {"train": "vatex_training_v1.0.json", "test": "vatex_validation_v1.0.json"}
CAPTIONS_PER_VIDEO = 10  # English captions per video in the official files
VIDEO_ID = re.compile(r"^(?P<youtube>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")
ANNOTATION_DIR = "annotations"
VIDEO_DIR = "videos"


def _official(report: CaptionReport, path: Path) -> dict[str, list[str]]:
    out = {}
    for i, item in enumerate(read_json(path, 'a list of {"videoID", "enCap", ...}', list)):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("videoID"), str)
            or not isinstance(item.get("enCap"), list)
        ):
            raise BuildError(f"{path}: item {i} lacks a 'videoID' string or an 'enCap' list")
        out[item["videoID"]] = [str(c) for c in item["enCap"]]
    return out


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    report = CaptionReport(NAME, root, out_dir)
    files = VideoFiles(root)
    ref = optional(CAPTION_FILE, root, annotations)
    official = {stage: optional(name, root, annotations) for stage, name in OFFICIAL_FILES.items()}
    raw: dict[str, list[str]] = {}
    if ref is not None:
        for vid, caps in read_json(ref, '{"<video_id>": ["caption", ...]}', dict).items():
            if not isinstance(caps, list):
                raise BuildError(
                    f"{ref}: {vid!r} maps to a {type(caps).__name__}, expected a list of captions"
                )
            raw[vid] = [str(c) for c in caps]
    else:
        for path in official.values():
            if path is not None:
                raw.update(_official(report, path))
    if not raw:
        raise BuildError(
            f"no VATEX captions under {annotations or root}: pass the folder with {CAPTION_FILE} "
            f"(or {' and '.join(OFFICIAL_FILES.values())}) with --annotations"
        )
    odd_counts = sum(len(c) != CAPTIONS_PER_VIDEO for c in raw.values())
    if odd_counts:
        report.notes.append(
            f"{odd_counts} videos have other than {CAPTIONS_PER_VIDEO} English captions (kept)"
        )
    captions = {vid: clean_captions(report, caps) for vid, caps in raw.items()}

    split_ids: dict[str, list[str]] = {}
    for stage, name in LIST_FILES.items():
        listed = optional(name, root, annotations)
        if listed is not None:
            split_ids[stage] = read_text_lines(listed)
        elif official[stage] is not None:
            split_ids[stage] = list(_official(CaptionReport(NAME, root, out_dir), official[stage]))
            report.notes.append(
                f"no {name}: {stage} is every video of {OFFICIAL_FILES[stage]} (not the papers' split)"
            )
        else:
            raise BuildError(
                f"{name} not found under {annotations or root}; pass the folder holding it with --annotations"
            )
    odd_ids = [v for ids in split_ids.values() for v in ids if not VIDEO_ID.match(v)]
    if odd_ids:
        report.notes.append(
            f"{len(odd_ids)} ids are not <youtube_id>_<start:06d>_<end:06d> (kept), e.g. {odd_ids[0]}"
        )

    def locate(video_id: str) -> str | None:
        hits = files.stem(video_id, VIDEO_SUFFIXES)
        return hits[0] if hits else None

    stages = {stage: caption_rows(report, ids, captions, locate) for stage, ids in split_ids.items()}
    stages = {"train": stages["train"], "val": stages["test"], "test": stages["test"]}
    return finish(report, stages, probe, progress)


# ---------------------------------------------------------------------------------------------
# Synthetic layout
# ---------------------------------------------------------------------------------------------

UNCAPTIONED_ID = "noCaption-_1_000000_000010"  # in train_list.txt, not in ref_captions.json
FILELESS_ID = "noVideo_X-1_000020_000030"  # in test_list.txt and ref_captions.json, no file
NON_ASCII = "ein Quadrat bewegt sich — 一个方块在移动"


def video_id(idx: int) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>``; the YouTube id (11 characters) holds ``_`` and ``-``."""
    youtube = f"{'a_-'[idx % 3]}Yt{idx:04d}_-x{idx % 10}"
    return f"{youtube}_{idx * 10:06d}_{idx * 10 + 10:06d}"


def ten_captions(clips: SyntheticClips, c: int, j: int, idx: int) -> list[str]:
    five = clips.captions(c, j)
    caps = five + [f"{s}, seen from afar" for s in five]
    if idx % 3 == 1:
        caps[-1] = caps[0]  # a caption written twice
    if idx % 3 == 2:
        caps[-1] = NON_ASCII
    return caps


def is_test(j: int) -> bool:
    return j % 3 == 0


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """Videos under ``root/videos``; the split lists, ``ref_captions.json`` and the official files in
    ``root/annotations``."""
    n = len(clips.class_names)
    ref: dict[str, list[str]] = {}
    lists: dict[str, list[str]] = {"train": [], "test": []}
    official: dict[str, list[dict]] = {"train": [], "test": []}
    for j in range(clips.clips_per_class):
        for c in range(n):
            idx = j * n + c
            vid = video_id(idx)
            write_clip_as(clips, root / VIDEO_DIR / f"{vid}.mp4", c, j)
            caps = ten_captions(clips, c, j, idx)
            ref[vid] = caps
            stage = "test" if is_test(j) else "train"
            lists[stage].append(vid)
            official[stage].append({"videoID": vid, "enCap": caps, "chCap": [f"方块 {k}" for k in range(10)]})
    lists["train"].append(UNCAPTIONED_ID)
    lists["test"].append(FILELESS_ID)
    ref[FILELESS_ID] = ["a square"] * 10
    ann = root / ANNOTATION_DIR
    write_json(ann / CAPTION_FILE, ref)
    for stage, ids in lists.items():
        (ann / LIST_FILES[stage]).write_text("".join(f"{v}\n" for v in ids), encoding="utf-8")
        write_json(ann / OFFICIAL_FILES[stage], official[stage])


register_dataset(
    DatasetSpec(
        name=NAME,
        task="retrieval",
        description=(
            "VATEX: 10 captions per video, the retrieval split "
            "(train_list.txt, test_list.txt, ref_captions.json)"
        ),
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint=f"<folder with {LIST_FILES['train']}, {LIST_FILES['test']} and {CAPTION_FILE}>",
        multi_caption=True,
    )
)
