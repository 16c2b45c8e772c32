"""What the builders of the captioned retrieval sets share (ActivityNet Captions, DiDeMo, VATEX, MSVD,
LSMDC): a report of what was dropped and why, caption cleaning, video lookup by file stem, and the
synthetic-layout helper that writes a clip under any file name. No dataset is registered here.

Rules every such builder follows (``data_manifests/README.md``):

- a video listed in a split without a caption, or without a file under ``--root``, is left out and
  counted (the summary names a few); it never makes a row with an empty caption or a dangling path;
- captions are stripped; empty ones are dropped and counted; duplicates are kept (the papers'
  protocols count every caption of a video as a query) and counted;
- text is read and written as UTF-8 (non-ASCII sentences pass through unchanged).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..manifest import ClipRecord
from ..registry import SyntheticClips
from . import BuildError, BuildReport, find_file, write_splits

NO_CAPTION = "listed without a caption"
NO_FILE = "listed without a video file"


@dataclass
class CaptionReport(BuildReport):
    """A :class:`BuildReport` that also counts what was dropped (reason -> ids) and what was noticed."""

    dropped: dict[str, list[str]] = field(default_factory=dict)
    duplicate_captions: int = 0  # a caption repeated within a video (kept)
    empty_captions: int = 0  # blank captions (dropped)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, video_id: str) -> None:
        self.dropped.setdefault(reason, []).append(video_id)
        if reason == NO_FILE:
            self.missing.append(video_id)

    def summary(self) -> str:
        lines = [super().summary()]
        for reason, ids in self.dropped.items():
            if reason == NO_FILE:
                continue  # the base summary lists them as missing video files
            lines.append(f"  left out, {reason}: {len(ids)}, e.g. {', '.join(ids[:5])}")
        lines.append(f"  duplicate captions within a video (kept): {self.duplicate_captions}")
        if self.empty_captions:
            lines.append(f"  empty captions (dropped): {self.empty_captions}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def clean_captions(report: CaptionReport, texts: Iterable[str]) -> list[str]:
    """Stripped, non-empty captions in their order; counts empties (dropped) and duplicates (kept)."""
    out = []
    for text in texts:
        text = text.strip()
        if text:
            out.append(text)
        else:
            report.empty_captions += 1
    report.duplicate_captions += sum(n - 1 for n in Counter(out).values())
    return out


def paragraph(sentences: Iterable[str]) -> str:
    """A video's sentences as one query: stripped and joined by single spaces, in their order."""
    return " ".join(s.strip() for s in sentences if s.strip())


def require(name: str, root: Path, annotations: Path | None, hint: str) -> Path:
    """``name`` in ``--annotations`` (or anywhere under ``--root``), or a BuildError that says what
    to pass."""
    found = find_file(name, [annotations] if annotations is not None else [root])
    if found is None:
        raise BuildError(f"{name} not found under {annotations or root}; {hint}")
    return found


def optional(name: str, root: Path, annotations: Path | None) -> Path | None:
    return find_file(name, [annotations] if annotations is not None else [root])


class VideoFiles:
    """Every file under a root, looked up by its name or by its stem (name minus the last extension)."""

    def __init__(self, root: Path):
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                self.by_name.setdefault(f, []).append(rel)
                self.by_stem.setdefault(os.path.splitext(f)[0], []).append(rel)
        for paths in (*self.by_name.values(), *self.by_stem.values()):
            paths.sort()

    def stem(self, stem: str, suffixes: tuple[str, ...]) -> list[str]:
        """Files named ``<stem><suffix>`` for a suffix in ``suffixes`` (case-insensitive), sorted."""
        return [p for p in self.by_stem.get(stem, []) if os.path.splitext(p)[1].lower() in suffixes]


def caption_rows(
    report: CaptionReport,
    ids: Iterable[str],
    captions: dict[str, list[str]],
    locate,
) -> list[ClipRecord]:
    """One row per listed id that has captions and a file (``locate(id) -> path | None``); the rest
    dropped."""
    rows = []
    for vid in ids:
        caps = captions.get(vid)
        if not caps:
            report.drop(NO_CAPTION, vid)
            continue
        path = locate(vid)
        if path is None:
            report.drop(NO_FILE, vid)
            continue
        rows.append(ClipRecord(path=path, captions=tuple(caps), video_id=vid))
    return rows


def finish(
    report: CaptionReport, stages: dict[str, list[ClipRecord]], probe: bool, progress: bool
) -> CaptionReport:
    """Probe (optional) and write ``train/val/test.jsonl``; a split left empty is an error naming the
    dataset."""
    for stage, rows in stages.items():
        if not rows:
            raise BuildError(
                f"{report.dataset}: no {stage} video has both captions and a file under {report.root} "
                f"({len(report.missing)} listed videos missing); check --root and --annotations"
            )
    write_splits(report, {"": stages}, probe, progress)
    return report


def write_clip_as(clips: SyntheticClips, path: Path, c: int, j: int) -> Path:
    """Synthetic clip ``(c, j)`` under any file name: encoded as MP4 (AVI for ``.avi``), then renamed
    (``x.3gp``, ``x.mov``: FFmpeg recognises the container by its content, not by the name)."""
    if path.suffix in (".mp4", ".avi"):
        return clips.write(path, c, j)
    tmp = clips.write(path.with_name(path.name + ".tmp.mp4"), c, j)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
