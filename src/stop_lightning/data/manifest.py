"""Manifest format: one JSON object per line, one line per clip.

A row::

    {"path": "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",  # relative to data.video_root
     "label": 3, "label_name": "brush_hair",                          # recognition
     "captions": ["a man brushes his hair", ...],                      # retrieval
     "video_id": "video7579", "num_frames": 96, "fps": 30.0,          # optional
     "start": 12.5, "end": 20.0}                                       # optional: a span, seconds

A row needs ``path`` and at least one of ``label`` or ``captions`` (a manifest for ``embed`` needs
only ``path``). ``start`` and ``end`` (either or both) make the clip the span ``[start, end)`` of
the video, in seconds (an ActivityNet segment, a DiDeMo moment): frames are sampled only from inside
it. Recognition manifests live in ``<manifest_dir>/split<k>/{train,val,test}.jsonl`` with the class
list in ``<manifest_dir>/classes.txt`` (line i = class index i); retrieval manifests in
``<manifest_dir>/{train,val,test}.jsonl``. ``data_manifests/README.md`` documents the layout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import UserError
from ..fileio import atomic_write
from ..reading import problem, read_bytes

STAGES = ("train", "val", "test")
CLASSES_FILE = "classes.txt"


class ManifestError(UserError, ValueError):
    """A manifest file or row that does not follow the format; the message names file, line and field."""


@dataclass(frozen=True)
class ClipRecord:
    """One manifest row."""

    path: str
    label: int | None = None
    label_name: str | None = None
    captions: tuple[str, ...] = ()
    video_id: str | None = None
    num_frames: int | None = None
    fps: float | None = None
    start: float | None = None  # seconds: the clip is [start, end) of the video
    end: float | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"path": self.path}
        if self.label is not None:
            row["label"] = self.label
        if self.label_name is not None:
            row["label_name"] = self.label_name
        if self.captions:
            row["captions"] = list(self.captions)
        for key in ("video_id", "num_frames", "fps", "start", "end"):
            value = getattr(self, key)
            if value is not None:
                row[key] = value
        return row


# field -> (accepted python types, human description)
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "path": ((str,), "a relative path string"),
    "label": ((int,), "a non-negative integer"),
    "label_name": ((str,), "a string"),
    "captions": ((list,), "a list of non-empty strings"),
    "video_id": ((str,), "a string"),
    "num_frames": ((int,), "a non-negative integer"),
    "fps": ((int, float), "a positive number"),
    "start": ((int, float), "a non-negative number of seconds"),
    "end": ((int, float), "a positive number of seconds"),
}


def check_relative_path(path: str, where: str = "") -> str:
    """Refuse absolute paths and paths that climb out of the video root (``..``)."""
    prefix = f"{where}: " if where else ""
    if not path or not path.strip():
        raise ManifestError(f"{prefix}field 'path' is empty")
    if "\\" in path:
        path = path.replace("\\", "/")
    pure = PurePosixPath(path)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise ManifestError(
            f"{prefix}field 'path' = {path!r} is absolute; manifest paths must be relative to data.video_root"
        )
    if ".." in pure.parts:
        raise ManifestError(f"{prefix}field 'path' = {path!r} escapes data.video_root ('..' is not allowed)")
    return str(pure)


def resolve_video_path(video_root: str | Path, rel_path: str) -> Path:
    """Join a manifest path to the video root, refusing anything (e.g. a symlink) that lands outside it."""
    rel = check_relative_path(rel_path)
    root = Path(video_root).resolve()
    full = (root / rel).resolve()
    if full != root and root not in full.parents:
        raise ManifestError(f"manifest path {rel_path!r} resolves to {full}, outside data.video_root {root}")
    return full


def parse_row(obj: Any, where: str, require_target: bool = True) -> ClipRecord:
    """Validate one decoded JSON row; ``where`` is ``file:line`` for the error message.
    ``require_target=False``: a row of only ``path`` is enough (inference reads no labels)."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise ManifestError(f"{where}: unknown field '{unknown[0]}' (valid fields: {', '.join(_FIELDS)})")
    if "path" not in obj:
        raise ManifestError(f"{where}: missing required field 'path'")
    for key, value in obj.items():
        types, desc = _FIELDS[key]
        bad = not isinstance(value, types) or isinstance(value, bool)
        if not bad and key in ("label", "num_frames") and value < 0:
            bad = True
        if not bad and key == "fps" and not value > 0:
            bad = True
        if not bad and key == "start" and not (math.isfinite(value) and value >= 0):
            bad = True
        if not bad and key == "end" and not (math.isfinite(value) and value > 0):
            bad = True
        if not bad and key == "captions" and not all(isinstance(c, str) and c.strip() for c in value):
            bad = True
        if bad:
            raise ManifestError(f"{where}: field '{key}' = {value!r} is not {desc}")
    if require_target and "label" not in obj and not obj.get("captions"):
        raise ManifestError(
            f"{where}: field 'label' or 'captions' is required (a row needs a class or a caption)"
        )
    if "start" in obj and "end" in obj and not obj["end"] > obj["start"]:
        raise ManifestError(
            f"{where}: field 'end' = {obj['end']!r} is not after 'start' = {obj['start']!r} "
            "(the clip is [start, end) in seconds)"
        )
    path = check_relative_path(obj["path"], where)
    return ClipRecord(
        path=path,
        label=obj.get("label"),
        label_name=obj.get("label_name"),
        captions=tuple(obj.get("captions", ())),
        video_id=obj.get("video_id"),
        num_frames=obj.get("num_frames"),
        fps=float(obj["fps"]) if "fps" in obj else None,
        start=float(obj["start"]) if "start" in obj else None,
        end=float(obj["end"]) if "end" in obj else None,
    )


MANIFEST_TODO = "write one JSON object per line, as data_manifests/README.md shows, or build it again"
CLASSES_TODO = "write one class name per line (line i names label i), or build the manifests again"


def utf8_lines(path: Path, kind: str, todo: str) -> list[str]:
    """The lines of a UTF-8 text file (:func:`stop_lightning.reading.read_bytes`: missing, a folder,
    unreadable or empty is one line); a line that is not UTF-8 ends in one error naming file and line."""
    lines = []
    for lineno, raw in enumerate(read_bytes(path, kind, ManifestError, todo).splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            what = f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
            raise ManifestError(problem(f"{path}:{lineno}", what, f"save the file as UTF-8; {todo}")) from err
    return lines


def read_manifest(
    path: str | Path, require_target: bool = True, allow_empty: bool = False
) -> list[ClipRecord]:
    """Read and validate every row of a JSONL manifest. Blank lines are ignored; a manifest without a
    row is refused unless ``allow_empty``. ``require_target=False`` accepts rows without ``label`` or
    ``captions``."""
    path = Path(path)
    if allow_empty and path.is_file() and path.stat().st_size == 0:
        return []
    lines = utf8_lines(path, "manifest file", MANIFEST_TODO)
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            ends_early = err.pos >= len(line.rstrip()) or err.msg.startswith("Unterminated string")
            if lineno == len(lines) and ends_early:  # the last row stops mid-value
                raise ManifestError(
                    problem(path, f"cut short: line {lineno} ends mid-row", MANIFEST_TODO)
                ) from err
            if not records:  # not one row read: another program's file (a CSV, a JSON array)
                raise ManifestError(
                    problem(where, f"not JSONL (not a JSON object per line: {err.msg})", MANIFEST_TODO)
                ) from err
            raise ManifestError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
        records.append(parse_row(obj, where, require_target))
    if not records and not allow_empty:
        raise ManifestError(problem(path, "holds no rows", MANIFEST_TODO))
    return records


def manifest_text(records: Iterable[ClipRecord]) -> str:
    """Rows as JSONL text."""
    return "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)


def write_manifest(path: str | Path, records: Iterable[ClipRecord]) -> Path:
    """Write rows as JSONL (atomically: readers never see a half-written file)."""
    return atomic_write(path, manifest_text(records))


def read_classes(path: str | Path) -> list[str]:
    path = Path(path)
    names = [line.strip() for line in utf8_lines(path, "class list", CLASSES_TODO)]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ManifestError(problem(path, "holds no class names", CLASSES_TODO))
    if any(name.startswith(("{", "[")) for name in names):  # a JSON file or a manifest in its place
        raise ManifestError(problem(path, "holds JSON, not a class list", CLASSES_TODO))
    for i, name in enumerate(names, start=1):
        if not name:
            raise ManifestError(f"{path}:{i}: empty class name")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ManifestError(f"{path}: class '{dup}' is listed twice")
    return names


def write_classes(path: str | Path, names: Iterable[str]) -> Path:
    return atomic_write(path, "".join(f"{n}\n" for n in names))


def check_labels(records: list[ClipRecord], class_names: list[str], source: str) -> None:
    """Every row has a label inside the class list (and a matching name when it gives one)."""
    for i, rec in enumerate(records):
        if rec.label is None:
            raise ManifestError(
                f"{source}: row {i + 1} ({rec.path}) has no 'label'; recognition needs one on every row"
            )
        if rec.label >= len(class_names):
            raise ManifestError(
                f"{source}: row {i + 1} ({rec.path}) field 'label' = {rec.label} "
                f"but the class list has {len(class_names)} classes"
            )
        if rec.label_name is not None and rec.label_name != class_names[rec.label]:
            raise ManifestError(
                f"{source}: row {i + 1} ({rec.path}) field 'label_name' = {rec.label_name!r} "
                f"but class {rec.label} is {class_names[rec.label]!r} in {CLASSES_FILE}"
            )


def readable_class_name(name: str) -> str:
    """A dataset's class id as words: 'brush_hair' -> 'brush hair', 'ApplyEyeMakeup' -> 'apply eye makeup'."""
    text = name.replace("_", " ").replace("-", " ")
    # Split before an upper-case letter that follows a lower-case letter or digit, and inside
    # runs of capitals before a capitalised word ('TVShow' -> 'TV Show').
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    return " ".join(text.lower().split())


def recognition_manifest_path(manifest_dir: str | Path, split: int, stage: str) -> Path:
    return Path(manifest_dir) / f"split{split}" / f"{stage}.jsonl"


def retrieval_manifest_path(manifest_dir: str | Path, stage: str) -> Path:
    return Path(manifest_dir) / f"{stage}.jsonl"
