"""`stop-lightning eval --dump`: a test's raw scores, in files any tool reads (docs/metrics.md, "Scores
of a test, for offline use").

Recognition: ``test_scores.csv``, one row per test clip, the class probabilities the metrics rank.
Retrieval: ``test_similarity.npz``, the caption-by-video similarity matrix with the ids of both sides.
Both are written atomically and hold only numbers and strings (``np.load(..., allow_pickle=False)``
and ``csv``/pandas read them).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stop_lightning.data.manifest import ClipRecord
from stop_lightning.fileio import atomic_path, atomic_write

CLASS_SCORES_FILE = "test_scores.csv"
SIMILARITY_FILE = "test_similarity.npz"
# The columns before the per-class scores; each class's column is SCORE_PREFIX + its name.
CLIP_COLUMNS = ("row", "path", "video_id", "label", "label_name", "predicted", "predicted_name", "unreadable")
SCORE_PREFIX = "score:"


def clip_id(record: ClipRecord) -> str:
    """A clip's id: its manifest ``video_id``, else its path."""
    return record.video_id if record.video_id is not None else record.path


def write_class_scores(
    folder: Path,
    records: Sequence[ClipRecord],
    class_names: Sequence[str],
    index: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    unreadable: torch.Tensor,
) -> Path:
    """``index [N]`` rows of ``records``; ``scores [N, C]`` in class-list order; ``labels [N]``;
    ``unreadable [N]`` bool (scored as a miss whatever its scores). Floats are written as Python's
    shortest round-trip text, so reading them back gives the very values the metrics ranked."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CLIP_COLUMNS, *(SCORE_PREFIX + name for name in class_names)])
    predicted = scores.argmax(-1) if scores.numel() else torch.zeros(0, dtype=torch.long)  # [N]
    for row, label, pred, bad, values in zip(
        index.tolist(), labels.tolist(), predicted.tolist(), unreadable.tolist(), scores.double().tolist()
    ):
        record = records[row]
        writer.writerow(
            [row, record.path, clip_id(record), label, class_names[label], pred, class_names[pred], int(bad)]
            + [repr(v) for v in values]
        )
    return atomic_write(folder / CLASS_SCORES_FILE, out.getvalue())


def write_similarity(
    folder: Path,
    records: Sequence[ClipRecord],
    captions_per_video: Sequence[Sequence[str]],
    video_rows: torch.Tensor,
    caption_positions: torch.Tensor,
    similarity: torch.Tensor,
    caption_video: torch.Tensor,
    unreadable: torch.Tensor,
) -> Path:
    """``video_rows [V]``: each similarity column's row of ``records``; ``caption_positions [Q]``: each
    similarity row's position in the split's caption list (the captions of row 0, then of row 1, ...);
    ``similarity [Q, V]``; ``caption_video [Q]``: each caption's column; ``unreadable [V]`` bool."""
    ids, numbers, texts = [], [], []  # every caption of the split: its video's id and its number there
    for record, captions in zip(records, captions_per_video):
        for k, text in enumerate(captions):
            ids.append(clip_id(record))
            numbers.append(k)
            texts.append(text)
    kept = caption_positions.tolist()
    rows = video_rows.tolist()
    arrays = {
        "similarity": similarity.float().cpu().numpy(),  # [Q, V]
        "video_ids": np.array([clip_id(records[r]) for r in rows], dtype=str),  # [V]
        "video_paths": np.array([records[r].path for r in rows], dtype=str),  # [V]
        "video_rows": np.asarray(rows, dtype=np.int64),  # [V]
        "unreadable": unreadable.cpu().numpy().astype(bool),  # [V]
        "captions": np.array([texts[p] for p in kept], dtype=str),  # [Q]
        "caption_ids": np.array([f"{ids[p]}#{numbers[p]}" for p in kept], dtype=str),  # [Q]
        "caption_video": caption_video.cpu().numpy().astype(np.int64),  # [Q]
    }
    path = folder / SIMILARITY_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path
