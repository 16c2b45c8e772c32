"""``stop-lightning preprocess`` and ``stop-lightning shard``: run them on an experiment's data and say
which overrides read the result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .registry import get_dataset
from .sources import video_sources
from .stored_copies import settings_from_config


def store_main(command: str, cfg: Any, args: argparse.Namespace) -> int:
    flags = {"short_side": args.short_side, "fps": args.fps}
    flags.update({k: getattr(args, k) for k in ("codec", "gop", "jpeg_quality") if hasattr(args, k)})
    settings = settings_from_config(cfg.data, **flags)
    video_root, manifest_dir = video_sources(cfg.data, cfg.task.name, cfg.paths.cache_dir)
    out = Path(args.out)
    print(f"{command}: {manifest_dir} ({video_root}) -> {out}; {settings}")
    if command == "preprocess":
        from .preprocess import REPORT, preprocess

        report = preprocess(video_root, manifest_dir, out, settings, workers=args.workers)
        print(
            f"{report['done']} videos written, {report['existing']} already there, "
            f"{len(report['failed'])} failed (report: {out / REPORT})"
        )
        for bad in report["failed"][:10]:
            print(f"  failed: {bad['path']}: {bad['reason']}")
        # A generated (synthetic) dataset would be generated again in place of the copies.
        dataset = "data.dataset=manifest " if get_dataset(cfg.data.dataset).generated else ""
        print(
            f"use them with: {dataset}data.video_root={report['video_root']} "
            f"data.manifest_dir={report['manifest_dir']}"
        )
        return 1 if report["failed"] else 0
    from .shards import write_shards

    report = write_shards(video_root, manifest_dir, out, settings, workers=args.workers)
    for rel, n in report["written"].items():
        print(f"  {out}/{rel}: {n} videos (each once, from {report['manifests']} manifests)")
    if report["existing"]:
        print(f"  already complete, kept: {', '.join(report['existing'])}")
    for bad in report["bad"][:10]:
        print(f"  unreadable (stored as bad, data.bad_video decides): {bad['path']}: {bad['reason']}")
    print(f"use them with: data.format=shards data.shard_dir={out} data.manifest_dir={manifest_dir}")
    return 1 if report["bad"] else 0
