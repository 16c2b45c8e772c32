"""Long videos: peak memory of a 64-frame training step with and without activation checkpointing.

    python benchmarks/long_videos.py                      # CPU: ViT-B/32, batch 1, fp32 -> docs/benchmarks.md
    python benchmarks/long_videos.py --device cuda        # GPU: batch 16, bf16
                                                          # (the paragraph-retrieval setting)
    python benchmarks/long_videos.py --size tiny --frames 8 --out runs/bench/long.md   # seconds (the test)

Each case is a fresh model on a copy of the same random CLIP of real size; one video-side training
step (forward, loss, backward, AdamW: ``harness.video_step``) is measured (after one 2-frame warm-up step)
with
``harness.PeakMemory`` (CPU: peak RSS above the resident model; GPU: ``max_memory_allocated``
above what is allocated before the step). The table goes into its own generated block of the
output markdown file (``model.clip.activation_checkpointing``, models/checkpointing.py).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import harness as H  # noqa: E402
from benchmarks import report  # noqa: E402
from stop_lightning.models.tiny_clip import CLIP_SIZES  # noqa: E402

SWITCH = "clip.activation_checkpointing"


def measure_case(
    clip, subject: str, checkpointing: bool, work: H.Workload, precision: str, device: torch.device
):
    """(peak MiB added by one step, seconds) for ``subject`` with the switch on or off."""
    s = H.build_subjects(
        clip, [subject], work.video.shape[1], device, (f"{SWITCH}={str(checkpointing).lower()}",)
    )[subject]
    start = time.perf_counter()
    with H.PeakMemory(device) as peak:
        H.video_step(s, work, precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    del s
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak.mib, seconds


def render(rows: list[tuple[str, float | None, float, float | None, float]], title: str, note: str) -> str:
    lines = [
        f"### {title}",
        "",
        note,
        "",
        "| subject | peak without (MiB) | peak with (MiB) | saved | step without (s) | step with (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, off_mib, off_s, on_mib, on_s in rows:
        saved = "—" if not (off_mib and on_mib) else f"{1 - on_mib / off_mib:.0%}"
        fmt = lambda v: "—" if v is None else f"{v:,.0f}"  # noqa: E731
        lines.append(f"| `{name}` | {fmt(off_mib)} | {fmt(on_mib)} | {saved} | {off_s:.1f} | {on_s:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="vit-b/32", choices=tuple(CLIP_SIZES))
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=0, help="default: 1 on CPU, 16 on a GPU")
    parser.add_argument("--precision", default="", help="fp32 | bf16 (default: fp32 on CPU, bf16 on a GPU)")
    parser.add_argument(
        "--subjects", default="stop_fast", help="comma-separated benchmark subjects (harness.SUBJECTS)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (16 if on_gpu else 1)
    precision = args.precision or ("bf16" if on_gpu else "fp32")
    if not on_gpu:
        torch.set_num_threads(args.threads)
    clip = H.build_clip(args.size)
    work = H.make_workload(clip, batch, args.frames, num_classes=8, device=device)
    clip = clip.cpu()
    # Warm-up on 2 frames: lazy initialisation (thread pools, allocator, kernels) is not a case's cost.
    measure_case(
        clip, args.subjects.split(",")[0], False, H.make_workload(clip, 1, 2, 8, device), precision, device
    )
    rows = []
    for subject in args.subjects.split(","):
        off = measure_case(clip, subject, False, work, precision, device)
        on = measure_case(clip, subject, True, work, precision, device)
        rows.append((subject, off[0], off[1], on[0], on[1]))
        print(f"{subject}: without {off[0]} MiB {off[1]:.1f} s, with {on[0]} MiB {on[1]:.1f} s", flush=True)
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} thread(s)"
    title = f"Long videos: {args.frames} frames, {args.size}, batch {batch}, {precision}, {where}"
    note = (
        "One video-side training step, after a 2-frame warm-up "
        f"(`python benchmarks/long_videos.py{' --device ' + args.device if on_gpu else ''}`), "
        f"`model.{SWITCH}` off and on; peak memory the step adds above the resident model "
        f"({'max_memory_allocated' if on_gpu else 'peak RSS'}). torch {torch.__version__}."
    )
    report.write_block(
        args.out,
        f"long-videos {device.type} {args.size}",
        render(rows, title, note),
        writer="benchmarks/long_videos.py",
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
