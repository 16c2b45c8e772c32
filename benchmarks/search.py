"""`make bench` (search part): time of exact text-to-video search over a collection of random videos.

    python benchmarks/search.py                      # 100k videos x 512-d, 1 and 32 queries, top 10
    python benchmarks/search.py --videos 1000000     # a million rows (2 GB of float32)

Rows and queries are random unit vectors (timing does not depend on their values); the search is
:func:`stop_lightning.search.top_k`, the one ``stop-lightning search`` runs, with the default chunk.
Text encoding of the query is not included (one text-tower forward, the same for any collection).
docs/benchmarks.md quotes the result by hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from stop_lightning.search import DEFAULT_CHUNK_ROWS, top_k  # noqa: E402


def time_search(
    videos: int, dim: int, queries: int, k: int, repeats: int, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> list[float]:
    """Seconds per call of :func:`top_k` (after one warm-up call)."""
    g = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(videos, dim, generator=g), dim=-1)  # [N, E]
    q = torch.nn.functional.normalize(torch.randn(queries, dim, generator=g), dim=-1)  # [Q, E]
    top_k(q, rows, k, chunk_rows)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        top_k(q, rows, k, chunk_rows)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100_000, help="rows in the collection (default 100000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (default 512, CLIP ViT-B)")
    parser.add_argument("--queries", default="1,32", help="comma-separated query batch sizes (default 1,32)")
    parser.add_argument("--top", type=int, default=10, help="k of top-k (default 10)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case (default 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"exact search, {args.videos:,} videos x {args.dim}-d float32, top {args.top}, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}"
    )
    for q in (int(x) for x in args.queries.split(",")):
        times = time_search(args.videos, args.dim, q, args.top, args.repeats)
        med = statistics.median(times)
        print(
            f"  {q:>4} quer{'y' if q == 1 else 'ies'}: median {med * 1e3:8.1f} ms "
            f"(min {min(times) * 1e3:.1f}), "
            f"{med * 1e3 / q:.2f} ms per query"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
