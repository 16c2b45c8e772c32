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
from ..synthetic import HMDB_SPLIT_DIR
from . import (
    BuildError,
    BuildReport,
    find_file,
    probe_records,
    read_text_lines,
    write_class_list,
    write_split,
)

_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>[1-3])\.txt$")


def _split_dir(root: Path, annotations: Path | None) -> Path:
    places = [annotations] if annotations is not None else [root / HMDB_SPLIT_DIR, root]
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
    report = BuildReport("hmdb51", root, out_dir)
    write_class_list(report, out_dir, classes)
    missing: set[str] = set()
    probed: dict = {}
    for split in (1, 2, 3):
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
        if probe:
            rows = {k: probe_records(v, root, progress, probed) for k, v in rows.items()}
        write_split(
            report,
            out_dir / f"split{split}",
            f"split{split}",
            {"train": rows[1], "val": rows[2], "test": rows[2]},
        )
    report.missing = sorted(missing)
    if not any(report.clips.values()):
        raise BuildError(
            f"none of the videos listed in {split_dir} exist under {root}; is --root the folder holding <class>/<video>.avi?"
        )
    return report
