"""`make motion-table`'s data: mirror classes hold the same frames in opposite order, and the pair
accuracy read from a confusion matrix, against hand-counted cases. No training here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.motion import CLASSES, frames_of, make_look, pair_accuracy  # noqa: E402


def test_mirror_classes_are_the_same_frames_reversed():
    for j in range(3):
        look = make_look(j, 32, seed=0)
        for c in range(0, len(CLASSES), 2):
            forward, backward = frames_of(c, look, 8, 32), frames_of(c + 1, look, 8, 32)
            assert np.array_equal(forward, backward[::-1])
            assert not np.array_equal(forward, backward)  # the motion is visible
            assert not np.array_equal(forward[0], forward[-1])


def test_left_moves_left_and_towards_grows():
    look = make_look(0, 32, seed=0)

    def object_pixels(frame):
        return np.argwhere(np.all(frame == look.colour, axis=-1) | np.all(frame == look.marker, axis=-1))

    left = frames_of(CLASSES.index("move left"), look, 8, 32)
    assert object_pixels(left[-1])[:, 1].mean() < object_pixels(left[0])[:, 1].mean()
    towards = frames_of(CLASSES.index("move towards the camera"), look, 8, 32)
    assert len(object_pixels(towards[-1])) > len(object_pixels(towards[0]))


def test_pair_accuracy_by_hand():
    confusion = np.zeros((4, 4), dtype=int)
    confusion[0, 0], confusion[0, 1], confusion[0, 2] = 3, 1, 5  # 5 outside the pair: not counted
    confusion[1, 1], confusion[1, 0] = 2, 2
    confusion[3, 2] = 4  # always the mirror image
    assert pair_accuracy(confusion) == (3 + 2) / (3 + 1 + 2 + 2 + 4)
    assert pair_accuracy(np.zeros((2, 2), dtype=int)) == 0.0
