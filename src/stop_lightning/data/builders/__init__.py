"""One module per dataset (``<name>.py``), each registering itself in ``data/registry.py``; this file
holds what their builders share.

A builder reads a dataset exactly as it is distributed and writes JSONL manifests.
``stop-lightning manifest <dataset> --root R [--annotations A] --out O`` (``data/build.py``) runs them.
Manifest paths are relative to ``--root``: set ``data.video_root`` to that folder. To add a dataset,
see the module docstring of ``data/registry.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ...fileio import atomic_write
from ...reading import read_text
from ..manifest import CLASSES_FILE, ClipRecord, ManifestError, write_classes, write_manifest

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v")


class BuildError(ManifestError):
    """The dataset on disk does not look like the official distribution."""


@dataclass
class BuildReport:
    dataset: str
    root: Path
    out_dir: Path
    clips: dict[str, int] = field(default_factory=dict)  # "split1/train" (or "train") -> rows written
    num_classes: int = 0
    num_captions: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # listed in the annotations, not on disk
    unused: int = 0  # rows the official lists mark as unused (HMDB51 id 0)
    written: list[Path] = field(default_factory=list)
    probe: ProbeReport | None = None  # with --probe: the unreadable files found

    def summary(self) -> str:
        lines = [f"{self.dataset}: manifests in {self.out_dir} (paths relative to {self.root})"]
        if self.num_classes:
            lines.append(f"  classes: {self.num_classes}")
        for key, n in self.clips.items():
            caps = f", {self.num_captions[key]} captions" if key in self.num_captions else ""
            lines.append(f"  {key:<14} {n:>6} clips{caps}")
        if self.unused:
            lines.append(f"  unused by the official split lists: {self.unused} entries")
        if self.missing:
            lines.append(f"  missing video files: {len(self.missing)} (left out), e.g.:")
            lines.extend(f"    {m}" for m in self.missing[:10])
        else:
            lines.append("  missing video files: 0")
        if self.probe is not None:
            lines.append(self.probe.summary())
        lines.append(f"  set data.video_root={self.root} and data.manifest_dir={self.out_dir}")
        return "\n".join(lines)


def read_text_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; tolerant of a BOM and Windows line endings."""
    return [line.strip() for line in annotation_text(path).splitlines() if line.strip()]


def annotation_text(path: Path) -> str:
    """An annotation file's text (split lists, CSVs); missing, a folder, unreadable, empty or not
    UTF-8 is one BuildError line naming it (:mod:`stop_lightning.reading`)."""
    return read_text(
        path, "annotation file", BuildError, "re-download or re-extract the dataset's annotations"
    )


# Python types by their JSON names, for messages ("expected ..., got a JSON array").
_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def read_json(path: Path, what: str, expected: type | None = None) -> Any:
    """The JSON value in annotation file ``path``; ``what`` describes it for the messages (e.g.
    ``'["v_<id>", ...]'``), ``expected`` (``dict`` or ``list``) is the type it must be. A missing,
    unreadable, empty, cut-short or non-JSON file is one BuildError line naming it. A BOM is ignored."""
    redo = "re-download or re-extract it"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise BuildError(f"annotation file {path} does not exist; expected {what}") from err
    except UnicodeDecodeError as err:
        raise BuildError(f"{path}: not UTF-8 text (byte {err.start}); expected {what}: {redo}") from err
    except OSError as err:
        raise BuildError(f"cannot read {path}: {err.strerror or err}; expected {what}") from err
    if not text.strip():
        raise BuildError(f"{path}: empty file; expected {what}: {redo}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # Past the last character, or a string never closed: the file ends in the middle of a value.
        if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
            raise BuildError(f"{path}: cut short (the JSON ends early); expected {what}: {redo}") from err
        raise BuildError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); expected {what}"
        ) from err
    if expected is not None and not isinstance(data, expected):
        kind = _JSON_NAMES.get(type(data), "null")
        raise BuildError(f"{path}: expected {what}, got a JSON {kind}")
    return data


def find_file(name: str, places: Iterable[Path]) -> Path | None:
    """``place/name`` for the first place that has it, else the first match anywhere below a place."""
    places = [p for p in places if p is not None and p.is_dir()]
    for place in places:
        if (place / name).is_file():
            return place / name
    for place in places:
        for hit in sorted(place.rglob(name)):
            if hit.is_file():
                return hit
    return None


class FileIndex:
    """Case-insensitive lookup of video files under a root (UCF101's lists and folders disagree on case)."""

    def __init__(self, root: Path):
        self.root = root
        self._lower: dict[str, str] | None = None

    def find(self, rel: str) -> str | None:
        rel = rel.replace("\\", "/")
        if (self.root / rel).is_file():
            return rel
        if self._lower is None:
            self._lower = {}
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    full = os.path.relpath(os.path.join(dirpath, f), self.root).replace(os.sep, "/")
                    self._lower.setdefault(full.lower(), full)
        return self._lower.get(rel.lower())


def probe_records(
    records: list[ClipRecord],
    root: Path,
    progress: bool,
    cache: dict[str, tuple[int, float] | str] | None = None,
) -> list[ClipRecord]:
    """Add ``num_frames`` and ``fps`` read from each readable file (``cache`` spares re-opening a file
    listed in several splits; an unreadable file's entry is the reason, and its row stays as it was)."""
    from dataclasses import replace

    cache = {} if cache is None else cache
    out = []
    for rec in tqdm(records, desc="probing videos", unit="clip", disable=not progress):
        if rec.path not in cache:
            cache[rec.path] = probe_file(root / rec.path)
        probed = cache[rec.path]
        out.append(rec if isinstance(probed, str) else replace(rec, num_frames=probed[0], fps=probed[1]))
    return out


# Frames a header may count past the last one that decodes (an edit list or a B-frame delay leaves one
# or two off in many YouTube-derived MP4s): such a file is usable, its row keeps the real count.
HEADER_SLACK = 2


def probe_file(path: Path) -> tuple[int, float] | str:
    """``(num_frames, fps)`` of a video whose header reads and whose end decodes, else the reason
    (empty file, no header, truncated).

    The last ``2 * HEADER_SLACK + 1`` frames the header counts are decoded, and at most ``HEADER_SLACK``
    of them may be missing: a header that over-counts by a frame or two gives a usable row with the
    frames that are there (the loader repeats the last one for the rest), a file cut short is
    unreadable."""
    from ..decode import VideoDecodeError, VideoFile

    try:
        with VideoFile(path) as video:
            n = video.info.num_frames
            video.get_frames(range(max(0, n - 1 - 2 * HEADER_SLACK), n))
            missing = video.stats.missing_frames
            if missing > HEADER_SLACK:  # a short video: the decoder's rule let more than that pass
                return f"truncated: the header says {n} frames, the last {missing} do not decode"
            return n - missing, round(video.info.fps, 4)
    except VideoDecodeError as err:
        return err.reason


@dataclass
class ProbeReport:
    """What ``--probe`` found: every unreadable file once (path relative to the root -> reason)."""

    unreadable: dict[str, str] = field(default_factory=dict)
    dropped_rows: int = 0
    dropped_list: Path | None = None

    def summary(self, limit: int = 20) -> str:
        if not self.unreadable:
            return "  unreadable video files: 0"
        lines = [f"  unreadable video files: {len(self.unreadable)}, e.g.:"]
        lines += [f"    {path}: {why}" for path, why in list(self.unreadable.items())[:limit]]
        if self.dropped_list is not None:
            lines.append(f"  dropped {self.dropped_rows} rows naming them; the list: {self.dropped_list}")
        else:
            lines.append(
                "  the manifests still list them: fix or remove the files, or rerun with --drop-unreadable"
            )
        return "\n".join(lines)


def probe_manifests(report: BuildReport, drop: bool, progress: bool) -> ProbeReport:
    """Open every video the written manifests list (each file once): record ``num_frames`` and ``fps``
    in the rows, collect the unreadable files, and with ``drop`` rewrite the manifests without them and
    write their list to ``<out>/dropped_unreadable.txt``."""
    from ..manifest import read_manifest

    cache: dict[str, tuple[int, float] | str] = {}
    found = ProbeReport()
    for path in [p for p in report.written if p.suffix == ".jsonl"]:
        rows = probe_records(read_manifest(path, allow_empty=True), report.root, progress, cache)
        bad = [r for r in rows if isinstance(cache[r.path], str)]
        for r in bad:
            found.unreadable.setdefault(r.path, str(cache[r.path]))
        if drop and bad:
            rows = [r for r in rows if not isinstance(cache[r.path], str)]
            found.dropped_rows += len(bad)
            key = next((k for k in report.clips if path.with_suffix("").as_posix().endswith(k)), None)
            if key is not None:
                report.clips[key] = len(rows)
                if key in report.num_captions:
                    report.num_captions[key] = caption_count(rows)
        write_manifest(path, rows)
    if drop and found.unreadable:
        found.dropped_list = atomic_write(
            report.out_dir / "dropped_unreadable.txt",
            "".join(f"{p}\t{why}\n" for p, why in found.unreadable.items()),
        )
    return found


def write_split(
    report: BuildReport, out_dir: Path, key: str, stage_rows: dict[str, list[ClipRecord]]
) -> None:
    """Write ``out_dir/<stage>.jsonl`` for each stage and count rows under ``key/<stage>``."""
    for stage, rows in stage_rows.items():
        report.written.append(write_manifest(out_dir / f"{stage}.jsonl", rows))
        name = f"{key}/{stage}" if key else stage
        report.clips[name] = len(rows)
        if any(r.captions for r in rows):
            report.num_captions[name] = caption_count(rows)


def caption_count(rows: list[ClipRecord]) -> int:
    """The captions the summary counts: every caption of every row (a paragraph's sentences each)."""
    return sum(len(r.captions) for r in rows)


def write_class_list(report: BuildReport, out_dir: Path, names: list[str]) -> None:
    report.written.append(write_classes(out_dir / CLASSES_FILE, names))
    report.num_classes = len(names)


def write_splits(
    report: BuildReport, splits: dict[str, dict[str, list[ClipRecord]]], probe: bool, progress: bool
) -> None:
    """Write ``<out_dir>/<split key>/<stage>.jsonl`` for every split (key ``""``: ``out_dir`` itself)
    and stage; with ``probe``, each distinct row list (val and test are often one) is probed once
    first, every file opened once."""
    if probe:
        cache: dict[str, tuple[int, float] | str] = {}
        probed: dict[int, list[ClipRecord]] = {}
        for stages in splits.values():
            for rows in stages.values():
                if id(rows) not in probed:
                    probed[id(rows)] = probe_records(rows, report.root, progress, cache)
        splits = {
            key: {stage: probed[id(rows)] for stage, rows in stages.items()} for key, stages in splits.items()
        }
    for key, stages in splits.items():
        write_split(report, report.out_dir / key, key, stages)


def finish_recognition(
    report: BuildReport,
    classes: list[str],
    splits: dict[str, dict[str, list[ClipRecord]]],
    missing: list[str],
    probe: bool,
    progress: bool,
    no_videos: str,
) -> BuildReport:
    """What every recognition builder ends with: ``classes.txt``, then each split's
    ``train/val/test.jsonl`` (``splits``: ``"split1"`` or ``""`` -> stage -> rows; probed first with
    ``probe``), and the ``missing`` files in the report. No training row in any split raises
    ``no_videos`` (a line that says what ``--root`` should hold), before anything is written."""
    if not any(stages["train"] for stages in splits.values()):
        raise BuildError(no_videos)
    write_class_list(report, report.out_dir, classes)
    write_splits(report, splits, probe, progress)
    report.missing = missing
    return report
