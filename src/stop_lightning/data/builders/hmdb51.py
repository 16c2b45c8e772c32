"""HMDB51: ``root/<class>/<video>.avi`` and ``<class>_test_split<k>.txt`` (lines ``<video.avi> <0|1|2>``).

In the split files 1 marks a training clip, 2 a test clip, 0 a clip unused by that split. Class
indices follow the alphabetical order of the class names. HMDB51 has no validation list, so
``val.jsonl`` is the official test list.
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from ..manifest import ClipRecord
from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import BuildError, BuildReport, find_file, finish_recognition, read_text_lines

NAME = "hmdb51"  # the registered name: data.dataset, `stop-lightning manifest <name>`
SPLIT_DIR = "testTrainMulti_7030_splits"  # the extracted split-list archive
SPLITS = (1, 2, 3)
_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>[1-3])\.txt$")


def _split_dir(root: Path, annotations: Path | None) -> Path:
    places = [annotations] if annotations is not None else [root / SPLIT_DIR, root]
    hit = find_file("*_test_split1.txt", [p for p in places if p is not None])
    if hit is None:
        where = annotations if annotations is not None else root
        raise BuildError(
            f"no HMDB51 split files (<class>_test_split1.txt) under {where}; pass the extracted "
            "testTrainMulti_7030_splits folder with --annotations"
        )
    return hit.parent


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    split_dir = _split_dir(root, annotations)
    classes = sorted(
        {m["cls"] for p in split_dir.iterdir() if (m := _SPLIT_FILE.match(p.name)) and m["k"] == "1"}
    )
    report = BuildReport(NAME, root, out_dir)
    missing: set[str] = set()
    splits: dict[str, dict[str, list[ClipRecord]]] = {}
    for split in SPLITS:
        rows: dict[int, list[ClipRecord]] = {1: [], 2: []}
        for label, cls in enumerate(
            tqdm(classes, desc=f"hmdb51 split{split}", unit="class", disable=not progress)
        ):
            list_file = split_dir / f"{cls}_test_split{split}.txt"
            for lineno, line in enumerate(read_text_lines(list_file), start=1):
                parts = line.split()
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise BuildError(f"{list_file}:{lineno}: expected '<video.avi> <0|1|2>', got {line!r}")
                name, role = parts[0], int(parts[1])
                if role == 0:
                    report.unused += 1 if split == 1 else 0
                    continue
                rel = f"{cls}/{name}"
                if not (root / rel).is_file():
                    missing.add(rel)
                    continue
                rows[role].append(ClipRecord(path=rel, label=label, label_name=cls))
        splits[f"split{split}"] = {"train": rows[1], "val": rows[2], "test": rows[2]}
    no_videos = (
        f"none of the videos listed in {split_dir} exist under {root}; "
        "is --root the folder holding <class>/<video>.avi?"
    )
    return finish_recognition(report, classes, splits, sorted(missing), probe, progress, no_videos)


def _role(j: int, split: int) -> int:
    """1 train, 2 test, 0 unused: a third of the clips test, one in six unused, rotating per split."""
    if j % 3 == split - 1:
        return 2
    if j % 3 == split % 3 and j >= 3:
        return 0
    return 1


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """``root/<class>/<video>.avi`` and ``root/testTrainMulti_7030_splits/<class>_test_split<k>.txt``."""
    split_dir = root / SPLIT_DIR
    split_dir.mkdir(parents=True, exist_ok=True)
    for c, class_name in enumerate(clips.class_names):
        folder = class_name.replace(" ", "_")
        names = [f"synthetic_{folder}_u_nm_np1_fr_med_{j}.avi" for j in range(clips.clips_per_class)]
        for j, name in enumerate(names):
            clips.write(root / folder / name, c, j)
        for split in SPLITS:
            lines = "".join(f"{name} {_role(j, split)} \n" for j, name in enumerate(names))
            (split_dir / f"{folder}_test_split{split}.txt").write_text(lines)


register_dataset(
    DatasetSpec(
        name=NAME,
        task="recognition",
        description="HMDB51: 51 actions, 3 official splits (videos + testTrainMulti_7030_splits)",
        build=build,
        write_synthetic=write_synthetic,
        synthetic_default=True,
        annotations_hint=f"<the extracted {SPLIT_DIR} folder>",
        splits=SPLITS,
    )
)
