"""ActivityNet Captions (paragraph-to-video retrieval): the official caption files ``train.json``,
``val_1.json``, ``val_2.json`` (``{"v_<id>": {"duration", "timestamps", "sentences"}}``) and the id
lists ``train_ids.json``, ``val_ids.json``, ``test_ids.json``.

- A video's sentences are joined, in order, into one paragraph (timestamps are not used: the
  query is the whole paragraph, the video the whole video).
- Train: ``train_ids.json`` with ``train.json``; val and test: ``val_ids.json`` with ``val_1.json``,
  the evaluation set of the retrieval papers (``val_2.json`` annotates the same videos again and
  ``test_ids.json`` has no public captions: both are read by nobody here).
- Video files carry the id with or without its ``v_`` prefix, with any extension of
  ``VIDEO_SUFFIXES``; the prefix is exactly the first two characters (``v_v_x`` -> ``v_x``, and a
  YouTube id may itself begin with ``v`` or ``_``), never a pattern. A ``video_path.json``
  (``{"<id without v_>": "path"}``, written by some training scripts, not part of the release) is
  used when present; its paths are relative to ``--root`` or absolute under it.
- Ids listed without captions or without a file are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import VIDEO_SUFFIXES, BuildError, BuildReport, read_json
from .captioned import (
    CaptionReport,
    VideoFiles,
    caption_rows,
    clean_captions,
    finish,
    optional,
    paragraph,
    require,
    write_clip_as,
    write_json,
)

NAME = "activitynet"
PREFIX = "v_"  # official ids are "v_" + the YouTube id
CAPTION_FILES = {"train": "train.json", "val": "val_1.json"}  # stage -> captions; test = val
SECOND_VAL_FILE = "val_2.json"  # the same videos, other annotators (unused)
ID_FILES = {"train": "train_ids.json", "val": "val_ids.json"}
TEST_ID_FILE = "test_ids.json"  # no public captions (unused)
VIDEO_PATH_FILE = "video_path.json"  # optional: {"<id without v_>": path}
ANNOTATION_DIR = "captions"  # where the synthetic layout keeps the annotation files
VIDEO_DIR = "videos"
HINT = (
    "pass the folder with the ActivityNet Captions files (train.json, val_1.json, *_ids.json) "
    "with --annotations"
)


def without_prefix(video_id: str) -> str:
    """``v_<id>`` -> ``<id>``: exactly two characters, and only when they are ``v_``."""
    return video_id[len(PREFIX) :] if video_id.startswith(PREFIX) else video_id


def _read_captions(report: CaptionReport, path: Path) -> dict[str, list[str]]:
    data = read_json(path, '{"v_<id>": {"duration", "timestamps", "sentences": [...]}}', dict)
    out = {}
    for vid, entry in data.items():
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise BuildError(f"{path}: entry {vid!r} has no 'sentences' list of strings")
        text = paragraph(clean_captions(report, sentences))
        if text:
            out[vid] = [text]
    return out


def _video_paths(root: Path, path: Path | None) -> dict[str, str]:
    """video_path.json as ``{id without v_: path relative to root}`` (files that exist only)."""
    if path is None:
        return {}
    out = {}
    resolved_root = root.resolve()
    for key, value in read_json(path, '{"<id without v_>": "path"}', dict).items():
        full = Path(str(value))
        full = full if full.is_absolute() else root / full
        if full.is_file() and resolved_root in full.resolve().parents:
            out[key] = full.resolve().relative_to(resolved_root).as_posix()
    return out


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    report = CaptionReport(NAME, root, out_dir)
    files = VideoFiles(root)
    listed = _video_paths(root, optional(VIDEO_PATH_FILE, root, annotations))

    def locate(video_id: str) -> str | None:
        bare = without_prefix(video_id)
        if bare in listed:
            return listed[bare]
        hits = files.stem(video_id, VIDEO_SUFFIXES) + files.stem(bare, VIDEO_SUFFIXES)
        if len(set(hits)) > 1:
            report.notes.append(f"{video_id}: several files ({', '.join(hits)}); took {hits[0]}")
        return hits[0] if hits else None

    stages = {}
    for stage in ("train", "val"):
        captions = _read_captions(report, require(CAPTION_FILES[stage], root, annotations, HINT))
        ids_path = require(ID_FILES[stage], root, annotations, HINT)
        ids = read_json(ids_path, '["v_<id>", ...]', list)
        stages[stage] = caption_rows(report, [str(i) for i in ids], captions, locate)
    stages["test"] = stages["val"]
    return finish(report, stages, probe, progress)


# ---------------------------------------------------------------------------------------------
# Synthetic layout
# ---------------------------------------------------------------------------------------------

# Quirks of the real release that the synthetic copy reproduces.
UNCAPTIONED_ID = "v_noCaption01"  # in train_ids.json, not in train.json
FILELESS_ID = "v_noVideoFile"  # in val_ids.json and val_1.json, no file
NON_ASCII = " Le carré bleu glisse, très lentement — 青い四角。"


def youtube_id(idx: int) -> str:
    """11 characters like a YouTube id; some begin with ``v`` or ``_`` (the prefix trap)."""
    head = ("v_", "_v", "vv", "Ab")[idx % 4]
    return f"{head}{idx:09d}"


def file_name(idx: int) -> str:
    """The file of video ``idx``: with or without the ``v_`` prefix, ``.mp4`` or ``.avi``."""
    yt = youtube_id(idx)
    return (f"v_{yt}.mp4", f"{yt}.mp4", f"v_{yt}.avi", f"{yt}.avi")[(idx // 4) % 4]


def is_val(j: int) -> bool:
    return j % 3 == 0


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """Videos under ``root/videos`` and the six official files in ``root/captions``."""
    n = len(clips.class_names)
    captions: dict[str, dict] = {"train": {}, "val": {}}
    second_val: dict = {}
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for j in range(clips.clips_per_class):
        for c in range(n):
            idx = j * n + c
            vid = PREFIX + youtube_id(idx)
            write_clip_as(clips, root / VIDEO_DIR / file_name(idx), c, j)
            stage = "val" if is_val(j) else "train"
            sentences = [f" {s.capitalize()}." for s in clips.captions(c, j)[:3]]
            if idx % 5 == 1:
                sentences.append(sentences[0])  # the same sentence twice in one paragraph
            if idx % 5 == 2:
                sentences.append(NON_ASCII)
            third = 8.0 / 3
            captions[stage][vid] = {
                "duration": 8.0,
                "timestamps": [
                    [round(k * third, 2), round((k + 1) * third, 2)] for k in range(len(sentences))
                ],
                "sentences": sentences,
            }
            if stage == "val":
                second_val[vid] = {"duration": 8.0, "timestamps": [[0.0, 8.0]], "sentences": [sentences[-1]]}
            ids[stage].append(vid)
    ids["train"].append(UNCAPTIONED_ID)
    ids["val"].append(FILELESS_ID)
    captions["val"][FILELESS_ID] = {"duration": 8.0, "timestamps": [[0.0, 8.0]], "sentences": ["A square."]}
    ann = root / ANNOTATION_DIR
    for stage in ("train", "val"):
        write_json(ann / CAPTION_FILES[stage], captions[stage])
        write_json(ann / ID_FILES[stage], ids[stage])
    write_json(ann / SECOND_VAL_FILE, second_val)
    write_json(ann / TEST_ID_FILE, ["v_testOnly0001", "v_testOnly0002"])


register_dataset(
    DatasetSpec(
        name=NAME,
        task="retrieval",
        description=(
            "ActivityNet Captions: paragraph-to-video, val_1 evaluated (train.json, val_1.json, *_ids.json)"
        ),
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint="<folder with train.json, val_1.json, train_ids.json and val_ids.json>",
        paragraph=True,
    )
)
