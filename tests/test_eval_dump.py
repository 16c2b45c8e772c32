"""`stop-lightning eval --dump`: the dumped raw scores, re-scored here with NumPy and the csv module,
give exactly the figures the command printed, over exactly the manifest's clips and captions."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stop_lightning.cli import main
from stop_lightning.config import load_config
from stop_lightning.data.registry import synthetic_layout
from stop_lightning.data.sources import video_sources
from stop_lightning.tasks.factory import build_datamodule

pytestmark = pytest.mark.slow

RECOGNITION = [  # the demo_run fixture's data
    "data.synthetic_clips_per_class=8",
    "data.synthetic_classes=4",
    "data.synthetic_looks=0",
]
RETRIEVAL = [  # the retrieval_run fixture's data
    "data.synthetic_clips_per_class=8",
    "task.name=retrieval",
    "data.synthetic_heldout_looks=false",
    "name=demo_retrieval",
]


def with_one_unreadable(cache_dir, tmp_path: Path, data: list[str]) -> list[str]:
    """Overrides that read a copy of ``data``'s synthetic set whose second test video is garbage,
    scored as a miss (``data.bad_video=skip``)."""
    cfg = load_config("demo", [f"paths.cache_dir={cache_dir}", *data])
    video_root, manifest_dir = video_sources(cfg.data, cfg.task.name, cache_dir)
    videos, manifests = tmp_path / "videos", tmp_path / "manifests"
    shutil.copytree(video_root, videos)
    shutil.copytree(manifest_dir, manifests)
    test_manifest = sorted(manifests.rglob("test.jsonl"))[0]  # split1/test.jsonl or test.jsonl
    second = json.loads(test_manifest.read_text().splitlines()[1])
    (videos / second["path"]).write_bytes(b"not a video" * 50)
    return [
        *data,
        f"data.dataset={synthetic_layout(cfg.task.name).name}",
        f"data.video_root={videos}",
        f"data.manifest_dir={manifests}",
        "data.bad_video=skip",
    ]


def run_eval(capsys, cache_dir, out: Path, data: list[str], ckpt: Path | None = None):
    """``eval --dump`` through the command line -> (overrides, stdout, the dump's path as printed)."""
    overrides = [
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
        *data,
    ]
    capsys.readouterr()
    args = ["eval", "demo", "--dump", *(["--ckpt", str(ckpt)] if ckpt else []), *overrides]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    line = next(line for line in stdout.splitlines() if line.startswith("scores: "))
    path = Path(line.split()[1])
    assert path.is_file() and path.parent.parent.parent == out, path  # <out>/<name>/<stamp>/<file>
    assert not list(path.parent.rglob("*.tmp"))
    assert json.loads((path.parent / "run_info.json").read_text())["evaluated"]["scores"] == path.name
    return overrides, stdout, path


def printed(stdout: str, key: str) -> str:
    """The metrics table's value of ``key`` as printed (``test/top1      0.5000``)."""
    rows = [line.split() for line in stdout.splitlines()]
    return next(row[1] for row in rows if len(row) == 2 and row[0] == key)


def manifest_rows(cache_dir, overrides: list[str]) -> tuple[list[dict], list[str]]:
    """The test manifest's rows, read as JSON lines, and the dataset's class list."""
    cfg = load_config("demo", overrides)
    dm = build_datamodule(cfg.data, cfg.task.name, 64, (0.5,) * 3, (0.5,) * 3, cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup("test")
    # recognition: <manifests>/split<k>/test.jsonl; retrieval: <manifests>/test.jsonl
    path = dm.manifest_path("test") if hasattr(dm, "manifest_path") else dm.manifest_dir / "test.jsonl"
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()], list(getattr(dm, "class_names", []))


def check_class_scores(path: Path, manifest: tuple[list[dict], list[str]], stdout: str) -> int:
    """Checks the CSV against the manifest and the printed figures; returns its unreadable clips."""
    rows, class_names = manifest
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], table[1:]
    first = header.index("score:" + class_names[0])
    assert header[first:] == ["score:" + n for n in class_names]
    assert len(body) == len(rows)  # one row per test clip, each once
    assert sorted(r[header.index("path")] for r in body) == sorted(r["path"] for r in rows)
    scores = np.array([[float(v) for v in r[first:]] for r in body])  # [N, C]
    labels = np.array([int(r[header.index("label")]) for r in body])
    unreadable = np.array([r[header.index("unreadable")] == "1" for r in body])
    by_path = {r["path"]: r["label"] for r in rows}
    assert [by_path[r[header.index("path")]] for r in body] == labels.tolist()
    assert [class_names[i] for i in labels] == [r[header.index("label_name")] for r in body]
    predicted = scores.argmax(1)
    assert predicted.tolist() == [int(r[header.index("predicted")]) for r in body]
    top1 = np.mean((predicted == labels) & ~unreadable)
    assert f"{top1:.4f}" == printed(stdout, "test/top1")
    assert f"{unreadable.sum():.4f}" == printed(stdout, "test/unreadable")
    return int(unreadable.sum())


def test_recognition_dump_rescores_to_the_printed_top1(demo_run, cache_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "trained")
    overrides, stdout, path = run_eval(capsys, cache_dir, tmp_path, RECOGNITION, ckpt=demo_run.ckpt)
    assert path.name == "test_scores.csv"
    assert check_class_scores(path, manifest_rows(cache_dir, overrides), stdout) == 0


def test_zero_shot_recognition_dump_with_two_views_and_an_unreadable_video(
    cache_dir, tmp_path, capsys, monkeypatch
):
    """No checkpoint; each clip's scores the mean of 2 views' probabilities; one video a miss."""
    monkeypatch.setenv("STOP_RUN_STAMP", "zero")
    data = [*RECOGNITION, "model.preset=zero_shot", "data.protocol=supervised", "data.test_clips=2"]
    data = with_one_unreadable(cache_dir, tmp_path, data)
    overrides, stdout, path = run_eval(capsys, cache_dir, tmp_path, data)
    assert check_class_scores(path, manifest_rows(cache_dir, overrides), stdout) == 1


def t2v_r1(sim: np.ndarray, caption_video: np.ndarray, unreadable: np.ndarray) -> float:
    """Text-to-video R@1 (%), ties ranked pessimistically; an unreadable video ranks last for its own
    captions and below every readable video for the others (docs/metrics.md)."""
    own = sim[np.arange(len(sim)), caption_video]  # [Q]
    others = np.ones_like(sim, dtype=bool) & ~unreadable[None, :]
    others[np.arange(len(sim)), caption_video] = False
    rank = 1 + ((sim >= own[:, None]) & others).sum(1)
    rank[unreadable[caption_video]] = sim.shape[1]
    return 100.0 * float(np.mean(rank == 1))


def check_similarity(path: Path, manifest: tuple[list[dict], list[str]], stdout: str) -> int:
    """Checks the arrays against the manifest and the printed figures; returns the unreadable videos."""
    rows, _ = manifest
    with np.load(path, allow_pickle=False) as dump:  # plain arrays: no pickled objects
        arrays = {k: dump[k] for k in dump.files}
    sim, caption_video = arrays["similarity"], arrays["caption_video"]
    captions = [(r["path"], k, c) for r in rows for k, c in enumerate(r["captions"])]
    assert sim.shape == (len(captions), len(rows))  # one row per caption, one column per video
    assert arrays["video_paths"].tolist() == [r["path"] for r in rows]
    assert arrays["captions"].tolist() == [c for _, _, c in captions]
    assert [arrays["video_paths"][v] for v in caption_video] == [p for p, _, _ in captions]
    ids = [r.get("video_id", r["path"]) for r in rows]
    assert arrays["video_ids"].tolist() == ids
    assert arrays["caption_ids"].tolist() == [
        f"{ids[v]}#{k}" for v, (_, k, _) in zip(caption_video, captions)
    ]
    assert f"{t2v_r1(sim, caption_video, arrays['unreadable']):.4f}" == printed(stdout, "test/t2v_R1")
    assert f"{arrays['unreadable'].sum():.4f}" == printed(stdout, "test/unreadable")
    return int(arrays["unreadable"].sum())


def test_retrieval_dump_rescores_to_the_printed_r1(retrieval_run, cache_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "trained")
    overrides, stdout, path = run_eval(capsys, cache_dir, tmp_path, RETRIEVAL, ckpt=retrieval_run.ckpt)
    assert path.name == "test_similarity.npz"
    assert check_similarity(path, manifest_rows(cache_dir, overrides), stdout) == 0


def test_zero_shot_retrieval_dump_with_an_unreadable_video(cache_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STOP_RUN_STAMP", "zero")
    data = with_one_unreadable(cache_dir, tmp_path, [*RETRIEVAL, "model.preset=zero_shot"])
    overrides, stdout, path = run_eval(capsys, cache_dir, tmp_path, data)
    assert check_similarity(path, manifest_rows(cache_dir, overrides), stdout) == 1
