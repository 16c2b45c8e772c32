"""What probing the evaluation videos before a run costs (``data.probe_videos``, data/video_probe.py).

    python benchmarks/probe.py                  # 200 copies of each encoding, 1 and 2 threads
    python benchmarks/probe.py --clips 20       # quick

Each public set's encoding (``benchmarks/encodings.py``: UCF101/HMDB51-like MPEG-4 AVI, MSRVTT- and
Kinetics-like H.264 MP4) is written once and copied ``--clips`` times, so every probe opens its own
file (from the page cache: a local disk's best case; a network file system adds its round trips,
which the threads overlap). Prints clips per second and milliseconds per clip, and what 100k clips
would take at that rate.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.encodings import ENCODINGS, write_realistic_video  # noqa: E402
from stop_lightning.data.video_probe import unreadable_videos  # noqa: E402

SAMPLED_FRAMES = 8  # data.num_frames of the reference recognition experiments
PROJECTED_CLIPS = 100_000


def measure(paths: list[Path], threads: int) -> float:
    """Clips per second probing ``paths`` on ``threads`` threads (every file must pass)."""
    start = time.perf_counter()
    bad = unreadable_videos(paths, SAMPLED_FRAMES, threads)
    seconds = time.perf_counter() - start
    if bad:
        raise SystemExit(f"benchmark files failed the probe: {bad}")
    return len(paths) / seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=200, help="copies of each encoding probed (default 200)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"| encoding | threads | clips/s | ms/clip | {PROJECTED_CLIPS:,} clips |")
        print("|---|---|---|---|---|")
        for name, encoding in ENCODINGS.items():
            source = write_realistic_video(Path(tmp) / name, encoding)
            paths = [source.with_name(f"{i}{source.suffix}") for i in range(args.clips)]
            for path in paths:
                shutil.copyfile(source, path)
            measure(paths[:5], 1)  # warm-up: FFmpeg's decoders initialised, files in the page cache
            for threads in args.threads:
                rate = measure(paths, threads)
                print(
                    f"| {encoding.about} | {threads} | {rate:.0f} | {1000 / rate:.2f} "
                    f"| {PROJECTED_CLIPS / rate / 60:.1f} min |"
                )


if __name__ == "__main__":
    main()
