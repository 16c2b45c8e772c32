"""`make demo-table`: the demo's test top-1 for every method, over seeds x intra-op thread counts.

    make demo-table                                  # 5 seeds x 1 and 2 threads x 5 presets
    python benchmarks/demo_table.py --seeds 0,1 --presets stop_fast,clip4clip_meanp --out-json /tmp/d.json

Each run is exactly ``make demo ARGS="model.preset=<p> seed=<s>"`` under ``OMP_NUM_THREADS=<n>``
(``benchmarks/spread.py``). The table goes between the generated markers of README.md ("Quick start")
and docs/fidelity.md, and the figures to ``experiments/measured/demo.json``, which the demo's own
summary reads to print the range a user's run should fall in (``stop_lightning.measured``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from benchmarks.report import write_block  # noqa: E402
from benchmarks.spread import Job, fmt_range, int_list, run_jobs, spread, what_was_measured  # noqa: E402
from stop_lightning.config import load_config  # noqa: E402
from stop_lightning.measured import MEASURED_DIR, read_measured, setting_fingerprint, write_measured  # noqa: E402

EXPERIMENT = "demo"
PRESETS = ("stop_fast", "stop", "stop_official", "dgl", "clip4clip_meanp")
LABELS = {
    "stop_fast": "STOP, fast spatial generator (the demo)",
    "stop": "STOP, this project's fixes ([docs/fidelity.md](docs/fidelity.md))",
    "stop_official": "STOP, the authors' code paths",
    "dgl": "DGL",
    "clip4clip_meanp": "CLIP4Clip meanP",
}
SLOW = ("stop", "stop_official")  # minutes per run on a CPU core, where the others take seconds
BLOCK = "demo-table"
WRITER = "benchmarks/demo_table.py"
DOCS = (ROOT / "README.md", ROOT / "docs" / "fidelity.md")


def markdown(stats: dict[str, dict], command: str, seeds: list[int], threads: list[int], link: str) -> str:
    t = ", ".join(str(n) for n in threads)
    lines = [
        f"Test top-1 on the 44 held-out clips, {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}) x {t} intra-op "
        f'threads per method (`{command}`; each run is `make demo ARGS="model.preset=<preset> seed=<s>"` '
        f"under `OMP_NUM_THREADS=<n>`):",
        "",
        "| method | preset | mean | min | max | "
        + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in threads)
        + " | runs |",
        "|---|---|---:|---:|---:|" + "---:|" * len(threads) + "---:|",
    ]
    for preset, s in stats.items():
        per = " | ".join(fmt_range(s["threads"][str(n)]) for n in threads)
        label = LABELS[preset].replace("docs/fidelity.md", link)
        lines.append(
            f"| {label} | `{preset}` | {s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {per} | {s['n']} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument(
        "--cores", type=int, default=None, help="threads in flight at once (default: all cores)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "demo_table")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "stop_lightning")
    parser.add_argument("--out-json", type=Path, default=MEASURED_DIR / f"{EXPERIMENT}.json")
    parser.add_argument(
        "--no-docs", action="store_true", help="write only --out-json, not the markdown tables"
    )
    parser.add_argument(
        "--render-only", action="store_true", help="train nothing: write the tables from --out-json's figures"
    )
    args = parser.parse_args(argv)
    presets = args.presets.split(",")
    seeds, threads = int_list(args.seeds), int_list(args.threads)
    unknown = sorted(set(presets) - set(LABELS))
    if unknown:
        parser.error(f"--presets: {', '.join(unknown)} not among {', '.join(LABELS)}")
    command = what_was_measured(
        "demo_table",
        argv if argv is not None else sys.argv[1:],
        "make demo-table",
        ("--no-docs", "--render-only"),
    )

    def overrides(preset: str, seed: int, n: int) -> tuple[str, ...]:
        out = args.work / f"{preset}_s{seed}_t{n}"
        return (
            f"model.preset={preset}",
            f"paths.output_dir={out}",
            f"paths.cache_dir={args.cache_dir}",
            "trainer.enable_progress_bar=false",
        )

    if args.render_only:
        measured = read_measured(args.out_json)
        stats, command = measured["presets"], measured["command"]
        seeds = stats[next(iter(stats))]["seeds"]
        threads = [int(n) for n in stats[next(iter(stats))]["threads"]]
    else:
        # The quick presets first (their rows are ready in minutes), two-thread runs before the
        # one-thread runs of each group (those go side by side).
        order = sorted(presets, key=lambda p: p in SLOW)
        jobs = [
            Job(p, s, n, EXPERIMENT, overrides(p, s, n))
            for group in (False, True)
            for n in sorted(threads, reverse=True)
            for p in order
            if (p in SLOW) == group
            for s in seeds
        ]
        results = run_jobs(jobs, args.work / "logs", cores=args.cores)
        stats = {p: spread(results, p, lambda r: r["metrics"]["test/top1"]) for p in presets}
        fingerprints = {
            p: setting_fingerprint(load_config(EXPERIMENT, [f"model.preset={p}"])) for p in presets
        }
        write_measured(args.out_json, EXPERIMENT, "test/top1", stats, fingerprints, command, results)
    if not args.no_docs:
        for doc in DOCS:
            link = "docs/fidelity.md" if doc.name == "README.md" else "fidelity.md"
            write_block(doc, BLOCK, markdown(stats, command, seeds, threads, link), writer=WRITER)
    print(markdown(stats, command, seeds, threads, "docs/fidelity.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
