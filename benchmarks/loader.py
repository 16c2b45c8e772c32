"""Decoding throughput of the training loader: clips/s for a few worker counts and clip lengths.

``benchmarks/run.py`` (or a notebook) calls :func:`loader_throughput` and :func:`markdown_table`;
with ``data.dataset=synthetic`` it needs nothing downloaded.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from stop_lightning.data.datamodules import as_data_config
from stop_lightning.tasks.factory import build_datamodule

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def loader_throughput(
    data_cfg: Any,
    cache_dir: str | Path,
    image_size: int = 224,
    workers: tuple[int, ...] = (0, 1, 2),
    frames: tuple[int, ...] = (8, 16),
    batches: int = 10,
    task: str = "recognition",
) -> list[dict[str, float]]:
    """Decoded, transformed clips per second of the train loader, one row per (workers, frames).

    The first batch (worker start-up) is not timed.
    """
    rows = []
    base = as_data_config(data_cfg)
    for t in frames:
        for w in workers:
            cfg = replace(base, num_frames=t, num_workers=w, persistent_workers=False)
            dm = build_datamodule(cfg, task, image_size, CLIP_MEAN, CLIP_STD, seed=0, cache_dir=cache_dir)
            dm.setup("fit")
            it = iter(dm.train_dataloader())
            next(it)
            clips, start = 0, time.perf_counter()
            for _ in range(batches):
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(dm.train_dataloader())
                    batch = next(it)
                clips += batch["video"].shape[0]
            elapsed = time.perf_counter() - start
            rows.append(
                {
                    "frames": t,
                    "workers": w,
                    "clips": clips,
                    "seconds": elapsed,
                    "clips_per_s": clips / elapsed,
                }
            )
    return rows


def markdown_table(rows: list[dict[str, float]], title: str = "Data loader throughput") -> str:
    lines = [f"### {title}", "", "| frames | workers | clips/s |", "|---:|---:|---:|"]
    lines += [f"| {r['frames']} | {r['workers']} | {r['clips_per_s']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"
