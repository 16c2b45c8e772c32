"""`make bench`: the cost of STOP's prompts against a frozen CLIP, scaling, memory, data loading.

    make bench                        # full run (< 10 min on 2 CPU cores) -> docs/benchmarks.{md,json}
    make bench ARGS=--quick           # < 2 min -> runs/bench/benchmarks-quick.{md,json}
    python benchmarks/run.py --device cuda        # on a GPU: batch 32 x 12 frames, bf16, MFU
    python benchmarks/run.py --sections train,profile --threads 2

One run measures, side by side on the same batches: the training step of STOP (fast and reference
spatial generators) against the frozen-CLIP meanP baseline and the fwd+bwd floor, fp32 and bf16;
inference clips/s; step time and peak memory against frames and batch size; data-loader clips/s
against what training consumes; a profiler table of the STOP step by module. Timings are medians of
interleaved repeats (the cores may be shared with other jobs). Random weights of real size
(ViT-B/32), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import harness as H  # noqa: E402
from benchmarks import report  # noqa: E402
from stop_lightning.models.tiny_clip import CLIP_SIZES  # noqa: E402

ALL_SECTIONS = ("train", "infer", "scaling", "data", "profile")
MAIN = ("clip4clip_meanp", "clip_fwd_bwd", "stop_fast", "stop")
TARGET_STEP_RATIO = 1.3
TARGET_LOADER_HEADROOM = 4.0

# Dense bf16 tensor-core peak (FLOP/s) for model FLOPs utilisation; fp32 rows get no MFU.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@dataclass
class Plan:
    """What one run measures. ``train``/``infer``: (frames, subjects) pairs at ``batch``."""

    mode: str
    clip_size: str = "vit-b/32"
    precisions: tuple[str, ...] = ("fp32", "bf16")
    batch: int = 1
    train: tuple[tuple[int, tuple[str, ...]], ...] = ((8, MAIN),)
    repeats: int = 1  # timed calls after one warm-up call
    infer: tuple[tuple[int, tuple[str, ...]], ...] = ((8, ("clip4clip_meanp", "stop_fast", "stop")),)
    num_classes: int = 51
    count_flops: bool = False
    scaling: tuple[tuple[int, int], ...] = ()  # (frames, batch)
    scaling_subjects: tuple[str, ...] = ("clip4clip_meanp", "stop_fast")
    scaling_precision: str = "bf16"
    data_frames: tuple[int, ...] = (8,)
    data_workers: tuple[int, ...] = (0, 1, 2)
    data_batches: int = 8
    data_batch_size: int = 4
    # Synthetic videos for the loader: square frames near HMDB51's 240 px height, longer than the clips,
    # enough training clips (88 in split 1) that the timed batches never start a second epoch.
    data_video: dict[str, int] = field(
        default_factory=lambda: dict(
            synthetic_classes=8, synthetic_clips_per_class=32, synthetic_frames=32, synthetic_size=240
        )
    )
    profile: bool = True
    profile_subject: str = "stop_fast"


def plan_for(mode: str, device: torch.device) -> Plan:
    if mode == "tiny":  # the smoke test: every section, seconds
        return Plan(
            mode="tiny",
            clip_size="tiny",
            precisions=("fp32",),
            batch=1,
            train=((2, ("clip4clip_meanp", "clip_fwd_bwd", "stop_fast")),),
            infer=((2, ("clip4clip_meanp", "stop_fast")),),
            num_classes=3,
            scaling=((2, 1), (4, 1)),
            scaling_precision="fp32",
            data_frames=(2,),
            data_workers=(0,),
            data_batches=1,
            data_batch_size=2,
            data_video=dict(
                synthetic_classes=2, synthetic_clips_per_class=4, synthetic_frames=8, synthetic_size=64
            ),
        )
    if mode == "compact":  # scripts/gpu_check.sh: about a minute on a GPU
        on_gpu = device.type == "cuda"
        return Plan(
            mode="compact",
            clip_size="vit-b/32" if on_gpu else "tiny",
            precisions=("bf16",) if on_gpu else ("fp32",),
            batch=32 if on_gpu else 2,
            train=((12, ("clip4clip_meanp", "clip_fwd_bwd", "stop_fast")),),
            repeats=3,
            infer=((12, ("clip4clip_meanp", "stop_fast")),),
            count_flops=on_gpu,
            num_classes=51 if on_gpu else 3,
            profile=False,
        )
    if device.type == "cuda":
        quick = mode == "quick"
        return Plan(
            mode=mode,
            precisions=("bf16", "fp32"),
            batch=32,
            train=((12, MAIN),),
            repeats=3 if quick else 10,
            infer=((12, ("clip4clip_meanp", "stop_fast", "stop")),),
            count_flops=True,
            scaling=() if quick else ((8, 32), (16, 32), (32, 32), (12, 8), (12, 64)),
            data_frames=(12,),
            data_batches=4,
            data_batch_size=32,
            data_video=dict(
                synthetic_classes=8, synthetic_clips_per_class=64, synthetic_frames=32, synthetic_size=240
            ),
        )
    if mode == "quick":
        return Plan(mode="quick")
    return Plan(
        mode="full",
        batch=2,
        repeats=2,
        train=((8, MAIN), (16, ("clip4clip_meanp", "clip_fwd_bwd", "stop_fast"))),
        infer=((8, ("clip4clip_meanp", "stop_fast", "stop")), (16, ("clip4clip_meanp", "stop_fast"))),
        scaling=((8, 1), (16, 1), (32, 1), (8, 2), (8, 4)),
        data_frames=(8, 16),
        data_batches=16,
    )


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_info(device: torch.device) -> dict[str, Any]:
    import transformers

    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), cpu
        )
        flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    mem = ""
    try:
        kib = int(
            next(
                ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
            ).split()[1]
        )
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    description = f"{cpu}, {os.cpu_count()} cores{mem}; torch intra-op threads: {torch.get_num_threads()}"
    description += f"; CPU bf16 instructions: {', '.join(bf16) if bf16 else 'none'}"
    name = f"CPU ({cpu}, {os.cpu_count()} cores)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"GPU ({props.name})"
        description = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs; host: "
            + description
        )
    return {
        "device_name": name,
        "description": description,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "load_start": _loadavg(),
    }


def _text_subject(subjects: dict[str, H.Subject]) -> H.Subject | None:
    return next((s for s in subjects.values() if s.model.text_side_trains), None)


def _gpu_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)


def section_train(plan: Plan, clip, subjects, device, log) -> tuple[list[dict], list[dict]]:
    rows, text_rows = [], []
    text_subject = _text_subject(subjects)
    peak = _gpu_peak(device)
    for frames, names in plan.train:
        work = H.make_workload(clip, plan.batch, frames, plan.num_classes, device)
        for precision in plan.precisions:
            log(f"[train] T={frames} B={plan.batch} {precision}")
            cases = [
                H.Case(
                    n,
                    partial(H.video_step, subjects[n], work, precision),
                    repeats=plan.repeats,
                    flops=plan.count_flops,
                )
                for n in names
            ]
            measure_text = text_subject is not None and not any(
                t["precision"] == precision for t in text_rows
            )
            if measure_text:
                cases.append(
                    H.Case("text", partial(H.text_step, text_subject, work, precision), repeats=plan.repeats)
                )
            res = H.measure(cases, device, log)
            if measure_text:
                text_rows.append(
                    {
                        "precision": precision,
                        "num_classes": plan.num_classes,
                        "subject": text_subject.name,
                        "step": res.pop("text").as_dict(),
                    }
                )
            text_s = (
                next(t["step"]["median_s"] for t in text_rows if t["precision"] == precision)
                if text_rows
                else 0.0
            )
            base = res.get(report.BASELINE)
            floor = res.get(report.FLOOR)
            for n in names:
                m = res[n]
                s = subjects[n]
                rec = m.median + (text_s if s.model.text_side_trains else 0.0)
                row = {
                    "subject": n,
                    "about": s.spec.about,
                    "precision": precision,
                    "frames": frames,
                    "batch": plan.batch,
                    "trainable_params": s.trainable,
                    "video_step": m.as_dict(),
                    "recognition_step_s": rec,
                    "text_side_trains": s.model.text_side_trains,
                }
                if base is not None:
                    row["video_vs_baseline"] = m.median / base.median
                    row["recognition_vs_baseline"] = rec / base.median
                    row["video_vs_baseline_min"] = m.min / base.min
                if floor is not None:
                    row["video_vs_floor"] = m.median / floor.median
                if m.flops:
                    row["tflops_per_s"] = m.flops / m.median / 1e12
                    if peak and precision == "bf16":
                        row["mfu"] = m.flops / m.median / peak
                rows.append(row)
    return rows, text_rows


def section_infer(plan: Plan, clip, subjects, device, log) -> list[dict]:
    rows = []
    for s in subjects.values():
        s.model.eval()
    try:
        for frames, names in plan.infer:
            work = H.make_workload(clip, plan.batch, frames, plan.num_classes, device)
            for precision in plan.precisions:
                log(f"[infer] T={frames} B={plan.batch} {precision}")
                res = H.measure(
                    [
                        H.Case(n, partial(H.infer_step, subjects[n], work, precision), repeats=plan.repeats)
                        for n in names
                    ],
                    device,
                    log,
                )
                base = res.get(report.BASELINE)
                for n in names:
                    m = res[n]
                    rows.append(
                        {
                            "subject": n,
                            "precision": precision,
                            "frames": frames,
                            "batch": plan.batch,
                            "clips_per_s": plan.batch / m.median,
                            "forward": m.as_dict(),
                            "vs_baseline": m.median / base.median if base is not None else None,
                        }
                    )
    finally:
        for s in subjects.values():
            s.model.train()
    return rows


def section_scaling(plan: Plan, clip, subjects, device, log) -> list[dict]:
    rows = []
    for frames, batch in plan.scaling:
        work = H.make_workload(clip, batch, frames, plan.num_classes, device)
        log(f"[scaling] T={frames} B={batch} {plan.scaling_precision}")
        res = H.measure(
            [
                H.Case(n, partial(H.video_step, subjects[n], work, plan.scaling_precision), repeats=1)
                for n in plan.scaling_subjects
            ],
            device,
            log,
        )
        base = res.get(report.BASELINE)
        for n in plan.scaling_subjects:
            m = res[n]
            rows.append(
                {
                    "subject": n,
                    "precision": plan.scaling_precision,
                    "frames": frames,
                    "batch": batch,
                    "step": m.as_dict(),
                    "vs_baseline": m.median / base.median if base is not None else None,
                }
            )
    return rows


def section_data(plan: Plan, image_size: int, train_rows: list[dict], cache_dir: Path, log) -> dict[str, Any]:
    log(f"[data] workers {plan.data_workers}, frames {plan.data_frames}")
    try:
        from benchmarks.loader import loader_throughput
        from stop_lightning.schema import DataConfig
    except ImportError as err:  # e.g. PyAV missing on a GPU image
        return {"error": f"the data stack does not import here ({err})"}
    cfg = DataConfig(
        dataset="synthetic",
        batch_size=plan.data_batch_size,
        pin_memory=False,
        persistent_workers=False,
        **plan.data_video,
    )
    try:
        from stop_lightning.data.synthetic import ensure_synthetic

        _, manifests = ensure_synthetic(cfg, cache_dir, layout="hmdb51")
        train_clips = sum(1 for _ in (manifests / f"split{cfg.split}" / "train.jsonl").open())
        needed = (plan.data_batches + 1) * plan.data_batch_size
        if train_clips < needed:  # the loader would start a new epoch (and new workers) inside the timing
            return {
                "error": f"the synthetic training split has {train_clips} clips, the timing needs {needed}; "
                "raise synthetic_clips_per_class"
            }
        rows = loader_throughput(
            cfg,
            cache_dir,
            image_size=image_size,
            workers=plan.data_workers,
            frames=plan.data_frames,
            batches=plan.data_batches,
        )
    except Exception as err:  # noqa: BLE001 - report, keep the other sections
        return {"error": f"{type(err).__name__}: {err}"}
    consumer = plan.profile_subject
    for r in rows:
        steps = [t for t in train_rows if t["subject"] == consumer and t["frames"] == r["frames"]]
        if steps:
            fastest = min(steps, key=lambda t: t["recognition_step_s"])  # the most demanding consumer
            r["consumed_clips_per_s"] = fastest["batch"] / fastest["recognition_step_s"]
            r["consumer"] = f"{consumer} {fastest['precision']} recognition step, B={fastest['batch']}"
            r["headroom"] = r["clips_per_s"] / r["consumed_clips_per_s"]
        log(f"  T={r['frames']} workers={r['workers']}: {r['clips_per_s']:.1f} clips/s")
    v = plan.data_video
    about = (
        f"Synthetic videos ({v['synthetic_size']}x{v['synthetic_size']}, {v['synthetic_frames']} frames, "
        "encoded like the real "
        f"sets) decoded with PyAV, random-resized-crop to {image_size} px and normalised by the "
        "training DataLoader "
        f"(batch {plan.data_batch_size}, {plan.data_batches} timed batches after the first). "
        "Training consumption: "
        f"`{consumer}` at the fastest precision measured above, at the same T. "
        "The loader was measured alone; in a real "
        "run on the same cores its workers compete with the training step."
    )
    return {"rows": rows, "about": about}


def section_profile(plan: Plan, clip, subjects, train_rows, text_rows, device, log) -> dict[str, Any]:
    s = subjects[plan.profile_subject]
    frames = plan.train[0][0]
    precision = "fp32" if "fp32" in plan.precisions else plan.precisions[0]
    work = H.make_workload(clip, plan.batch, frames, plan.num_classes, device)
    log(f"[profile] {s.name} T={frames} B={plan.batch} {precision}")

    def step():
        H.video_step(s, work, precision)
        if s.model.text_side_trains:
            H.text_step(s, work, precision)

    step()  # warm
    prof = H.module_profile(s.model, step, device)
    video = next(
        (
            t["video_step"]["median_s"]
            for t in train_rows
            if t["subject"] == s.name and t["frames"] == frames and t["precision"] == precision
        ),
        None,
    )
    text = (
        next((t["step"]["median_s"] for t in text_rows if t["precision"] == precision), 0.0)
        if s.model.text_side_trains
        else 0.0
    )
    prof["unprofiled_s"] = (video or 0.0) + text
    prof["about"] = (
        f"`{s.name}` recognition step (video + text side), T={frames}, B={plan.batch}, {precision}"
    )
    return prof


def targets(train_rows: list[dict], data: dict | None) -> list[dict]:
    out = []
    fast = [r for r in train_rows if r["subject"] == "stop_fast" and "video_vs_baseline" in r]
    if fast:
        worst = max(r["video_vs_baseline"] for r in fast)
        parts = [
            f"{r['precision']} T={r['frames']}: video step {r['video_vs_baseline']:.2f}x meanP "
            f"({r.get('video_vs_floor', float('nan')):.2f}x the fwd+bwd floor), "
            f"recognition step {r['recognition_vs_baseline']:.2f}x"
            for r in fast
        ]
        floors = [
            r["video_vs_baseline"]
            for r in train_rows
            if r["subject"] == report.FLOOR and "video_vs_baseline" in r
        ]
        note = (
            f" The floor alone (backward through the frozen CLIP, needed by any prompt inside it) is "
            f"{min(floors):.2f}-{max(floors):.2f}x meanP."
            if floors
            else ""
        )
        out.append(
            {
                "name": f"STOP step, fast generator, at most {TARGET_STEP_RATIO}x the meanP baseline",
                "met": worst <= TARGET_STEP_RATIO,
                "worst": worst,
                "detail": "; ".join(parts) + "." + note,
            }
        )
    rows = [r for r in (data or {}).get("rows", []) if r["workers"] == 2 and "headroom" in r]
    if rows:
        worst = min(r["headroom"] for r in rows)
        parts = [
            f"T={r['frames']}: {r['clips_per_s']:.1f} clips/s loaded vs "
            f"{r['consumed_clips_per_s']:.2f} consumed ({r['headroom']:.1f}x)"
            for r in rows
        ]
        out.append(
            {
                "name": (
                    f"data loading at least {TARGET_LOADER_HEADROOM:g}x what training consumes, 2 workers"
                ),
                "met": worst >= TARGET_LOADER_HEADROOM,
                "worst": worst,
                "detail": "; ".join(parts) + ".",
            }
        )
    return out


# ------------------------------------------------------------------------------------------------
# Run
# ------------------------------------------------------------------------------------------------


def run(
    plan: Plan,
    device: torch.device,
    sections: tuple[str, ...] = ALL_SECTIONS,
    cache_dir: Path | None = None,
    command: str = "",
    log=print,
) -> dict[str, Any]:
    """Measure ``sections`` of ``plan`` on ``device``; returns the results (JSON-ready)."""
    start = time.time()
    cache_dir = Path(cache_dir or os.environ.get("STOP_CACHE_DIR", ROOT / ".cache" / "stop_lightning"))
    machine = machine_info(device)
    log(f"[setup] {machine['description']}")
    clip = H.build_clip(plan.clip_size)
    frames = [f for f, _ in plan.train + plan.infer] + [f for f, _ in plan.scaling]
    names = sorted(
        {n for _, ns in plan.train + plan.infer for n in ns}
        | (set(plan.scaling_subjects) if plan.scaling else set())
        | ({plan.profile_subject} if "profile" in sections else set()),
        key=list(H.SUBJECTS).index,
    )
    subjects = H.build_subjects(clip, names, max(frames), device)
    dims = CLIP_SIZES[plan.clip_size]
    results: dict[str, Any] = {
        "device_key": device.type,
        "mode": plan.mode,
        "command": command,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "settings": {
            "clip_size": plan.clip_size,
            "clip_dims": (
                f"width {dims['width']}, {dims['layers']} layers, patch {dims['patch_size']}, "
                f"{dims['image_size']} px; "
                f"text width {dims['text_width']}, {dims['text_layers']} layers"
            ),
            "num_classes": plan.num_classes,
            "batch": plan.batch,
            "repeats_note": f"1 warm-up + {plan.repeats} timed call(s) per case, cases interleaved",
            "scaling_note": f"{plan.clip_size}, {plan.scaling_precision}, 1 warm-up + 1 timed call",
            "trainable_params": {n: s.trainable for n, s in subjects.items()},
        },
    }
    train_rows: list[dict] = []
    text_rows: list[dict] = []
    if "train" in sections:
        train_rows, text_rows = section_train(plan, clip, subjects, device, log)
        results["train"], results["text_step"] = train_rows, text_rows
    if "infer" in sections:
        results["inference"] = section_infer(plan, clip, subjects, device, log)
    if "scaling" in sections and plan.scaling:
        results["scaling"] = section_scaling(plan, clip, subjects, device, log)
    if "data" in sections:
        results["data"] = section_data(plan, dims["image_size"], train_rows, cache_dir, log)
    if "profile" in sections and plan.profile:
        results["profile"] = section_profile(plan, clip, subjects, train_rows, text_rows, device, log)
    results["targets"] = targets(train_rows, results.get("data"))
    results["machine"]["load_end"] = _loadavg()
    results["wall_s"] = time.time() - start
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer configurations and repeats (< 2 min on 2 CPU cores)"
    )
    parser.add_argument(
        "--compact",
        action="store_true",
        help=(
            "train + infer of meanP, the floor and fast STOP at T=12 only "
            "(GPU: B=32 bf16, ~1 min; CPU: tiny CLIP)"
        ),
    )
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on CPU (default 1: on shared cores, 2 OpenMP threads stall at every "
        "parallel region while another job holds a core, which drowns the ratios in noise)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(ALL_SECTIONS),
        help=f"comma-separated subset of {','.join(ALL_SECTIONS)}",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per case after the warm-up (default: by mode)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="where the .md/.json go (full: docs/, quick: runs/bench/)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the markdown, write nothing")
    args = parser.parse_args(argv)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(ALL_SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(ALL_SECTIONS)}")
    plan = plan_for("compact" if args.compact else "quick" if args.quick else "full", device)
    if args.repeats is not None:
        plan = replace(plan, repeats=max(1, args.repeats))
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    results = run(plan, device, sections, command=command.strip(), log=log)
    markdown = report.render_markdown(results)
    if args.no_write:
        print(markdown)
        return 0
    short = args.quick or args.compact
    out_dir = args.out_dir or (ROOT / ("runs/bench" if short else "docs"))
    stem = f"benchmarks-{plan.mode}" if short else "benchmarks"
    report.write_json(results, out_dir / f"{stem}.json")
    report.write_markdown(results, out_dir / f"{stem}.md")
    log(
        f"wrote {out_dir / (stem + '.md')} and {out_dir / (stem + '.json')} "
        f"in {results['wall_s'] / 60:.1f} min"
    )
    for t in results["targets"]:
        log(f"target: {t['name']}: {'met' if t['met'] else 'NOT met'} ({t['detail']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
