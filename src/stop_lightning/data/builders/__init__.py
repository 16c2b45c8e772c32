"""One module per dataset (``<name>.py``), each registering itself in ``data/registry.py``; this file
holds what their builders share.

A builder reads a dataset exactly as it is distributed and writes JSONL manifests.
``stop-lightning manifest <dataset> --root R [--annotations A] --out O`` calls :func:`main`.
Manifest paths are relative to ``--root``: set ``data.video_root`` to that folder. To add a dataset,
see the module docstring of ``data/registry.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ...fileio import atomic_write
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
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise BuildError(f"annotation file {path} does not exist") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


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


def probe_file(path: Path) -> tuple[int, float] | str:
    """``(num_frames, fps)`` of a video whose header reads and whose last frame decodes, else the reason
    (empty file, no header, truncated: the last frame is not there)."""
    from ..decode import VideoDecodeError, VideoFile

    try:
        with VideoFile(path) as video:
            n = video.info.num_frames
            if n < 1:
                return "no frames"
            video.get_frames([n - 1])
            if video.stats.missing_frames:
                return f"truncated: the header says {n} frames, the last one does not decode"
            return n, round(video.info.fps, 4)
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
        rows = probe_records(read_manifest(path), report.root, progress, cache)
        bad = [r for r in rows if isinstance(cache[r.path], str)]
        for r in bad:
            found.unreadable.setdefault(r.path, str(cache[r.path]))
        if drop and bad:
            rows = [r for r in rows if not isinstance(cache[r.path], str)]
            found.dropped_rows += len(bad)
            key = next((k for k in report.clips if path.with_suffix("").as_posix().endswith(k)), None)
            if key is not None:
                report.clips[key] = len(rows)
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
            report.num_captions[name] = sum(len(r.captions) for r in rows)


def write_class_list(report: BuildReport, out_dir: Path, names: list[str]) -> None:
    report.written.append(write_classes(out_dir / CLASSES_FILE, names))
    report.num_classes = len(names)


def build_manifests(
    dataset: str,
    root: str | Path,
    annotations: str | Path | None,
    out_dir: str | Path,
    probe: bool = False,
    progress: bool = True,
    drop_unreadable: bool = False,
) -> BuildReport:
    """Read ``dataset`` from ``root`` (+ ``annotations``) and write all splits' manifests to ``out_dir``.

    ``probe`` opens every video to record ``num_frames`` and ``fps`` in the rows (slower) and lists the
    unreadable ones in ``report.probe``; ``drop_unreadable`` also leaves them out (:func:`probe_manifests`).
    """
    from ..registry import dataset_names, get_dataset

    choices = dataset_names(buildable=True)
    if dataset not in choices or (build := get_dataset(dataset).build) is None:
        raise BuildError(f"no manifest builder for dataset {dataset!r}; choose one of {', '.join(choices)}")
    root = Path(root)
    if not root.is_dir():
        raise BuildError(f"--root {root} is not a directory (expected the extracted {dataset} videos)")
    ann = Path(annotations) if annotations is not None else None
    if ann is not None and not ann.exists():
        raise BuildError(f"--annotations {ann} does not exist")
    # Probing reads the written manifests (probe_manifests), the same way for every dataset.
    report = build(root=root, annotations=ann, out_dir=Path(out_dir), probe=False, progress=progress)
    if probe:
        report.probe = probe_manifests(report, drop_unreadable, progress)
    return report


def main(argv: list[str] | None = None) -> int:
    """``stop-lightning manifest <dataset> --root R [--annotations A] --out O``."""
    from ..registry import dataset_names, get_dataset

    choices = dataset_names(buildable=True)
    parser = argparse.ArgumentParser(
        prog="stop-lightning manifest",
        description="Build JSONL manifests from a dataset laid out as officially distributed.",
        epilog="datasets:\n" + "\n".join(f"  {n:<10} {get_dataset(n).description}" for n in choices),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=choices)
    parser.add_argument(
        "--root", required=True, type=Path, help="folder with the videos (manifest paths are relative to it)"
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="folder with the split/annotation files (default: searched under --root)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. data_manifests/hmdb51")
    parser.add_argument(
        "--probe",
        action="store_true",
        help=(
            "open every video (header and last frame) to record num_frames and fps; "
            "exits 1 if any is unreadable"
        ),
    )
    parser.add_argument(
        "--drop-unreadable",
        action="store_true",
        help=(
            "with --probe: leave unreadable videos out of the manifests and list them in "
            "<out>/dropped_unreadable.txt"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.drop_unreadable and not args.probe:
        parser.error("--drop-unreadable needs --probe (the files are read to find the unreadable ones)")
    try:
        report = build_manifests(
            args.dataset,
            args.root,
            args.annotations,
            args.out,
            probe=args.probe,
            progress=not args.quiet,
            drop_unreadable=args.drop_unreadable,
        )
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    unreadable = report.probe is not None and report.probe.unreadable
    return 1 if unreadable and not args.drop_unreadable else 0
