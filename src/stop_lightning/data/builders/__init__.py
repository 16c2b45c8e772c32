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
    cache: dict[str, tuple[int, float] | None] | None = None,
) -> list[ClipRecord]:
    """Add ``num_frames`` and ``fps`` read from each file's header (``cache`` spares re-opening a file
    listed in several splits)."""
    from dataclasses import replace

    from ..decode import VideoDecodeError, probe_video

    cache = {} if cache is None else cache
    out = []
    for rec in tqdm(records, desc="probing videos", unit="clip", disable=not progress):
        if rec.path not in cache:
            try:
                info = probe_video(root / rec.path)
                cache[rec.path] = (info.num_frames, round(info.fps, 4))
            except VideoDecodeError:
                cache[rec.path] = None  # unreadable: the row stays, the DataModule's bad_video policy decides
        probed = cache[rec.path]
        out.append(rec if probed is None else replace(rec, num_frames=probed[0], fps=probed[1]))
    return out


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
) -> BuildReport:
    """Read ``dataset`` from ``root`` (+ ``annotations``) and write all splits' manifests to ``out_dir``.

    ``probe`` opens every video to record ``num_frames`` and ``fps`` in the rows (slower).
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
    return build(
        root=root, annotations=ann, out_dir=Path(out_dir), probe=probe, progress=progress
    )


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
    parser.add_argument("--probe", action="store_true", help="open every video to record num_frames and fps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        report = build_manifests(
            args.dataset, args.root, args.annotations, args.out, probe=args.probe, progress=not args.quiet
        )
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
