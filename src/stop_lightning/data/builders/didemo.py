"""DiDeMo (paragraph-to-video retrieval): the official ``{train,val,test}_data.json`` (a list of
``{"video", "description", "times", ...}``) and the split lists ``{train,val,test}_list.txt`` of the
retrieval papers (one video id per line, from the collaborative-experts release).

- All descriptions of a video are joined, in file order, into one paragraph. ``times`` (5-second
  chunk indices from several annotators, not seconds) are not used: the query is the whole
  paragraph, the video the whole video.
- A video id keeps its original extension (``<name>.mov``, ``.3gp``, ``.m4v``, ...). Downloaded
  files come as the id itself, as the id plus ``.mp4`` (``<name>.3gp.mp4``) or with the extension
  replaced (``<name>.mp4``); the builder tries these :data:`FORMS` in this order, never takes a name
  that is another listed id, and reports an id that several files match (the first form is used).
- Ids listed without a description or without a file are left out and counted.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import VIDEO_SUFFIXES, BuildError, BuildReport, read_json, read_text_lines
from .captioned import (
    CaptionReport,
    VideoFiles,
    caption_rows,
    clean_captions,
    finish,
    paragraph,
    require,
    write_clip_as,
    write_json,
)

NAME = "didemo"
STAGES = ("train", "val", "test")
DATA_FILE = "{stage}_data.json"
LIST_FILE = "{stage}_list.txt"
FORMS = ("the id itself", "the id + a video extension", "the id with its extension replaced")
VIDEO_DIR = "videos"
HINT = "pass the folder with {train,val,test}_data.json and {train,val,test}_list.txt with --annotations"


def candidates(video_id: str) -> list[str]:
    """File names that may hold ``video_id``, in the order of :data:`FORMS`."""
    stem = os.path.splitext(video_id)[0]
    return [
        video_id,
        *(video_id + s for s in VIDEO_SUFFIXES),
        *(stem + s for s in VIDEO_SUFFIXES if stem + s != video_id),
    ]


def _descriptions(report: CaptionReport, path: Path) -> dict[str, list[str]]:
    items = read_json(path, 'a list of {"video", "description", "times", ...}', list)
    texts: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("video"), str)
            or not isinstance(item.get("description"), str)
        ):
            raise BuildError(f"{path}: item {i} lacks a 'video' or 'description' string")
        texts.setdefault(item["video"], []).append(item["description"])
    out = {}
    for vid, sentences in texts.items():
        text = paragraph(clean_captions(report, sentences))
        if text:
            out[vid] = [text]
    return out


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    report = CaptionReport(NAME, root, out_dir)
    files = VideoFiles(root)
    split_ids = {
        stage: read_text_lines(require(LIST_FILE.format(stage=stage), root, annotations, HINT))
        for stage in STAGES
    }
    every_id = {vid for ids in split_ids.values() for vid in ids}
    ambiguous = []

    def locate(video_id: str) -> str | None:
        hits = []
        for name in candidates(video_id):
            if name != video_id and name in every_id:
                continue  # that file is another video
            hits.extend(p for p in files.by_name.get(name, []) if p not in hits)
        if len(hits) > 1:
            ambiguous.append(f"{video_id} ({', '.join(hits)})")
        return hits[0] if hits else None

    stages = {}
    for stage in STAGES:
        captions = _descriptions(report, require(DATA_FILE.format(stage=stage), root, annotations, HINT))
        stages[stage] = caption_rows(report, split_ids[stage], captions, locate)
    if ambiguous:
        report.notes.append(
            f"{len(ambiguous)} ids match several files (took the first of: {'; '.join(FORMS)}): "
            + ", ".join(ambiguous[:5])
        )
    return finish(report, stages, probe, progress)


# ---------------------------------------------------------------------------------------------
# Synthetic layout
# ---------------------------------------------------------------------------------------------

EXTENSIONS = (".mov", ".3gp", ".m4v", ".mp4")  # original extensions the ids carry
UNDESCRIBED_ID = "90000000@N00_1_nodescription.mov"  # in train_list.txt, not in train_data.json
FILELESS_ID = "90000000@N00_2_nofile.3gp"  # in test_list.txt and test_data.json, no file
NON_ASCII = "la caméra suit le carré — ¿ves el cuadrado?"


def video_id(idx: int) -> str:
    """Flickr-style ids, ``<user>_<photo>_<secret>.<original extension>``."""
    return f"{10000000 + idx}@N0{idx % 8}_{5000000000 + idx}_{idx:010x}{EXTENSIONS[idx % len(EXTENSIONS)]}"


def file_names(idx: int) -> list[str]:
    """How video ``idx`` was downloaded: the id + ``.mp4``, the id itself, the extension replaced, or
    both of the first and the last (an ambiguous id)."""
    vid = video_id(idx)
    stem = os.path.splitext(vid)[0]
    form = (idx // len(EXTENSIONS)) % 4
    if vid.endswith(".mp4"):  # already an mp4: only the id itself, or the id + .mp4
        return [vid] if form % 2 else [vid + ".mp4"]
    return [[vid + ".mp4"], [vid], [stem + ".mp4"], [vid + ".mp4", stem + ".mp4"]][form]


def stage_of(j: int) -> str:
    return STAGES[(j + 2) % 3]  # j = 0: test, 1: train, 2: val, ...


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """Videos under ``root/videos``; the data and list files in ``root``."""
    n = len(clips.class_names)
    data: dict[str, list[dict]] = {s: [] for s in STAGES}
    lists: dict[str, list[str]] = {s: [] for s in STAGES}
    for j in range(clips.clips_per_class):
        for c in range(n):
            idx = j * n + c
            vid, stage = video_id(idx), stage_of(j)
            for name in file_names(idx):
                write_clip_as(clips, root / VIDEO_DIR / name, c, j)
            descriptions = clips.captions(c, j)[: 2 + idx % 3]
            if idx % 4 == 1:
                descriptions.append(descriptions[0])  # two annotators wrote the same sentence
            if idx % 4 == 2:
                descriptions.append(NON_ASCII)
            for k, text in enumerate(descriptions):
                data[stage].append(
                    {
                        "annotation_id": len(data[stage]),
                        "video": vid,
                        "description": text,
                        "times": [[k % 6, k % 6], [k % 6, min(5, k % 6 + 1)]],
                        "dl_link": f"https://example.org/{vid}",
                    }
                )
            lists[stage].append(vid)
    lists["train"].append(UNDESCRIBED_ID)
    lists["test"].append(FILELESS_ID)
    data["test"].append(
        {"annotation_id": -1, "video": FILELESS_ID, "description": "a square.", "times": [[0, 0]]}
    )
    for stage in STAGES:
        write_json(root / DATA_FILE.format(stage=stage), data[stage])
        (root / LIST_FILE.format(stage=stage)).write_text(
            "".join(f"{v}\n" for v in lists[stage]), encoding="utf-8"
        )


register_dataset(
    DatasetSpec(
        name=NAME,
        task="retrieval",
        description="DiDeMo: paragraph-to-video ({train,val,test}_data.json + {train,val,test}_list.txt)",
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint="<folder with {train,val,test}_data.json and {train,val,test}_list.txt>",
        paragraph=True,
    )
)
