"""`make motion-table`'s data: mirror classes hold the same frames in opposite order, and the pair
accuracy read from a confusion matrix, against hand-counted cases. No training here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import motion  # noqa: E402
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


def test_keep_reruns_some_rows_and_keeps_the_others(tmp_path, monkeypatch, capsys):
    """``--keep``: the named methods are rerun (here a stand-in for training: 2 seeds x 2 thread
    counts each), the other rows and the earlier commands come from the .json; a file made with
    another set or training is refused."""
    out = tmp_path / "table.md"

    def stats(v: float) -> dict:
        return {"mean": v, "min": v, "max": v, "n": 4}

    row = {"top1": stats(0.25), "pair_acc": stats(0.5), "seconds": stats(1.0)}
    args = {"clips": "18", "frames": "8", "size": "32", "epochs": "8", "seed": "0"}
    args |= {"seeds": "0,1", "threads": "1,2"}
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "args": args,
                "commands": ["python benchmarks/motion.py"],
                "results": {"vop": row, "stop_fast": row, "dgl": None},
            }
        )
    )
    monkeypatch.setattr(motion, "write_dataset", lambda *a: (tmp_path, tmp_path))
    ran = []

    def fake_run(jobs, logs, cores=None):
        ran.extend((j.key, j.seed, j.threads) for j in jobs)
        # vop_c: top-1 0.5 + seed/10 + threads/100, so the mean, min and max are known.
        return [
            {"key": j.key, "seed": j.seed, "threads": j.threads, "seconds": 2.0, "run_dir": "y"}
            | {"metrics": {"test/top1": 0.5 + j.seed / 10 + j.threads / 100}}
            for j in jobs
        ]

    monkeypatch.setattr(motion, "run_jobs", fake_run)
    monkeypatch.setattr(motion, "with_pair_accuracy", lambda r, m: {**r, "pair_acc": 0.75})
    keep = ["--methods", "vop_c,vop", "--keep", "--out", str(out), "--seeds", "0,1", "--threads", "1,2"]
    motion.main(keep)
    assert sorted(ran) == sorted((m, s, t) for m in ("vop_c", "vop") for s in (0, 1) for t in (1, 2))
    written = json.loads(out.with_suffix(".json").read_text())
    assert list(written["results"]) == ["stop_fast", "dgl", "vop", "vop_c"]  # the METHODS order
    assert written["results"]["stop_fast"] == row and written["results"]["dgl"] is None
    top1 = written["results"]["vop_c"]["top1"]
    assert top1["n"] == 4 and top1["min"] == 0.51 and top1["max"] == 0.62
    assert abs(top1["mean"] - (0.51 + 0.52 + 0.61 + 0.62) / 4) < 1e-12
    assert top1["threads"]["2"]["min"] == 0.52 and top1["seeds"] == [0, 1]
    # The printed command leaves out where the files went (--out): the same training wherever they go.
    rerun = "python benchmarks/motion.py --methods vop_c,vop --keep --seeds 0,1 --threads 1,2"
    assert written["commands"] == ["python benchmarks/motion.py", rerun]
    text = out.read_text()
    assert "| `stop_fast` | 25.0 (25.0) | 50.0 (50.0) |" in text
    assert "| `vop_c` | 56.5 (51.0-62.0) | 75.0 (75.0) |" in text
    with pytest.raises(SystemExit):
        motion.main([*keep, "--epochs", "4"])
    assert "made with other epochs; rerun every method instead" in capsys.readouterr().err
