"""Something-Something v2: json label files and ``<id>.webm`` (VP9) videos.

- ``something-something-v2-labels.json``: ``{"Pushing something from left to right": "93", ...}``,
  class index as a string;
- ``something-something-v2-train.json`` and ``-validation.json``: lists of ``{"id": "78687",
  "label": "pushing a pen from left to right", "template": "Pushing [something] from left to right",
  "placeholders": ["a pen"]}``; the class is the template with its brackets removed (brackets hold
  other words too, e.g. ``[part]`` or ``[something in it]``), looked up in the labels file;
- ``something-something-v2-test.json`` lists ids only (no labels): ``test.jsonl`` is the validation
  list, as papers report SSv2;
- videos ``<id>.webm``, in ``root/20bn-something-something-v2/`` as extracted or directly in ``root``.

Class indices are the labels file's. Several classes are left/right mirror images of each other
("Pushing something from left to right" / "... from right to left"), so a horizontal flip would
change the label: the spec says ``hflip=False`` and the DataModule turns a configured flip off.
Listed videos missing from disk are left out and counted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..manifest import ClipRecord
from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import BuildError, BuildReport, find_file, finish_recognition, read_json

VIDEO_DIR = "20bn-something-something-v2"  # the extracted video archive
LABELS_FILE = "something-something-v2-labels.json"
STAGE_FILES = {"train": "something-something-v2-train.json", "val": "something-something-v2-validation.json"}
TEST_FILE = "something-something-v2-test.json"  # ids only: no manifest
VIDEO_SUFFIX = ".webm"
# Class names are sentences about objects: "something" stands for the object (the placeholder).
TEMPLATES = ("a video of {name}.",)
# Multi-view testing as ViFi-CLIP reports its few-shot and base-to-novel SSv2 results: one clip, one
# crop (our reading of Rasheed et al., CVPR 2023; not checked against their code).
TEST_VIEWS = (1, 1)
_BRACKETS = re.compile(r"\[([^\]]*)\]")


def template_class(template: str) -> str:
    """``"Putting [something] into [part] of [something]"``
    -> ``"Putting something into part of something"``."""
    return " ".join(_BRACKETS.sub(r"\1", template).split())


def read_labels(path: Path) -> list[str]:
    """Class names in index order from the labels file (indices are strings there)."""
    data = read_json(path, '{"<template>": "<index>", ...}', dict)
    by_index: dict[int, str] = {}
    for name, index in data.items():
        if not str(index).strip().isdigit():
            raise BuildError(f'{path}: index of {name!r} is {index!r}, expected a number (e.g. "93")')
        if int(index) in by_index:
            raise BuildError(f"{path}: index {index} is given to {by_index[int(index)]!r} and {name!r}")
        by_index[int(index)] = template_class(name)
    if sorted(by_index) != list(range(len(by_index))):
        raise BuildError(f"{path}: indices are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _annotation_dir(root: Path, annotations: Path | None) -> Path:
    places = [annotations] if annotations is not None else [root, root.parent]
    hit = find_file(LABELS_FILE, [p for p in places if p is not None])
    if hit is None:
        where = annotations if annotations is not None else root
        raise BuildError(
            f"no {LABELS_FILE} under {where}; pass the folder with the SSv2 json files with --annotations"
        )
    return hit.parent


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    ann = _annotation_dir(root, annotations)
    classes = read_labels(ann / LABELS_FILE)
    index_of = {name: i for i, name in enumerate(classes)}
    prefix = f"{VIDEO_DIR}/" if (root / VIDEO_DIR).is_dir() else ""
    report = BuildReport("ssv2", root, out_dir)
    missing: list[str] = []
    rows: dict[str, list[ClipRecord]] = {}
    for stage, name in STAGE_FILES.items():
        path = ann / name
        entries = read_json(path, "a list of {id, label, template, placeholders}", list)
        rows[stage] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise BuildError(f"{path}: entry {i} has no 'id' or 'template': {entry!r:.120}")
            cls = template_class(str(entry["template"]))
            if cls not in index_of:
                raise BuildError(
                    f"{path}: entry {i} (id {entry['id']}): template {cls!r} is not in {LABELS_FILE}"
                )
            rel = f"{prefix}{entry['id']}{VIDEO_SUFFIX}"
            if not (root / rel).is_file():
                missing.append(f"{stage}: {rel}")
                continue
            rows[stage].append(ClipRecord(path=rel, label=index_of[cls], label_name=cls))
    no_videos = (
        f"none of the videos listed in {ann / STAGE_FILES['train']} exist under {root}; is --root the "
        f"folder holding {VIDEO_DIR}/ (or the <id>.webm files)?"
    )
    splits = {"": {"train": rows["train"], "val": rows["val"], "test": rows["val"]}}
    return finish_recognition(report, classes, splits, missing, probe, progress, no_videos)


# ------------------------------------------------------------------------------ synthetic layout


def synthetic_template(c: int, class_name: str) -> str:
    """SSv2-style template for a synthetic motion class ("move up left" -> "Moving [something] up left");
    odd classes hold a second kind of bracket: "Moving [part] of [something] up left"."""
    motion = class_name.removeprefix("move ")
    return f"Moving [part] of [something] {motion}" if c % 2 else f"Moving [something] {motion}"


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """``root/<labels, train, validation, test json>`` and ``root/20bn-something-something-v2/<id>.webm``.

    Indices in the labels file run in reverse class order, so a builder that sorted names would be
    caught; one clip in three is validation, one in three test (ids only), the rest train."""
    templates = [synthetic_template(c, n) for c, n in enumerate(clips.class_names)]
    n = len(templates)
    labels = {template_class(t): str(n - 1 - c) for c, t in enumerate(templates)}
    lists: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for c, template in enumerate(templates):
        for j in range(clips.clips_per_class):
            vid = str(1000 * (c + 1) + j)
            clips.write(root / VIDEO_DIR / f"{vid}{VIDEO_SUFFIX}", c, j)
            stage = ("val", "test", "train")[j % 3]
            if stage == "test":
                lists["test"].append({"id": vid})
                continue
            thing = f"square {j}"
            lists[stage].append(
                {
                    "id": vid,
                    "label": _BRACKETS.sub(thing, template).lower(),
                    "template": template,
                    "placeholders": [thing] * template.count("["),
                }
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / LABELS_FILE).write_text(json.dumps(labels, indent=1))
    for stage, name in STAGE_FILES.items():
        (root / name).write_text(json.dumps(lists[stage]))
    (root / TEST_FILE).write_text(json.dumps(lists["test"]))


register_dataset(
    DatasetSpec(
        name="ssv2",
        task="recognition",
        description="Something-Something v2: 174 object interactions, json label files + <id>.webm (VP9)",
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint=f"<the folder with {LABELS_FILE} and the train/validation json files>",
        templates=TEMPLATES,
        hflip=False,  # mirror-image classes: "from left to right" / "from right to left"
    )
)
