"""How much a learning figure moves: the same training over several seeds and intra-op thread counts.

A float sum depends on its reduction order, and the order depends on the number of CPU threads, so a
run that is deterministic on one machine and thread count can end a few held-out clips away on
another. The tables of ``benchmarks/demo_table.py`` and ``benchmarks/motion.py`` therefore report
every method as a distribution over seeds x threads (mean, min, max), never as one run.

Each run is a child process (``python benchmarks/spread.py --child ...``) with its thread count set
before torch starts, so the parent measures what ``OMP_NUM_THREADS=<n> make demo`` measures. Runs go
side by side while their threads fit on the machine's cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "SPREAD_RESULT "


@dataclass(frozen=True)
class Job:
    """One training: ``experiment`` with ``overrides`` on ``threads`` intra-op threads."""

    key: str  # what the table groups by (a preset)
    seed: int
    threads: int
    experiment: str
    overrides: tuple[str, ...]

    def argv(self) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            json.dumps({"experiment": self.experiment, "overrides": [*self.overrides, f"seed={self.seed}"]}),
        ]

    def env(self) -> dict[str, str]:
        n = str(self.threads)
        return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "WANDB_MODE": "offline"}


def run_jobs(jobs: list[Job], logs: Path, cores: int | None = None) -> list[dict]:
    """Every job's result (``child`` below, plus ``key``, ``seed``, ``threads``), in ``jobs`` order.
    Each child's output goes to ``logs/<key>_s<seed>_t<threads>.log``.

    The first job runs alone: it builds what the others share (the tiny CLIP, the synthetic videos)
    in the cache, which two processes must not write at once. A failed job stops everything."""
    cores = cores or os.cpu_count() or 1
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict] = {}
    pending = list(enumerate(jobs))
    running: list[tuple[int, Job, subprocess.Popen, float]] = []

    def log_path(job: Job) -> Path:
        return logs / f"{job.key}_s{job.seed}_t{job.threads}.log"

    def start(i: int, job: Job) -> None:
        with open(log_path(job), "w") as out:  # a file, not a pipe: a chatty child cannot block on it
            proc = subprocess.Popen(job.argv(), env=job.env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        running.append((i, job, proc, time.perf_counter()))

    def finish(entry) -> None:
        i, job, proc, started = entry
        proc.wait()
        out = log_path(job).read_text()
        lines = [line for line in out.splitlines() if line.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not lines:
            tail = "\n".join(out.splitlines()[-20:])
            raise RuntimeError(f"{job.key} seed {job.seed}, {job.threads} thread(s) failed:\n{tail}")
        result = json.loads(lines[-1][len(RESULT_TAG) :])
        results[i] = {"key": job.key, "seed": job.seed, "threads": job.threads, **result}
        print(
            f"[{len(results)}/{len(jobs)}] {job.key} seed {job.seed} threads {job.threads}: "
            f"test/top1 {result['metrics'].get('test/top1', float('nan')):.4f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    if pending:
        i, job = pending.pop(0)
        start(i, job)
        finish(running.pop())
    while pending or running:
        busy = sum(job.threads for _, job, _, _ in running)
        while pending and (not running or busy + pending[0][1].threads <= cores):
            i, job = pending.pop(0)
            start(i, job)
            busy += job.threads
        done = next((e for e in running if e[2].poll() is not None), None)
        if done is None:
            time.sleep(0.5)
            continue
        running.remove(done)
        finish(done)
    return [results[i] for i in range(len(jobs))]


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": mean(values), "min": min(values), "max": max(values), "n": len(values)}


def spread(results: list[dict], key: str, metric) -> dict:
    """``metric(result)`` of ``key``'s runs: over all of them and per thread count."""
    mine = [r for r in results if r["key"] == key]
    by_threads = {
        str(t): summary([metric(r) for r in mine if r["threads"] == t])
        for t in sorted({r["threads"] for r in mine})
    }
    return {
        **summary([metric(r) for r in mine]),
        "threads": by_threads,
        "seeds": sorted({r["seed"] for r in mine}),
    }


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` (a --seeds or --threads option) -> ``[0, 1, 2]``."""
    return [int(v) for v in str(text).split(",")]


def fmt_range(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    lo, hi = scale * s["min"], scale * s["max"]
    return (
        f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"
    )


# Options that only say where files go or how many runs go at once: left out of the printed command.
WHERE_TO = ("--work", "--cache-dir", "--out-json", "--out", "--cores")


def what_was_measured(script: str, argv: list[str], plain: str, flags: tuple[str, ...] = ()) -> str:
    """``python benchmarks/<script>.py <argv>`` without the ``WHERE_TO`` options (and ``flags``), or
    ``plain`` (the make target) when nothing else is left."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in WHERE_TO:
            skip = True
        elif arg not in flags and not arg.startswith(tuple(f"{o}=" for o in WHERE_TO)):
            kept.append(arg)
    return f"python benchmarks/{script}.py " + " ".join(kept) if kept else plain


def child(spec: dict) -> int:
    """Train and test one config in this process; print its figures as one tagged JSON line."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from stop_lightning.config import load_config
    from stop_lightning.train import train

    cfg = load_config(spec["experiment"], spec["overrides"])
    start = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - start
    print(
        RESULT_TAG
        + json.dumps(
            {
                "metrics": metrics,
                "seconds": seconds,
                "run_dir": str(Path(cfg.paths.run_dir) / os.environ["STOP_RUN_STAMP"]),  # set by train
                "torch_threads": torch.get_num_threads(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child(json.loads(sys.argv[2])))
    sys.exit("spread.py is run by benchmarks/demo_table.py and benchmarks/motion.py")
