"""Class-list files: which classes a protocol uses (base classes, novel classes, evaluation subsets).

Format (data_manifests/README.md, "Class-list files"): either the ``id,name`` csv that ViFi-CLIP
publishes its label lists in (``labels/hmdb_51_base_labels.csv``, ``labels/ZS_split1_K600.csv``), or
one class name per line; ``#`` starts a comment line, blank lines are skipped. A name matches a class
of the dataset's ``classes.txt`` exactly or once both are written as words (``ride_bike`` and
``ride bike`` are the same class; ``ApplyEyeMakeup`` is ``apply eye makeup``), so the published
files work with the manifests the builders write.
"""

from __future__ import annotations

import csv
import difflib
import io
import random
from pathlib import Path

from ..fileio import atomic_write
from ..reading import read_text
from .manifest import ManifestError, readable_class_name

CSV_HEADER = "id,name"


def read_class_list(path: str | Path) -> list[str]:
    """The class names listed in ``path`` (order kept, duplicates refused)."""
    path = Path(path)
    text = read_text(
        path, "class-list file", ManifestError, "give one class name per line, or 'id,name' rows"
    )
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines and lines[0].replace(" ", "").lower() == CSV_HEADER:
        names = [
            row[1].strip() if len(row) > 1 else "" for row in csv.reader(io.StringIO("\n".join(lines[1:])))
        ]
    else:
        names = lines
    for i, name in enumerate(names, start=1):
        if not name:
            raise ManifestError(
                f"{path}: entry {i} has no class name (expected '{CSV_HEADER}' rows or one name per line)"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ManifestError(f"{path}: class {name!r} is listed twice")
        seen.add(name)
    if not names:
        raise ManifestError(f"{path}: lists no class (expected '{CSV_HEADER}' rows or one name per line)")
    return names


def class_ids(listed: list[str], classes: list[str], source: str | Path) -> list[int]:
    """Indices in ``classes`` of the ``listed`` names, sorted; every listed name must exist."""
    exact = {name: i for i, name in enumerate(classes)}
    words = {readable_class_name(name): i for i, name in enumerate(classes)}
    ids, unknown = [], []
    for name in listed:
        i = exact.get(name, words.get(readable_class_name(name)))
        if i is None:
            unknown.append(name)
        else:
            ids.append(i)
    if unknown:
        hints = []
        for name in unknown[:5]:
            close = difflib.get_close_matches(name, classes, n=1, cutoff=0.75)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ManifestError(
            f"{source}: {len(unknown)} listed class(es) are not in the dataset's classes.txt: "
            f"{', '.join(hints)}{' ...' if len(unknown) > 5 else ''}. Fix the names in the file (or rebuild "
            "the manifests from the release the list was made for)"
        )
    if len(set(ids)) != len(ids):
        raise ManifestError(f"{source}: two listed names are the same class of classes.txt")
    return sorted(ids)


def seeded_subset(ids: list[int], size: int, seed: int, source: str | Path) -> list[int]:
    """``size`` of ``ids`` drawn with ``seed`` (sorted); the whole list when ``size`` equals its length."""
    if not 0 < size <= len(ids):
        raise ManifestError(
            f"data.subset_size={size} but {source} lists {len(ids)} classes; "
            f"set 0 < data.subset_size <= {len(ids)}"
        )
    return sorted(random.Random(seed).sample(sorted(ids), size))


def class_list_text(names: list[str]) -> str:
    """``names`` in the ``id,name`` csv format (read back by :func:`read_class_list`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER.split(","))
    writer.writerows(enumerate(names))
    return out.getvalue()


def write_protocol_files(files: dict[str, str], run_dir: str | Path) -> list[Path]:
    """Write what a protocol drew (class subsets, splits, few-shot lists) into the run folder."""
    return [atomic_write(Path(run_dir) / "protocol" / name, text) for name, text in files.items()]
