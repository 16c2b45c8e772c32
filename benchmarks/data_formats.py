"""`make bench` (second part): clips/s per core of the three storage formats on realistic encodings.

    python benchmarks/data_formats.py            # full-length videos -> docs/benchmarks.{md,json}
    python benchmarks/data_formats.py --quick    # 2 s videos, < 2 min on 2 cores -> runs/bench/

For each encoding of ``encodings.ENCODINGS`` (UCF101/HMDB51-, MSRVTT- and Kinetics-like textured
videos), the videos are read three ways: raw (the files as encoded), preprocessed
(``stop-lightning preprocess``: 224 px short side, 3 fps, H.264 GOP 6) and shards (``stop-lightning
shard``: the same frames as JPEG, quality 90). Each row is one training clip of T frames, segment
sampling, through the dataset's decode step (sampling + decode to uint8, no crop or normalisation),
in one process with one thread; the rate is clips per CPU-second of that process, i.e. per core,
which other jobs on shared cores do not change much. "Cores to feed one GPU" divides what a GPU
consumes (FLOPs per clip measured with ``torch.utils.flop_counter``, at a stated utilisation) by it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from stop_lightning.data.jpeg import codec_name  # noqa: E402

FRAMES = (8, 12, 16)
# stop_fast training step, ViT-B/32, 224 px, 12 frames (docs/benchmarks.md, flop counter), and the GPU.
GFLOP_PER_CLIP = 243.0
GPU = "H100 SXM, bf16 dense"
GPU_PEAK_TFLOPS = 990.0
UTILISATION = 0.40
TARGET_SHARDS = 150.0  # clips/s per core at 12 frames
TARGET_PREPROCESSED_RATIO = 2.5  # MSRVTT-like preprocessed vs raw
# What the shard training loader hands over: normalised float32 clips (the default), uint8 clips
# (data.normalize_on_device=true) or only the stored JPEG bytes (data.decode_on=device).
LOADER_CLIPS = ("float32", "uint8", "bytes")


def _write_video(job: tuple) -> Path:
    from benchmarks.encodings import ENCODINGS, write_realistic_video

    path, name, seconds, seed = job
    return write_realistic_video(path, ENCODINGS[name], seconds=seconds, seed=seed)


def texture_key() -> str:
    """Names the synthetic texture, so sets written with another one are not reused."""
    import hashlib

    from benchmarks.encodings import TEXTURE_DETAIL, TEXTURE_GRAIN

    return hashlib.sha1(repr((TEXTURE_DETAIL, TEXTURE_GRAIN)).encode()).hexdigest()[:8]


def make_sets(
    work: Path, quick: bool, videos: int, workers: int, encodings: tuple[str, ...] | None = None
) -> dict[str, dict[str, Path]]:
    """Per encoding: the raw videos + manifests, their preprocessed copies and their shards."""
    from benchmarks.encodings import ENCODINGS
    from stop_lightning.data.manifest import ClipRecord, write_classes, write_manifest
    from stop_lightning.data.preprocess import preprocess
    from stop_lightning.data.shards import write_shards
    from stop_lightning.data.stored_copies import StoreSettings, ordered_map

    settings = StoreSettings(short_side=224, fps=3.0, codec="h264", gop=6, jpeg_quality=90)
    out = {}
    for name in encodings or tuple(ENCODINGS):
        base = work / f"{name}_{'quick' if quick else 'full'}_{videos}_{texture_key()}"
        raw, manifests = base / "raw", base / "manifests"
        if not (manifests / "split1" / "val.jsonl").is_file():
            jobs = [(raw / f"v{i}", name, 2.0 if quick else None, i) for i in range(videos)]
            written = ordered_map(_write_video, jobs, workers, f"write {name}", progress=False)
            rows = [ClipRecord(path.relative_to(raw).as_posix(), label=0) for path in written]
            for split in ("train", "val"):  # a training DataModule reads both
                write_manifest(manifests / "split1" / f"{split}.jsonl", rows)
            write_classes(manifests / "classes.txt", ["any"])
        pre = base / "preprocessed"
        preprocess(raw, manifests, pre, settings, workers=workers, progress=False)
        write_shards(raw, manifests, base / "shards", settings, workers=workers, progress=False)
        out[name] = {
            "raw": (raw, manifests),
            "preprocessed": (pre / "videos", pre / "manifests"),
            "shards": (raw, manifests, base / "shards"),
        }
    return out


def clips_per_core(where: tuple, fmt: str, frames: int, min_s: float) -> float:
    """Clips through the dataset's decode step (sampling + decode to uint8) per CPU-second."""
    ds = bench_datamodule(where, fmt, frames).datasets["train"]
    torch.manual_seed(0)
    ds.decode(0)  # warm: open files, LitData's reader
    clips, start = 0, time.process_time()
    while time.process_time() - start < min_s or clips < 2 * len(ds):
        ds.decode(clips % len(ds))
        clips += 1
    return clips / (time.process_time() - start)


def measure(quick: bool, log=print) -> dict:
    from benchmarks.encodings import ENCODINGS

    torch.set_num_threads(1)
    work = Path(ROOT / ".cache" / "stop_lightning" / "bench_formats")
    started = time.time()
    log("[formats] writing videos, preprocessed copies and shards")
    sets = make_sets(work, quick, videos=3 if quick else 6, workers=2)
    rows = []
    for name, where in sets.items():
        for fmt in ("raw", "preprocessed", "shards"):
            loc = where[fmt]
            for t in FRAMES:
                rate = clips_per_core(
                    loc, "shards" if fmt == "shards" else "video", t, min_s=0.5 if quick else 2.0
                )
                rows.append(
                    {
                        "encoding": name,
                        "about": ENCODINGS[name].about,
                        "format": fmt,
                        "frames": t,
                        "clips_per_core_s": rate,
                    }
                )
                log(f"  {name} {fmt} T={t}: {rate:.1f} clips/s per core")
    train_path = []
    for name, where in sets.items():
        item = train_items_per_core(where["shards"], 12, min_s=0.5 if quick else 2.0)
        log(f"  {name} shards training item T=12: {item:.1f} clips/s per core")
        loaders = {
            clips: loader_rate(where["shards"], 1, 4.0 if quick else 10.0, clips=clips, log=log)
            for clips in LOADER_CLIPS
        }
        train_path.append({"encoding": name, "train_item_per_core_s": item, "loader_1_worker": loaders})
    gpu_clips = GPU_PEAK_TFLOPS * 1e12 * UTILISATION / (GFLOP_PER_CLIP * 1e9)
    return {
        "device_key": "cpu-data-formats",
        "mode": "quick" if quick else "full",
        "rows": rows,
        "train_path": train_path,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "gpu_clips_per_s": gpu_clips,
        "jpeg_codec": codec_name(),
        "wall_s": time.time() - started,
    }


def render(r: dict) -> str:
    rate = {(x["encoding"], x["format"], x["frames"]): x["clips_per_core_s"] for x in r["rows"]}
    encodings = list(dict.fromkeys(x["encoding"] for x in r["rows"]))
    about = {x["encoding"]: x["about"] for x in r["rows"]}
    header = ["video", "format"] + [f"T={t}" for t in FRAMES] + ["cores for one GPU (T=12)"]
    body = []
    for e in encodings:
        for fmt in ("raw", "preprocessed", "shards"):
            cores = r["gpu_clips_per_s"] / rate[(e, fmt, 12)]
            body.append(
                [about[e] if fmt == "raw" else "", fmt]
                + [f"{rate[(e, fmt, t)]:.1f}" for t in FRAMES]
                + [f"{cores:.0f}"]
            )
    shards12 = min(rate[(e, "shards", 12)] for e in encodings)
    ratio = rate[("msrvtt", "preprocessed", 12)] / rate[("msrvtt", "raw", 12)]
    lines = [
        f"## Data formats: clips/s per core ({r['mode']} run)\n",
        f"Generated {r['generated']} by "
        f"`benchmarks/data_formats.py{' --quick' if r['mode'] == 'quick' else ''}` "
        f"in {r['wall_s'] / 60:.1f} min ({r['machine']}). "
        f"{'Quick run: 2 s videos. ' if r['mode'] == 'quick' else ''}"
        "Clips per CPU-second of one single-threaded process: segment sampling and decoding to uint8 "
        "(no crop or normalisation). Preprocessed: 224 px short side, 3 fps, H.264 GOP 6 "
        "(`stop-lightning preprocess`); shards: the same frames as JPEG quality 90 "
        "(`stop-lightning shard`).\n",
        report._table(header, body, "llrrrr"),
        f"**Cores needed to feed one GPU**: {GPU} ~{GPU_PEAK_TFLOPS:.0f} TFLOP/s "
        f"at {UTILISATION:.0%} utilisation "
        f"consumes {r['gpu_clips_per_s']:,.0f} `stop_fast` clips/s "
        f"({GFLOP_PER_CLIP:.0f} GFLOP per 12-frame clip, "
        f"ViT-B/32 training step); at T=12 that is {r['gpu_clips_per_s'] / shards12:.0f} "
        "cores reading shards "
        f"(slowest encoding) against {r['gpu_clips_per_s'] / rate[('msrvtt', 'raw', 12)]:.0f} "
        "decoding raw MSRVTT-like files.\n",
        f"- Target: shards at least {TARGET_SHARDS:.0f} clips/s per core at 12 frames: "
        f"{'**met**' if shards12 >= TARGET_SHARDS else '**not met**'} ({shards12:.0f}, slowest encoding).",
        f"- Target: preprocessed MSRVTT-like files at least {TARGET_PREPROCESSED_RATIO}x raw at 12 frames: "
        f"{'**met**' if ratio >= TARGET_PREPROCESSED_RATIO else '**not met**'} ({ratio:.1f}x).\n",
    ]
    if r.get("train_path"):
        lines += [render_train_path(r, rate), ""]
    return "\n".join(lines)


def render_train_path(r: dict, rate: dict) -> str:
    """The shard rows followed through training: the decode step, the whole item, the real loader
    with each of :data:`LOADER_CLIPS`, and the loader cores one GPU needs with each."""
    names = {"float32": "float32 clips", "uint8": "uint8 clips", "bytes": "JPEG bytes"}
    header = [
        "video",
        "decode only",
        "training item",
        *(f"loader, {names[c]}" for c in LOADER_CLIPS),
        "wall clips/s (bytes)",
        "start-up s",
        f"loader cores for one GPU ({' / '.join(LOADER_CLIPS)})",
    ]
    body = []
    for x in r["train_path"]:
        loaders = x["loader_1_worker"]
        per_cpu = [(loaders.get(c) or {}).get("clips_per_cpu_s") for c in LOADER_CLIPS]
        cores = ["n/a" if not v else f"{r['gpu_clips_per_s'] / v:.0f}" for v in per_cpu]
        wall = (loaders.get("bytes") or {}).get("clips_per_s")
        body.append(
            [
                x["encoding"],
                f"{rate[(x['encoding'], 'shards', 12)]:.1f}",
                f"{x['train_item_per_core_s']:.1f}",
                *("n/a" if v is None else f"{v:.1f}" for v in per_cpu),
                "n/a" if wall is None else f"{wall:.1f}",
                f"{loaders['float32']['startup_s']:.1f}",
                " / ".join(cores),
            ]
        )
    return "\n".join(
        [
            "### Shards through the training path (T=12, B=32, 224 px)\n",
            "Clips per CPU-second: the decode step (the table above); the training item (decode, random "
            "resized crop to 224, normalisation to float32: what a loader worker does per clip before "
            "collation) in one process; the DataModule's train loader with one worker process, per "
            "CPU-second of the worker and the main process together (collation and the transfer through "
            "shared memory included), yielding float32 clips (the default), uint8 clips "
            "(`data.normalize_on_device=true`: the normalisation then runs on the GPU) or only the "
            "stored JPEG bytes of the sampled frames and the crop draws (`data.decode_on=device`: "
            "decode, crop, resize and normalisation then run on the GPU; `scripts/gpu_check.sh` times "
            "them there); the GPU's part is not counted here. Its wall rate; start-up is the time to the "
            f"first batch, not in the rates. The last column divides the {r['gpu_clips_per_s']:,.0f} "
            "clips/s one GPU consumes (above) by each loader rate. JPEG codec: "
            f"{r.get('jpeg_codec', 'torchvision')}.\n",
            report._table(header, body, "l" + "r" * (len(header) - 1)),
        ]
    )


def repeated_manifests(manifests: Path, out: Path, times: int) -> Path:
    """A copy of ``manifests`` whose train and val lists name every video ``times`` times (the shards,
    one item per distinct video, still match it), so an epoch is long enough to keep every loader
    worker busy."""
    from stop_lightning.data.manifest import read_manifest, write_classes, write_manifest

    for split in ("train", "val"):
        rows = read_manifest(manifests / "split1" / f"{split}.jsonl")
        write_manifest(out / "split1" / f"{split}.jsonl", rows * times)
    write_classes(out / "classes.txt", ["any"])
    return out


def bench_datamodule(
    where: tuple,
    fmt: str,
    frames: int,
    batch: int = 32,
    workers: int = 0,
    manifests: Path | None = None,
    clips: str = "float32",
):
    """The recognition DataModule over ``where`` (``make_sets``: video root, manifests[, shards]) in
    ``fmt`` (video | shards), set up for fitting with the real training transforms (random resized
    crop to 224, normalisation), its loader yielding ``clips`` (:data:`LOADER_CLIPS`); memory pinned
    when there is a GPU, as in training; ``manifests`` replaces the set's own lists."""
    from stop_lightning.data.datamodules import RecognitionDataModule
    from stop_lightning.schema import DataConfig

    cfg = DataConfig(
        dataset="manifest",
        video_root=str(where[0]),
        manifest_dir=str(manifests or where[1]),
        num_frames=frames,
        batch_size=batch,
        num_workers=workers,
        pin_memory=True,  # the DataLoader pins only when CUDA is available
        persistent_workers=workers > 0,
        normalize_on_device=clips == "uint8",
        decode_on="device" if clips == "bytes" else "worker",
        format=fmt,
        shard_dir=str(where[2]) if fmt == "shards" else "",
    )
    dm = RecognitionDataModule(cfg, 224, (0.5,) * 3, (0.5,) * 3)
    dm.setup("fit")
    return dm


def train_items_per_core(where: tuple, frames: int, min_s: float) -> float:
    """Training items (decode + random resized crop + normalisation, what a loader worker does per
    clip before collation) per CPU-second of this process."""
    ds = bench_datamodule(where, "shards", frames).datasets["train"]
    ds[(0, 0)]  # warm
    clips, start = 0, time.process_time()
    while time.process_time() - start < min_s or clips < 2 * len(ds):
        ds[(clips % len(ds), clips)]
        clips += 1
    return clips / (time.process_time() - start)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def loader_rate(
    where: tuple,
    workers: int,
    seconds: float,
    batch: int = 32,
    frames: int = 12,
    clips: str = "float32",
    log=print,
) -> dict:
    """The full training loader on the shards of ``where`` with ``workers`` processes: clips/s of
    wall time and per CPU-second of all its processes, after start-up (timed apart), yielding
    ``clips`` (:data:`LOADER_CLIPS`; what the GPU does after the transfer is not counted here).

    The manifest is repeated so that an epoch holds at least 8 batches per worker: the DataLoader
    hands each epoch's batches to workers 0, 1, 2, ... from the start, so an epoch of fewer batches
    than workers leaves the rest idle, and each epoch's end drains the pipeline."""
    from stop_lightning.data.manifest import read_manifest

    rows = len(read_manifest(Path(where[1]) / "split1" / "train.jsonl"))
    times = -(-8 * max(1, workers) * batch // rows)
    listed = repeated_manifests(where[1], Path(where[2]).parent / f"manifests_x{times}", times)
    loader = bench_datamodule(where, "shards", frames, batch, workers, listed, clips).train_dataloader()
    started = time.perf_counter()
    it = iter(loader)
    for _ in range(max(1, workers)):  # every worker's first batch: start-up and warm-up
        next(it)
    startup = time.perf_counter() - started
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    cpu0 = [_cpu_seconds(p) for p in pids]
    served, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        try:
            served += len(next(it)["video"])  # a tensor's first dimension, or an EncodedBatch's items
        except StopIteration:
            epoch += 1
            loader.sampler.set_epoch(epoch)
            it = iter(loader)
    elapsed = time.perf_counter() - start
    cpu1 = [_cpu_seconds(p) for p in pids]
    cpu = None if None in cpu0 + cpu1 else sum(b - a for a, b in zip(cpu0, cpu1))  # type: ignore[operator]
    result = {
        "workers": workers,
        "clips_dtype": clips,
        "batch": batch,
        "frames": frames,
        "batches_per_epoch": len(loader),
        "startup_s": startup,
        "clips": served,
        "seconds": elapsed,
        "clips_per_s": served / elapsed,
        "per_worker": served / elapsed / max(1, workers),
        "clips_per_cpu_s": served / cpu if cpu else None,
    }
    log(
        f"[loader] shards, {workers} workers, {result['clips_dtype']}, B={batch}, T={frames}: "
        f"{result['clips_per_s']:.0f} clips/s "
        f"({result['per_worker']:.0f} per worker, "
        f"{result['clips_per_cpu_s'] or float('nan'):.0f} per CPU-second), start-up {startup:.1f} s"
    )
    return result


def device_decode_rate(
    where: tuple, device: str, batches: int, batch: int = 32, frames: int = 12, log=print
) -> dict:
    """``data.decode_on=device`` on ``device``: the time of the DataModule's after-transfer step
    (decode with nvJPEG on a GPU, crop, resize, flip, normalise) per batch of the shard loader, its
    clips/s, the CPU-seconds the main process spends on it, and how far its clips are from the
    workers' (libjpeg-turbo and the CPU resize) for the same items and draws."""
    from stop_lightning.data.manifest import read_manifest

    rows = len(read_manifest(Path(where[1]) / "split1" / "train.jsonl"))
    times = -(-(batches + 1) * batch // rows)  # one epoch holds every timed batch and the compared one
    listed = repeated_manifests(where[1], Path(where[2]).parent / f"manifests_x{times}", times)
    dms = {
        clips: bench_datamodule(where, "shards", frames, batch, 0, listed, clips)
        for clips in ("float32", "bytes")
    }
    loaders = {clips: iter(dm.train_dataloader()) for clips, dm in dms.items()}
    dm = dms["bytes"]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(encoded: dict) -> torch.Tensor:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in encoded.items()}
        return dm.on_after_batch_transfer(moved, 0)["video"]

    reference, encoded = next(loaders["float32"]), next(loaders["bytes"])  # the same items and draws
    diff = (step(encoded).float().cpu() - reference["video"]).abs()  # [B, T, 3, S, S], normalised units
    pending = [next(loaders["bytes"]) for _ in range(batches)]
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for b in pending:
        step(b)
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    clips = sum(len(b["video"]) for b in pending)
    result = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "jpeg_codec": codec_name(),
        "batch": batch,
        "frames": frames,
        "batches": batches,
        "ms_per_batch": 1e3 * wall / batches,
        "clips_per_s": clips / wall,
        "host_cpu_s_per_batch": cpu / batches,
        "max_abs_diff_vs_worker": float(diff.max()),
        "mean_abs_diff_vs_worker": float(diff.mean()),
    }
    log(
        f"[device decode] {device}, B={batch}, T={frames}: {result['ms_per_batch']:.1f} ms a batch, "
        f"{result['clips_per_s']:.0f} clips/s, "
        f"host CPU {result['host_cpu_s_per_batch'] * 1e3:.1f} ms a batch; "
        f"vs the workers' clips: max |diff| {result['max_abs_diff_vs_worker']:.3f}, "
        f"mean {result['mean_abs_diff_vs_worker']:.4f}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 s videos, 3 per encoding (< 2 min on 2 cores)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="where the .md/.json go (full: docs/, quick: runs/bench/)"
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=0,
        help="instead: the shard training loader with N workers (B=32, T=12, 224 px), clips/s -> JSON",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="with --loader-workers: how long to time")
    parser.add_argument(
        "--device-decode",
        default="",
        metavar="DEVICE",
        help="instead: time data.decode_on=device's after-transfer step on DEVICE (cuda, cpu) -> JSON",
    )
    parser.add_argument("--batches", type=int, default=10, help="with --device-decode: batches to time")
    args, _ = parser.parse_known_args(argv)  # `make bench ARGS=...` passes run.py's options too
    if args.device_decode:
        import json

        work = ROOT / ".cache" / "stop_lightning" / "bench_formats"
        sets = make_sets(work, args.quick, videos=6, workers=2, encodings=("kinetics",))
        result = device_decode_rate(sets["kinetics"]["shards"], args.device_decode, args.batches)
        out_dir = args.out_dir or ROOT / "runs" / "bench"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "device_decode.json").write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if args.loader_workers > 0:
        import json

        work = ROOT / ".cache" / "stop_lightning" / "bench_formats"
        sets = make_sets(work, args.quick, videos=6, workers=args.loader_workers, encodings=("kinetics",))
        result = {
            clips: loader_rate(sets["kinetics"]["shards"], args.loader_workers, args.seconds, clips=clips)
            for clips in LOADER_CLIPS
        }
        out_dir = args.out_dir or ROOT / "runs" / "bench"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "shard_loader.json").write_text(json.dumps(result, indent=1) + "\n")
        return 0

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    results = measure(args.quick, log)
    markdown = render(results)
    print(markdown)
    out_dir = args.out_dir or (ROOT / ("runs/bench" if args.quick else "docs"))
    stem = "benchmarks-quick" if args.quick else "benchmarks"
    report.write_json(results, out_dir / f"{stem}.json")
    report.write_block(
        out_dir / f"{stem}.md", results["device_key"], markdown, writer="benchmarks/data_formats.py"
    )
    log(f"wrote {out_dir / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
