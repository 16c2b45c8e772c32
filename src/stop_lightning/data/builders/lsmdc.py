"""LSMDC (movie description): tab-separated files without a header, ``LSMDC16_annos_training.csv``,
``LSMDC16_annos_val.csv`` and the 1000-clip test set ``LSMDC16_challenge_1000_publictect.csv``
(spelled so in the release). Columns: clip id, start aligned, end aligned, start extracted, end
extracted, sentence. Clips are ``<movie>/<clip id>.avi`` (``<movie>`` is the clip id up to its last
``_``: ``0001_American_Beauty_00.00.51.926-00.00.54.129`` is in ``0001_American_Beauty/``).

- A clip id can repeat across rows: its sentences become the captions of one row (counted).
- The sentence is everything after the fifth tab (it may hold a tab itself).
- Clips listed without a file are left out and counted; a row with fewer than six columns stops
  the build with its file and line.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import VIDEO_SUFFIXES, BuildError, BuildReport, read_text_lines
from .captioned import (
    CaptionReport,
    VideoFiles,
    caption_rows,
    clean_captions,
    finish,
    optional,
    write_clip_as,
)

NAME = "lsmdc"
FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",  # sic: "publictect" is the released name
}
TEST_FILE_CORRECTED = "LSMDC16_challenge_1000_publictest.csv"  # accepted too, if someone renamed it
COLUMNS = ("clip id", "start aligned", "end aligned", "start extracted", "end extracted", "sentence")
VIDEO_DIR = "avi"


def movie_of(clip_id: str) -> str:
    """The per-movie folder of a clip: the id up to its last ``_``."""
    return clip_id.rsplit("_", 1)[0]


def read_annotations(path: Path) -> tuple[list[str], dict[str, list[str]], int]:
    """(clip ids in first-seen order, clip id -> sentences, rows whose clip id was seen before)."""
    order: list[str] = []
    sentences: dict[str, list[str]] = {}
    repeats = 0
    for lineno, line in enumerate(read_text_lines(path), start=1):
        parts = line.split("\t", len(COLUMNS) - 1)
        if len(parts) != len(COLUMNS):
            raise BuildError(
                f"{path}:{lineno}: expected {len(COLUMNS)} tab-separated columns "
                f"({', '.join(COLUMNS)}), got {len(parts)}"
            )
        clip = parts[0].strip()
        if clip in sentences:
            repeats += 1
        else:
            order.append(clip)
        sentences.setdefault(clip, []).append(parts[-1])
    return order, sentences, repeats


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    report = CaptionReport(NAME, root, out_dir)
    files = VideoFiles(root)

    def locate(clip_id: str) -> str | None:
        expected = [f"{movie_of(clip_id)}/{clip_id}{s}" for s in VIDEO_SUFFIXES]
        hits = files.stem(clip_id, VIDEO_SUFFIXES)
        preferred = [h for h in hits if any(h.endswith(e) for e in expected)]
        return (preferred or hits or [None])[0]

    stages = {}
    for stage, name in FILES.items():
        path = optional(name, root, annotations)
        if path is None and stage == "test":
            path = optional(TEST_FILE_CORRECTED, root, annotations)
        if path is None:
            raise BuildError(
                f"{name} not found under {annotations or root}; pass the folder holding the LSMDC16 "
                "annotation files with --annotations"
            )
        order, sentences, repeats = read_annotations(path)
        if repeats:
            report.notes.append(
                f"{path.name}: {repeats} rows repeat an earlier clip id "
                "(their sentences joined that clip's captions)"
            )
        captions = {clip: clean_captions(report, texts) for clip, texts in sentences.items()}
        stages[stage] = caption_rows(report, order, captions, locate)
    return finish(report, stages, probe, progress)


# ---------------------------------------------------------------------------------------------
# Synthetic layout
# ---------------------------------------------------------------------------------------------

MOVIES = ("0001_American_Beauty", "1012_Unbreakable", "3001_21_JUMP_STREET")
FILELESS_CLIP = "0001_American_Beauty_01.59.59.000-02.00.01.000"  # in the test file, no video
NON_ASCII = "SOMEONE's café sign reads « Crème brûlée »."


def clip_id(idx: int) -> str:
    seconds = 10 + idx * 3
    start = f"00.{seconds // 60:02d}.{seconds % 60:02d}.{idx % 1000:03d}"
    end = f"00.{(seconds + 2) // 60:02d}.{(seconds + 2) % 60:02d}.{idx % 1000:03d}"
    return f"{MOVIES[idx % len(MOVIES)]}_{start}-{end}"


def stage_of(j: int) -> str:
    return ("test", "train", "val")[j % 3]


def rows_of(clips: SyntheticClips, c: int, j: int, idx: int) -> list[str]:
    """Sentences of clip ``idx`` (one row each): one usually, two for a repeated clip id."""
    caps = clips.captions(c, j)
    sentences = [f"SOMEONE sees {caps[0]}."]
    if idx % 4 == 1:
        sentences.append(f"Then {caps[1]}\tslowly.")  # a repeated clip id, with a tab inside the sentence
    if idx % 4 == 2:
        sentences.append(NON_ASCII)
    if idx % 4 == 3:
        sentences.append(sentences[0])  # the same sentence on two rows
    return sentences


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """``root/avi/<movie>/<clip id>.avi`` and the three annotation files in ``root``."""
    n = len(clips.class_names)
    lines: dict[str, list[str]] = {s: [] for s in FILES}
    for j in range(clips.clips_per_class):
        for c in range(n):
            idx = j * n + c
            clip = clip_id(idx)
            write_clip_as(clips, root / VIDEO_DIR / movie_of(clip) / f"{clip}.avi", c, j)
            times = clip.rsplit("_", 1)[1].split("-")
            for sentence in rows_of(clips, c, j, idx):
                lines[stage_of(j)].append("\t".join([clip, times[0], times[1], times[0], times[1], sentence]))
    lines["test"].append("\t".join([FILELESS_CLIP, "0", "0", "0", "0", "SOMEONE waits."]))
    for stage, name in FILES.items():
        (root / name).write_text("".join(f"{line}\n" for line in lines[stage]), encoding="utf-8")


register_dataset(
    DatasetSpec(
        name=NAME,
        task="retrieval",
        description=(
            "LSMDC: movie clips, headerless TSVs (LSMDC16_annos_*.csv, ..._publictect.csv), per-movie folders"
        ),
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint=(
            "<folder with LSMDC16_annos_training.csv, LSMDC16_annos_val.csv and "
            "LSMDC16_challenge_1000_publictect.csv>"
        ),
        multi_caption=True,
    )
)
