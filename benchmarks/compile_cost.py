"""What ``trainer.compile`` costs at start-up and gains per step, for one preset's video-side training step.

    python benchmarks/compile_cost.py                                  # CPU: tiny and ViT-B/32 shapes
    python benchmarks/compile_cost.py --device cuda --precision bf16 --batch 32 --frames 12

For each CLIP size (random weights of real shape, nothing downloaded): the first compiled step (trace,
code generation and the step itself), then the median step of the eager and the compiled model on the
same batch, interleaved (the cores may be shared). The step is ``harness.video_step``: forward, loss
against cached class text features, backward, AdamW. Prints a Markdown table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import harness as H  # noqa: E402
from stop_lightning.choices import COMPILE_BACKENDS, COMPILE_MODES  # noqa: E402
from stop_lightning.fileio import atomic_write  # noqa: E402
from stop_lightning.models.compile import compile_model  # noqa: E402


def _timed(step, device: torch.device) -> float:
    H._sync(device)
    start = time.perf_counter()
    step()
    H._sync(device)
    return time.perf_counter() - start


def measure_size(size: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One CLIP size: first compiled step (s), eager and compiled median step (s), their ratio."""
    clip = H.build_clip(size)
    subjects = {}
    for name in ("eager", "compiled"):
        subjects[name] = H.build_subjects(clip, [args.preset], args.frames, device)[args.preset]
    torch._dynamo.reset()
    compile_model(subjects["compiled"].model, args.mode, args.backend)
    work = H.make_workload(clip, args.batch, args.frames, args.classes, device)
    steps = {name: (lambda s=s: H.video_step(s, work, args.precision)) for name, s in subjects.items()}
    first = _timed(steps["compiled"], device)  # trace + code generation + one step
    for step in steps.values():  # warm-up: allocator, a second compiled call
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():  # interleaved: a load change hits both alike
            times[name].append(_timed(step, device))
    eager, compiled = (statistics.median(times[n]) for n in ("eager", "compiled"))
    return {
        "size": size,
        "preset": args.preset,
        "batch": args.batch,
        "frames": args.frames,
        "precision": args.precision,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "mode": args.mode,
        "backend": args.backend,
        "first_compiled_step_s": round(first, 2),
        "eager_step_s": round(eager, 4),
        "compiled_step_s": round(compiled, 4),
        "speedup": round(eager / compiled, 2),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| CLIP | preset | batch x frames | device, precision | first compiled step | eager step | "
        "compiled step | eager / compiled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['preset']} | {r['batch']} x {r['frames']} | {r['device']} "
            f"({r['threads']} threads), {r['precision']} | {r['first_compiled_step_s']:.1f} s | "
            f"{r['eager_step_s']:.3f} s | {r['compiled_step_s']:.3f} s | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,vit-b/32", help="CLIP layouts (tiny_clip.CLIP_SIZES)")
    parser.add_argument("--preset", default="stop_fast")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--classes", type=int, default=51, help="class prompts of the cached text side")
    parser.add_argument("--mode", default="default", choices=COMPILE_MODES)
    parser.add_argument("--backend", default="inductor", choices=COMPILE_BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes.split(","):
        rows.append(measure_size(size, args, device))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        atomic_write(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
