"""What probing the evaluation videos before a run costs (``data.probe_videos``, data/video_probe.py).

    python benchmarks/probe.py                  # 200 copies of each encoding, 1 and 2 threads
    python benchmarks/probe.py --clips 20       # quick

Each public set's encoding (``benchmarks/encodings.py``: UCF101/HMDB51-like MPEG-4 AVI, MSRVTT- and
Kinetics-like H.264 MP4) is written once and copied ``--clips`` times, so every probe opens its own
file (from the page cache: a local disk's best case; a network file system adds its round trips,
which the threads overlap). Prints wall and CPU milliseconds per clip, and the CPU time 100k clips
take (divide by the cores probing them).
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


def measure(paths: list[Path], threads: int) -> tuple[float, float]:
    """(wall, CPU) milliseconds per clip probing ``paths`` on ``threads`` threads (every file must
    pass). The CPU time is this process's, all threads: on a shared machine it is the steadier figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    bad = unreadable_videos(paths, SAMPLED_FRAMES, threads)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if bad:
        raise SystemExit(f"benchmark files failed the probe: {bad}")
    return 1000 * wall / len(paths), 1000 * cpu / len(paths)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=200, help="copies of each encoding probed (default 200)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"| encoding | threads | wall ms/clip | CPU ms/clip | {PROJECTED_CLIPS:,} clips, CPU time |")
        print("|---|---|---|---|---|")
        for name, encoding in ENCODINGS.items():
            source = write_realistic_video(Path(tmp) / name, encoding)
            paths = [source.with_name(f"{i}{source.suffix}") for i in range(args.clips)]
            for path in paths:
                shutil.copyfile(source, path)
            measure(paths[:5], 1)  # warm-up: FFmpeg's decoders initialised, files in the page cache
            for threads in args.threads:
                wall, cpu = measure(paths, threads)
                print(
                    f"| {encoding.about} | {threads} | {wall:.2f} | {cpu:.2f} "
                    f"| {PROJECTED_CLIPS * cpu / 60_000:.1f} min |"
                )


if __name__ == "__main__":
    main()
