"""Kinetics-400: csv split lists and ``<youtube_id>_<start:06d>_<end:06d>.mp4`` clips.

Annotations (``--annotations``, else ``root/annotations`` or ``root``): ``train.csv``, ``val.csv``
(the CVDF release) or ``validate.csv`` (DeepMind's name), ``test.csv``, with the header
``label,youtube_id,time_start,time_end,split``. The names the common download scripts keep are read
too (``stage_files``): CVDF's Kinetics-600 ``train.txt`` and ``val.txt`` (csv inside), the ActivityNet
crawler's ``kinetics-400_train.csv`` / ``kinetics-600_val.csv`` ... and its first Kinetics-400 lists,
``kinetics_train.csv``, ``kinetics_val.csv``, ``kinetics_test.csv``. What varies between the copies in
circulation, and is all read here:

- extra columns (some crawlers add ``is_cc``) and any column order: columns are read by name;
- labels quoted (``"air drumming"``) or not;
- a ``test.csv`` without a ``label`` column: it gives no test manifest, and ``test.jsonl`` is the
  validation list (as in most papers, which report Kinetics on the validation set);
- videos in flat split folders (``train/<file>.mp4``) or in per-class folders
  (``train/<class>/<file>.mp4``): files are found by name anywhere under ``root``, with any video
  extension (some crawlers write ``.mkv`` or ``.webm``); youtube ids may start with ``-``;
- a few percent of the listed clips are missing in every copy (deleted from YouTube): they are
  left out and counted in the report, never an error;
- CVDF's fixed copies of clips that were corrupted in its first Kinetics-400 upload
  (``replacement/replacement_for_corrupted_k400/<file>.mp4``) sit beside the corrupted ones: a clip
  found in a folder whose name starts with ``replacement`` and elsewhere is read from the replacement,
  and any other clip found twice from the first of its paths in sorted order, whatever order the file
  system lists the folders in.

Class indices follow the alphabetical order of the training labels. ``k600.py`` reads Kinetics-600
with this same code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from pathlib import Path

from ..manifest import ClipRecord
from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import VIDEO_SUFFIXES, BuildError, BuildReport, annotation_text, finish_recognition

log = logging.getLogger(__name__)

ANNOTATION_DIR = "annotations"
STAGES = ("train", "val", "test")
# A folder holding fixed copies of corrupted clips (CVDF's k400/replacement/...): its copy wins.
REPLACEMENT_PREFIX = "replacement"
REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end")
LABEL_COLUMN = "label"
ANNOTATIONS_HINT = "<the folder with train.csv, val.csv (or validate.csv), test.csv, or their download names>"
# Kinetics class names are verb phrases ("playing guitar", "air drumming").
TEMPLATES = ("a video of a person {name}.",)
# Multi-view testing: 4 temporal clips x 3 spatial crops, as X-CLIP (Ni et al., ECCV 2022, its K400
# results table) reports Kinetics-400; the experiments set data.test_clips / data.test_crops from these.
TEST_VIEWS = (4, 3)


def clip_name(youtube_id: str, start: int, end: int) -> str:
    """The file stem the downloaders write: ``<youtube_id>_<start:06d>_<end:06d>``."""
    return f"{youtube_id}_{start:06d}_{end:06d}"


def stage_files(dataset: str, stage: str) -> tuple[str, ...]:
    """The names a ``stage``'s csv goes by for ``dataset`` (``k400``, ``k600``), in the order looked for:
    the release's own, then those of the common download scripts (CVDF's Kinetics-600 ``.txt``, the
    ActivityNet crawler's ``kinetics-<classes>_<stage>.csv``, and its first Kinetics-400 lists)."""
    classes = dataset.removeprefix("k")
    names = {"train": ["train.csv"], "val": ["val.csv", "validate.csv"], "test": ["test.csv"]}[stage]
    if stage != "test":
        names.append(f"{stage}.txt")
    names.append(f"kinetics-{classes}_{stage}.csv")
    if dataset == "k400":
        names.append(f"kinetics_{stage}.csv")
    return tuple(names)


def _annotation_file(names: tuple[str, ...], places: list[Path]) -> Path | None:
    for place in places:
        for name in names:
            if (place / name).is_file():
                return place / name
    return None


def read_split_csv(path: Path) -> list[tuple[str | None, str, int]]:
    """``(label or None, clip stem, line number)`` per row of a Kinetics csv."""
    reader = csv.DictReader(io.StringIO(annotation_text(path)), skipinitialspace=True)
    columns = [c.strip() for c in reader.fieldnames or []]
    absent = [c for c in REQUIRED_COLUMNS if c not in columns]
    if absent:
        raise BuildError(
            f"{path}: no column(s) {', '.join(absent)} in the header {','.join(columns) or '(empty file)'}; "
            "expected a Kinetics csv with the header label,youtube_id,time_start,time_end,split"
        )
    rows = []
    for lineno, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except ValueError as err:
            raise BuildError(
                f"{path}:{lineno}: time_start/time_end must be numbers, "
                f"got {row['time_start']!r}, {row['time_end']!r}"
            ) from err
        label = row.get(LABEL_COLUMN) or None
        rows.append((label, clip_name(row["youtube_id"], start, end), lineno))
    return rows


def _video_index(root: Path) -> dict[str, str]:
    """Clip stem -> path relative to ``root``, for every video file below it (any folder layout). A stem
    found more than once: its copy in a replacement folder, else its first path in sorted order."""
    found: dict[str, list[str]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in VIDEO_SUFFIXES:
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                found.setdefault(stem, []).append(rel)
    return {stem: min(paths, key=_copy_order) for stem, paths in found.items()}


def _copy_order(rel: str) -> tuple[bool, str]:
    """Sort key of a clip's copies: the one in a replacement folder first, then by path."""
    folders = rel.split("/")[:-1]
    return (not any(f.startswith(REPLACEMENT_PREFIX) for f in folders), rel)


def build_kinetics(
    dataset: str, root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool
) -> BuildReport:
    """Manifests ``train/val/test.jsonl`` and ``classes.txt`` of a Kinetics release under ``root``."""
    places = [annotations] if annotations is not None else [root / ANNOTATION_DIR, root]
    names = {stage: stage_files(dataset, stage) for stage in STAGES}
    files = {stage: _annotation_file(names[stage], places) for stage in STAGES}
    for stage in ("train", "val"):
        if files[stage] is None:
            raise BuildError(
                f"no {' or '.join(names[stage])} under {' or '.join(map(str, places))}; pass the "
                f"folder with the {dataset} csv files with --annotations"
            )
    lists = {stage: read_split_csv(path) for stage, path in files.items() if path is not None}
    if lists.get("test") and all(label is None for label, _, _ in lists["test"]):
        log.warning("%s has no labels: test.jsonl is the validation list", files["test"])
        del lists["test"]
    classes = sorted({label for label, _, _ in lists["train"] if label is not None})
    if not classes:
        raise BuildError(f"{files['train']}: no labelled rows (is it a test list?)")
    index_of = {name: i for i, name in enumerate(classes)}
    videos = _video_index(root)
    report = BuildReport(dataset, root, out_dir)
    missing: list[str] = []
    rows: dict[str, list[ClipRecord]] = {}
    for stage, entries in lists.items():
        rows[stage] = []
        for label, stem, lineno in entries:
            if label not in index_of:
                raise BuildError(
                    f"{files[stage]}:{lineno}: label {label!r} is not a class of {files['train']}"
                    if label is not None
                    else f"{files[stage]}:{lineno}: empty label in a labelled list"
                )
            rel = videos.get(stem)
            if rel is None:
                missing.append(f"{stage}: {stem}")
                continue
            rows[stage].append(ClipRecord(path=rel, label=index_of[label], label_name=label))
    rows.setdefault("test", rows["val"])
    no_videos = (
        f"none of the clips listed in {files['train']} exist under {root}; is --root the folder holding "
        "the videos (<youtube_id>_<start>_<end>.mp4, in split or class folders)?"
    )
    splits = {"": {"train": rows["train"], "val": rows["val"], "test": rows["test"]}}
    return finish_recognition(report, classes, splits, missing, probe, progress, no_videos)


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    return build_kinetics("k400", root, annotations, out_dir, probe, progress)


# ------------------------------------------------------------------------------ synthetic layouts
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def youtube_id(c: int, j: int) -> str:
    """An 11-character id; every third one starts with ``-`` (a file name a shell reads as an option)."""
    digest = hashlib.sha1(f"{c}/{j}".encode()).digest()
    text = "".join(_ID_CHARS[b % len(_ID_CHARS)] for b in digest[:11])
    return "-" + text[1:] if (c + j) % 3 == 0 else text


def stage_of(j: int) -> str:
    """Clip ``j`` of each class: one in three in val, one in three in test, the rest in train."""
    return ("val", "test", "train")[j % 3]


def write_kinetics_synthetic(
    root: Path,
    clips: SyntheticClips,
    val_file: str,
    per_class_folders: bool,
    quoted: bool,
    test_labels: bool,
) -> None:
    """A Kinetics copy: ``root/annotations/{train,<val_file>,test}.csv`` (``is_cc`` column, labels
    ``quoted`` or not, ``test_labels`` or none) and videos in flat split folders or per-class folders
    (class names with spaces turned to underscores, as the crawlers write them)."""
    header = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
    tables: dict[str, list[list[str]]] = {"train": [], "val": [], "test": []}
    for c, label in enumerate(clips.class_names):
        for j in range(clips.clips_per_class):
            stage, yid, start = stage_of(j), youtube_id(c, j), 10 * j
            folder = root / stage / (label.replace(" ", "_") if per_class_folders else "")
            clips.write(folder / f"{clip_name(yid, start, start + 10)}.mp4", c, j)
            tables[stage].append([label, yid, str(start), str(start + 10), stage, "0"])
    (root / ANNOTATION_DIR).mkdir(parents=True, exist_ok=True)
    names = {"train": "train.csv", "val": val_file, "test": "test.csv"}
    for stage, table in tables.items():
        cols = header if stage != "test" or test_labels else header[1:]
        out = io.StringIO()
        writer = csv.writer(
            out, quoting=csv.QUOTE_NONNUMERIC if quoted else csv.QUOTE_MINIMAL, lineterminator="\n"
        )
        writer.writerow(cols)
        for row in table:
            writer.writerow(row[len(header) - len(cols) :])
        (root / ANNOTATION_DIR / names[stage]).write_text(out.getvalue())


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """The CVDF copy: ``val.csv``, quoted labels, flat split folders, a labelled ``test.csv``."""
    write_kinetics_synthetic(root, clips, "val.csv", per_class_folders=False, quoted=True, test_labels=True)


register_dataset(
    DatasetSpec(
        name="k400",
        task="recognition",
        description="Kinetics-400: 400 actions, csv split lists + <youtube_id>_<start>_<end>.mp4 clips",
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint=ANNOTATIONS_HINT,
        templates=TEMPLATES,
    )
)
