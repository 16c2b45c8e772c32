"""Operator launches and step time of one training step per preset, eager and compiled, against the floor.

    python benchmarks/launches.py --label after          # ViT-B/32, B=2 x T=8, fp32 -> docs/benchmarks.md
    python benchmarks/launches.py --quick --label after  # fewer presets and repeats -> runs/bench/
    python benchmarks/launches.py --no-compile           # launch counts and eager steps only

On a GPU without CUDA graphs every operator is at least one kernel launch and a few microseconds of
host work, so the number of operators a step dispatches is what decides whether a small model can keep
the card busy. This script counts them on the CPU (``torch.profiler``: operator events not nested in
another operator, forward, backward and optimiser) and times the same video-side training step as
``benchmarks/run.py`` (:func:`benchmarks.harness.video_step`) eager and after a plain
``torch.compile(model)`` (default inductor), interleaved, in one run. Each run's table goes to its own
generated block of ``docs/benchmarks.md`` (``--label``), so the page keeps a before and an after.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import harness as H  # noqa: E402
from benchmarks import report  # noqa: E402

TARGET_LAUNCH_RATIO = 1.3  # issue 29: stop_fast's operator launches within 1.3x the floor's
TARGET_COMPILED_RATIO = 1.2  # issue 29: stop_fast's compiled step within 1.2x the compiled floor
GPU_TARGET_COMPILED_RATIO = 1.3  # issue 29, on an H100/H200 at batch 64 x 12, bf16
GPU_TARGET_MFU = 0.35


@dataclass(frozen=True)
class KernelPlan:
    mode: str
    clip_size: str = "vit-b/32"
    batch: int = 2
    frames: int = 8
    subjects: tuple[str, ...] = ("clip4clip_meanp", "clip_fwd_bwd", "dgl", "stop_fast")
    repeats: int = 3
    compile: bool = True
    precision: str = "fp32"


def plan_for(mode: str, device: torch.device = torch.device("cpu")) -> KernelPlan:
    if device.type == "cuda":  # scripts/gpu_check.sh: the shapes of the GPU check, bf16
        return KernelPlan(
            mode=mode,
            batch=32,
            frames=12,
            precision="bf16",
            repeats=3 if mode == "quick" else 10,
            subjects=(report.BASELINE, report.FLOOR, "stop_fast"),
        )
    if mode == "tiny":  # the smoke test
        return KernelPlan(
            mode="tiny",
            clip_size="tiny",
            batch=1,
            frames=2,
            repeats=1,
            subjects=(report.FLOOR, "stop_fast"),
        )
    if mode == "quick":
        return KernelPlan(mode="quick", subjects=(report.FLOOR, "stop_fast"), repeats=2)
    return KernelPlan(mode="full")


# Operators that only make a new view of the same storage: no kernel on a GPU. A copy they make
# (``reshape`` of a non-contiguous tensor) shows as a nested ``aten::clone`` and is counted.
VIEW_OPS = frozenset(
    "aten::" + n
    for n in (
        "view",
        "_unsafe_view",
        "reshape",
        "_reshape_alias",
        "t",
        "transpose",
        "permute",
        "expand",
        "detach",
        "alias",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "as_strided",
        "unflatten",
        "flatten",
        "split",
        "split_with_sizes",
        "chunk",
        "narrow",
        "unbind",
        "movedim",
        "view_as",
        "expand_as",
        "lift_fresh",
        "numpy_T",
        "contiguous",
        "to",
        "_to_copy_noop",
        "type_as",
        "result_type",
        "empty",
        "empty_like",
        "empty_strided",
        "is_nonzero",
        "size",
        "stride",
    )
)


def _operator_events(prof) -> list:
    """Profiler events that launch work: ``aten::`` operators other than views, and inductor's fused
    kernels, each counted once (not again when nested in another such event)."""

    def is_op(ev) -> bool:
        if ev.name.startswith("aten::"):
            return ev.name not in VIEW_OPS
        return "cpp_fused" in ev.name or "triton_" in ev.name

    out = []
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CPU or not is_op(ev):
            continue
        parent = ev.cpu_parent
        while parent is not None and not is_op(parent):
            parent = parent.cpu_parent
        if parent is None:
            out.append(ev)
    return out


def count_launches(fn, device: torch.device) -> dict[str, Any]:
    """Run ``fn`` once under ``torch.profiler``: top-level operator events, the most frequent names, and
    on a GPU the kernels it ran."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        fn()
        if gpu:
            torch.cuda.synchronize(device)
    events = _operator_events(prof)
    counts: dict[str, int] = {}
    for ev in events:
        counts[ev.name] = counts.get(ev.name, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
    kernels = (
        sum(1 for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA) if gpu else None
    )
    return {"launches": len(events), "top": top, "kernels": kernels}


def launch_breakdown(model: torch.nn.Module, fn) -> dict[str, dict[str, int]]:
    """Where one step's launches go: the operator events of :func:`count_launches`, each given to the
    module (:func:`benchmarks.harness.module_labels`) whose forward ran it, a backward operator to the
    module whose forward operator created its autograd node (matched by sequence number), the
    optimiser's to the optimiser. ``{label: {"forward": n, "backward": n}}``."""
    from torch.profiler import ProfilerActivity, profile

    labels = H.module_labels(model)
    names = {name for _, name in labels}
    with H._record_modules(labels), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()

    def chain(ev):
        while ev is not None:
            yield ev
            ev = ev.cpu_parent

    def backward_node(ev):  # the autograd node evaluation an operator runs in, if any
        return next((a for a in chain(ev) if a.name.startswith(H._BACKWARD)), None)

    def label_of(ev) -> str:
        for a in chain(ev.cpu_parent):
            if a.name in names:
                return a.name
            if a.name.startswith("Optimizer."):
                return H._OPTIMIZER
        return H._UNLABELLED

    created: dict[int, str] = {}  # autograd sequence number -> the module whose forward made the node
    for ev in prof.events():
        if ev.sequence_nr >= 0 and ev.name not in names and backward_node(ev) is None:
            created.setdefault(ev.sequence_nr, label_of(ev))
    out: dict[str, dict[str, int]] = {}
    for ev in _operator_events(prof):
        node = backward_node(ev)
        if node is None:
            label, side = label_of(ev), "forward"
        else:
            label = (
                H._OPTIMIZER
                if "AccumulateGrad" in node.name
                else created.get(node.sequence_nr, H._UNLABELLED)
            )
            side = "backward"
        counts = out.setdefault(label, {"forward": 0, "backward": 0})
        counts[side] += 1
    return out


def _compiled(subject: H.Subject) -> H.Subject:
    """The same subject (same parameters, same optimiser) with ``torch.compile(model)`` as its forward.
    On the CPU inductor's generated C++ kernels are made to show in the profiler, so a compiled row
    counts them as a GPU counts its generated kernels, not only the library calls between them."""
    import torch._inductor.config as inductor

    inductor.cpp.enable_kernel_profile = True
    return replace(subject, model=torch.compile(subject.model))


def run(plan: KernelPlan, device: torch.device, log=print, command: str = "") -> dict[str, Any]:
    from benchmarks.run import GPU_PEAK_BF16

    start = time.time()
    clip = H.build_clip(plan.clip_size)
    subjects = H.build_subjects(clip, list(plan.subjects), plan.frames, device)
    work = H.make_workload(clip, plan.batch, plan.frames, 51 if plan.clip_size != "tiny" else 3, device)
    modes = ("eager", "compiled") if plan.compile else ("eager",)
    steps = {}
    for name, s in subjects.items():
        steps[(name, "eager")] = partial(H.video_step, s, work, plan.precision)
        if plan.compile:
            steps[(name, "compiled")] = partial(H.video_step, _compiled(s), work, plan.precision)
    peak = None
    if device.type == "cuda" and plan.precision == "bf16":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    flops = {n: H.count_flops(steps[(n, "eager")]) for n in subjects} if peak else {}
    first: dict[tuple[str, str], float] = {}
    for key, fn in steps.items():  # warm-up: the compiled ones compile here
        t0 = time.perf_counter()
        fn()
        fn()  # the second call of a compiled module may recompile (training flags, grad mode): warm both
        first[key] = time.perf_counter() - t0
        log(f"  warm-up {key[0]} {key[1]}: {first[key]:.1f}s")
    launches = {key: count_launches(fn, device) for key, fn in steps.items()}
    breakdown = {  # eager only: a compiled graph is one module to the profiler
        name: launch_breakdown(subjects[name].model, steps[(name, "eager")])
        for name in (report.FLOOR, "stop_fast")
        if name in subjects
    }
    timing = H.measure(
        [H.Case(f"{n}|{m}", steps[(n, m)], repeats=plan.repeats, warmup=False) for n, m in steps],
        device,
        log,
    )
    rows = []
    for name in plan.subjects:
        for m in modes:
            t = timing[f"{name}|{m}"]
            floor_t = timing.get(f"{report.FLOOR}|{m}")
            floor_l = launches.get((report.FLOOR, m))
            rows.append(
                {
                    "subject": name,
                    "mode": m,
                    "launches": launches[(name, m)]["launches"],
                    "top_ops": launches[(name, m)]["top"],
                    "launches_vs_floor": (
                        launches[(name, m)]["launches"] / floor_l["launches"] if floor_l else None
                    ),
                    "step_s": t.median,
                    "step_min_s": t.min,
                    "step_vs_floor": t.median / floor_t.median if floor_t else None,
                    "warmup_s": first[(name, m)],
                    "kernels": launches[(name, m)]["kernels"],
                    "peak_mib": t.peak_mib,
                    "mfu": flops[name] / t.median / peak if peak else None,
                }
            )
    return {
        "mode": plan.mode,
        "command": command,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "precision": plan.precision,
            "clip_size": plan.clip_size,
            "batch": plan.batch,
            "frames": plan.frames,
            "repeats": plan.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load": _loadavg(),
        },
        "rows": rows,
        "targets": targets(rows, device.type == "cuda"),
        "breakdown": breakdown,
        "wall_s": time.time() - start,
    }


def _loadavg() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def targets(rows: list[dict], gpu: bool) -> list[dict]:
    """Issue 29's bounds on stop_fast: on the CPU its launches and compiled step against the floor's; on a
    GPU its compiled step against the compiled floor, and its MFU."""
    checks = (
        [("compiled", "step_vs_floor", GPU_TARGET_COMPILED_RATIO, "compiled step time", "at most")]
        + [("compiled", "mfu", GPU_TARGET_MFU, "model FLOPs utilisation", "at least")]
        if gpu
        else [
            ("eager", "launches_vs_floor", TARGET_LAUNCH_RATIO, "operator launches", "at most"),
            ("compiled", "launches_vs_floor", TARGET_LAUNCH_RATIO, "compiled launches", "at most"),
            ("compiled", "step_vs_floor", TARGET_COMPILED_RATIO, "compiled step time", "at most"),
        ]
    )
    out = []
    for mode, key, bound, what, direction in checks:
        row = next((r for r in rows if r["subject"] == "stop_fast" and r["mode"] == mode), None)
        if row is not None and row[key] is not None:
            of = "" if key == "mfu" else " the floor's"
            out.append(
                {
                    "name": f"stop_fast {what} {direction} {bound}x{of}"
                    if of
                    else f"stop_fast {what} {direction} {bound:.0%}",
                    "met": row[key] <= bound if direction == "at most" else row[key] >= bound,
                    "value": row[key],
                }
            )
    return out


def render(r: dict[str, Any], label: str) -> str:
    s = r["settings"]
    gpu = any(row["kernels"] is not None for row in r["rows"])
    mfu = any(row["mfu"] is not None for row in r["rows"])
    lines = [
        f"## Operator launches and step time, eager and compiled ({label})\n",
        f"Generated {r['generated']} by `{r['command']}` in {r['wall_s'] / 60:.1f} min: {s['clip_size']}, "
        f"batch {s['batch']} x {s['frames']} frames, {s['precision']}, {s['device']}, "
        f"{s['threads']} CPU thread(s), torch {s['torch']}, load average at the end {s['load']}. "
        "Video side of a recognition step (forward, loss, backward, AdamW); launches: top-level operator "
        "events other than views in `torch.profiler` (one step; compiled: inductor's generated kernels "
        "and the library calls between them)"
        + ("; kernels: GPU kernels in the same step" if gpu else "")
        + f"; step: median of {s['repeats']} interleaved calls after two warm-up calls (compiled: "
        "`torch.compile(model)`, default inductor, compiled in the warm-up); peak: memory the first timed "
        "call adds.\n",
        "| preset | mode | launches | launches vs floor |"
        + (" kernels |" if gpu else "")
        + " step s | step vs floor |"
        + (" MFU |" if mfu else "")
        + " peak MiB | first 2 calls s |",
        "|---|---|---:|---:|"
        + ("---:|" if gpu else "")
        + "---:|---:|"
        + ("---:|" if mfu else "")
        + "---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| `{row['subject']}` | {row['mode']} | {row['launches']} "
            f"| {report._x(row['launches_vs_floor'])} |"
            + (f" {row['kernels']} |" if gpu else "")
            + f" {row['step_s']:.3f} | {report._x(row['step_vs_floor'])} |"
            + (f" {report._s(row['mfu'] and 100 * row['mfu'], 1)}% |" if mfu else "")
            + f" {report._s(row['peak_mib'], 0)} | {row['warmup_s']:.1f} |"
        )
    lines.append("")
    for t in r["targets"]:
        lines.append(f"- {t['name']}: **{'met' if t['met'] else 'not met'}** ({t['value']:.2f})")
    fast = next((row for row in r["rows"] if row["subject"] == "stop_fast" and row["mode"] == "eager"), None)
    if fast is not None:
        lines.append(
            "- most frequent operators of the eager `stop_fast` step: "
            + ", ".join(f"`{n}` {c}" for n, c in fast["top_ops"])
        )
    lines += _render_breakdown(r.get("breakdown") or {})
    return "\n".join(lines) + "\n\n"


def _render_breakdown(breakdown: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    """The eager launches of the floor and of ``stop_fast`` by module, forward + backward."""
    if report.FLOOR not in breakdown or "stop_fast" not in breakdown:
        return []
    floor, fast = breakdown[report.FLOOR], breakdown["stop_fast"]

    def total(counts: dict[str, int] | None) -> int:
        return sum(counts.values()) if counts else 0

    lines = [
        "",
        "Where the eager launches go (one step; forward + backward, each operator given to the module "
        "whose forward ran it or created its backward node):",
        "",
        f"| module | `{report.FLOOR}` | `stop_fast` | `stop_fast` forward / backward |",
        "|---|---:|---:|---:|",
    ]
    for label in sorted(set(floor) | set(fast), key=lambda k: (-total(fast.get(k)), k)):
        f = fast.get(label, {"forward": 0, "backward": 0})
        lines.append(
            f"| {label} | {total(floor.get(label))} | {total(f)} | {f['forward']} / {f['backward']} |"
        )
    sums = (sum(total(v) for v in floor.values()), sum(total(v) for v in fast.values()))
    lines.append(f"| **all** | **{sums[0]}** | **{sums[1]}** | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the floor and stop_fast only, 2 repeats")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny CLIP (the smoke test, a GPU-check rehearsal)"
    )
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (cuda: ViT-B/32, batch 32 x 12, bf16)")
    parser.add_argument("--batch", type=int, default=None, help="clips per batch (default: by mode)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: by mode)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default: by mode)")
    parser.add_argument(
        "--label", default="current", help="names the table's block in the page (e.g. before, after)"
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown file (full: docs/benchmarks.md)")
    # `make bench ARGS=...` passes the same arguments to every bench script: others' options are not ours.
    args, others = parser.parse_known_args(argv)
    if others:
        print(f"benchmarks/launches.py: ignoring {' '.join(others)} (options of the other bench scripts)")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    plan = plan_for("tiny" if args.tiny else "quick" if args.quick else "full", device)
    if args.tiny and device.type == "cuda":
        plan = replace(plan, clip_size="tiny", batch=2, frames=2)
    if args.no_compile:
        plan = replace(plan, compile=False)
    for key in ("repeats", "batch", "frames"):
        if getattr(args, key) is not None:
            plan = replace(plan, **{key: max(1, getattr(args, key))})
    command = "python benchmarks/launches.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    results = run(plan, device, log, command.strip())
    on_cpu_full = plan.mode == "full" and device.type == "cpu"
    out = args.out or ROOT / (
        "docs/benchmarks.md" if on_cpu_full else f"runs/bench/launches-{device.type}-{plan.mode}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    report.write_block(
        out,
        f"{device.type}-launches-{args.label}",
        render(results, args.label),
        writer="benchmarks/launches.py",
    )
    report.write_json(
        {**results, "device_key": f"{device.type}-launches-{args.label}"}, out.with_suffix(".json")
    )
    log(f"wrote {out} in {results['wall_s'] / 60:.1f} min")
    for t in results["targets"]:
        log(f"target: {t['name']}: {'met' if t['met'] else 'NOT met'} ({t['value']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
