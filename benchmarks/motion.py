"""`make motion-table`: does a method learn motion that only frame order tells apart?

    make motion-table                       # -> docs/motion_benchmark.md (a few minutes on 2 CPU cores)
    python benchmarks/motion.py --epochs 4 --out runs/motion/quick.md
    python benchmarks/motion.py --methods vop_c,vop_f --keep   # rerun two rows, keep the others

A synthetic set shaped like Something-Something v2 (its json labels, ``<id>.webm`` VP9 videos, read by
the real ``ssv2`` builder, so horizontal flips are off) with mirror-image classes: an object on a
textured background moves left / right, up / down, towards / away from the camera (it grows /
shrinks), or turns clockwise / anticlockwise. Clip ``j`` of a class is clip ``j`` of its mirror class
played backwards, with the same object, colours, background and position: the two hold the same set
of frames, so a model that pools frames without order (meanP) cannot beat 50% within a pair, and any
accuracy above that comes from temporal modelling.

Each method trains with the tiny random CLIP (demo.yaml's settings for it) on the same clips and is
tested on held-out clips; the table reports test top-1 over the 8 classes and the accuracy of telling a
clip from its mirror image (the pair accuracy), whatever the numbers are. Nothing is tuned per method.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchmarks.spread import Job, fmt_range, int_list, run_jobs, spread, what_was_measured  # noqa: E402
from stop_lightning.config import available_presets  # noqa: E402
from stop_lightning.data.build import build_manifests  # noqa: E402
from stop_lightning.data.synthetic import write_video  # noqa: E402
from stop_lightning.fileio import atomic_write  # noqa: E402
from stop_lightning.tasks.recognition import read_confusion as read_run_confusion  # noqa: E402

# (class name, mirror-image partner's index); pairs sit next to each other.
CLASSES = (
    "move left",
    "move right",
    "move up",
    "move down",
    "move towards the camera",
    "move away from the camera",
    "move turning clockwise",
    "move turning anticlockwise",
)
# STOP runs with its fast spatial prompt generator by default: the reference generator (preset stop)
# costs tens of seconds per step on a shared CPU; `--methods stop,...` runs it too.
METHODS = (
    "stop_fast",
    "stop_official",
    "dgl",
    "vop",
    "vop_p",
    "vop_c",
    "vop_f",
    "vop_fp",
    "vop_fc",
    "clip4clip_meanp",
)
LABELS = {
    "stop": "STOP",
    "stop_fast": "STOP (fast spatial generator)",
    "stop_official": "STOP (official)",
    "dgl": "DGL",
    "vop": "VoP",
    "vop_p": "VoP-P (position-specific)",
    "vop_c": "VoP-C (context-specific)",
    "vop_f": "VoP-F (function-specific)",
    "vop_fp": "VoP-F+P",
    "vop_fc": "VoP-F+C",
    "clip4clip_meanp": "meanP",
}


@dataclass(frozen=True)
class Look:
    """What clip ``j`` looks like in every class: only the motion differs."""

    background: np.ndarray  # (size, size, 3) uint8 texture
    colour: np.ndarray  # (3,) object colour
    marker: np.ndarray  # (3,) colour of one quadrant (makes rotation visible)
    cross: float  # position along the axis that does not move, in [0.3, 0.7]


def make_look(j: int, size: int, seed: int) -> Look:
    rng = np.random.default_rng([seed, j])
    coarse = rng.integers(40, 160, size=(size // 4, size // 4, 3))
    texture = np.kron(coarse, np.ones((4, 4, 1))) + rng.integers(-20, 20, size=(size, size, 3))
    return Look(
        background=np.clip(texture, 0, 255).astype(np.uint8),
        colour=rng.integers(180, 256, size=3).astype(np.uint8),
        marker=rng.integers(0, 60, size=3).astype(np.uint8),
        cross=float(rng.uniform(0.3, 0.7)),
    )


def object_track(c: int, t: np.ndarray, look: Look, size: int) -> tuple[np.ndarray, ...]:
    """Centre x, centre y, half side and angle (radians) per frame for class ``c`` at times ``t``.

    The odd class of each pair is the even one with time reversed."""
    s = t if c % 2 == 0 else 1.0 - t
    pair = c // 2
    mid, half = np.full_like(t, size / 2), np.full_like(t, size / 6)
    angle = np.zeros_like(t)
    if pair == 0:  # left (even) then right: x goes from right to left
        x, y = size * (0.75 - 0.5 * s), np.full_like(t, size * look.cross)
    elif pair == 1:  # up then down
        x, y = np.full_like(t, size * look.cross), size * (0.75 - 0.5 * s)
    elif pair == 2:  # towards (grows) then away (shrinks)
        x, y, half = mid, mid, size * (0.08 + 0.22 * s)
    else:  # clockwise then anticlockwise (image y points down: a growing angle turns clockwise)
        x, y, angle = mid, mid, s * math.pi / 2
    return x, y, half, angle


def frames_of(c: int, look: Look, num_frames: int, size: int) -> np.ndarray:
    """``(T, size, size, 3)`` uint8: the square (one quadrant in the marker colour) over the texture."""
    t = np.linspace(0.0, 1.0, num_frames)
    xs, ys, halves, angles = object_track(c, t, look, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    out = np.repeat(look.background[None], num_frames, axis=0)
    for i in range(num_frames):
        cos, sin = math.cos(angles[i]), math.sin(angles[i])
        u = (cos * (xx - xs[i]) + sin * (yy - ys[i])) / halves[i]  # object coordinates in [-1, 1]
        v = (-sin * (xx - xs[i]) + cos * (yy - ys[i])) / halves[i]
        inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
        out[i][inside] = look.colour
        out[i][inside & (u < 0) & (v < 0)] = look.marker
    return out


@dataclass(frozen=True)
class MotionBenchClips:
    """The clips the ssv2 layout writer lays out (``registry.SyntheticClips``)."""

    looks: list[Look]
    num_frames: int
    size: int
    fps: float = 8.0
    class_names: tuple[str, ...] = CLASSES

    @property
    def clips_per_class(self) -> int:
        return len(self.looks)

    def write(self, path: Path, c: int, j: int) -> Path:
        return write_video(path, frames_of(c, self.looks[j], self.num_frames, self.size), self.fps)

    def captions(self, c: int, j: int) -> list[str]:
        return [self.class_names[c]]


def write_dataset(
    root: Path, clips_per_class: int, num_frames: int, size: int, seed: int
) -> tuple[Path, Path]:
    """The benchmark set in the ssv2 layout and its manifests; reused when already written."""
    from stop_lightning.data.registry import get_dataset

    videos, manifests = root / "videos", root / "manifests"
    if not (manifests / "classes.txt").is_file():
        looks = [make_look(j, size, seed) for j in range(clips_per_class)]
        get_dataset("ssv2").write_synthetic(videos, MotionBenchClips(looks, num_frames, size))
        build_manifests("ssv2", videos, None, manifests, progress=False)
    return videos, manifests


def pair_accuracy(confusion: np.ndarray) -> float:
    """Among test clips predicted inside their own mirror pair, the fraction given the right member."""
    right = wrong = 0
    for c in range(len(confusion)):
        mate = c + 1 if c % 2 == 0 else c - 1
        right += confusion[c, c]
        wrong += confusion[c, mate]
    return right / max(1, right + wrong)


def read_confusion(path: Path, class_names: list[str]) -> np.ndarray:
    """The run's confusion_matrix.csv (rows true, columns predicted), rows in ``class_names`` order."""
    names, counts = read_run_confusion(path)  # columns: the same classes in the same order, then unreadable
    idx = [names.index(n) for n in class_names]
    return counts.numpy()[np.ix_(idx, idx)]


def method_job(preset: str, seed: int, threads: int, videos: Path, manifests: Path, args) -> Job:
    """``preset`` trained and tested on the set, as one child process of ``benchmarks/spread.py``."""
    overrides = (
        f"model.preset={preset}",
        "data.dataset=ssv2",
        f"data.video_root={videos}",
        f"data.manifest_dir={manifests}",
        f"data.num_frames={args.frames}",
        "data.batch_size=8",
        "data.train_crop_scale=[1.0,1.0]",
        'task.templates=["a video of {name}."]',
        f"trainer.max_epochs={args.epochs}",
        f"trainer.check_val_every_n_epoch={args.epochs}",
        "trainer.enable_progress_bar=false",
        f"paths.output_dir={args.work / 'runs' / f'{preset}_s{seed}_t{threads}'}",
        f"paths.cache_dir={args.cache_dir}",
        f"name=motion_{preset}",
        "model.function_prompts.split_layer=1",  # VoP-F on the tiny CLIP's 2 layers: 1 per frame, 1 across
    )
    return Job(preset, seed, threads, "demo", overrides)


def with_pair_accuracy(result: dict, manifests: Path) -> dict:
    """``result`` (one child's) with the pair accuracy read from its run's confusion matrix."""
    from stop_lightning.data.manifest import readable_class_name

    classes = [line for line in (manifests / "classes.txt").read_text().splitlines() if line]
    confusion = read_confusion(
        Path(result["run_dir"]) / "confusion_matrix.csv", [readable_class_name(n) for n in classes]
    )
    mirror = [classes.index(n) for n in _ssv2_names()]
    confusion = confusion[np.ix_(mirror, mirror)]  # rows/columns in CLASSES order: pairs side by side
    return {**result, "pair_acc": pair_accuracy(confusion)}


def _ssv2_names() -> list[str]:
    """classes.txt names of CLASSES, as the ssv2 layout writes them."""
    from stop_lightning.data.builders.ssv2 import synthetic_template, template_class

    return [template_class(synthetic_template(c, n)) for c, n in enumerate(CLASSES)]


def _cell(s: dict) -> str:
    """``mean (min-max)`` in percent."""
    return f"{100 * s['mean']:.1f} ({fmt_range(s, 100, 1)})"


def markdown(results: dict[str, dict | None], args, commands: list[str]) -> str:
    seeds, threads = int_list(args.seeds), int_list(args.threads)
    lines = [
        "# Motion benchmark: mirror-image classes (SSv2-like)",
        "",
        "Written by `make motion-table` (`benchmarks/motion.py`); do not edit by hand. What the set is and",
        "why meanP cannot separate a mirror pair: the docstring of `benchmarks/motion.py`.",
        "",
        "Command: " + "; then ".join(f"`{c}`" for c in commands),
        "",
        f"Set: {len(CLASSES)} classes in 4 mirror pairs, {args.clips} clips per class "
        "(a third train, a third test),",
        f"{args.frames} frames of {args.size}x{args.size} px, VP9 webm in the SSv2 layout (drawn with seed "
        f"{args.seed}). Training: tiny random CLIP",
        f"(demo.yaml's settings), {args.epochs} epochs, batch 8, CPU. "
        "Chance: 12.5% top-1, 50% pair accuracy.",
        f"Each method ran {len(seeds)} training seeds ({', '.join(map(str, seeds))}) under "
        f"{' and '.join(map(str, threads))} intra-op threads ({len(seeds) * len(threads)} runs); "
        "each cell is the mean over those runs with (min-max).",
        "",
        "| method | preset | test top-1 (%) | pair accuracy (%) | train + test time per run (s) |",
        "|---|---|---|---|---|",
    ]
    for preset, r in results.items():
        if r is None:
            lines.append(
                f"| {LABELS[preset]} | `{preset}` | **to fill** | **to fill** | preset not in this checkout; "
                "rerun `make motion-table` once it exists |"
            )
        else:
            lines.append(
                f"| {LABELS[preset]} | `{preset}` | {_cell(r['top1'])} | {_cell(r['pair_acc'])} | "
                f"{r['seconds']['mean']:.0f} |"
            )
    lines += [
        "",
        "Numbers are a tiny random CLIP: they show whether a method can use frame order,",
        "not how it ranks on SSv2.",
        "",
    ]
    return "\n".join(lines)


SET_ARGS = ("clips", "frames", "size", "epochs", "seed", "seeds", "threads")  # what makes rows comparable


def _previous_rows(args, parser) -> tuple[list[str], dict[str, dict | None]]:
    """``--keep``: the commands and rows of ``--out``'s .json, which must describe the same set and
    training (SET_ARGS)."""
    path = args.out.with_suffix(".json")
    if not path.is_file():
        parser.error(f"--keep: no earlier results at {path}; run without --keep first")
    previous = json.loads(path.read_text())
    differ = [k for k in SET_ARGS if previous["args"].get(k) != str(getattr(args, k))]
    if differ:
        parser.error(f"--keep: {path} was made with other {', '.join(differ)}; rerun every method instead")
    return list(previous["commands"]), dict(previous["results"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "motion_benchmark.md")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "motion_bench")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "stop_lightning")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--clips", type=int, default=18, help="clips per class (a third train, a third test)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="the seed the set's looks are drawn with")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="training seeds, each a run per thread count")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, each a run per seed")
    parser.add_argument("--cores", type=int, default=None, help="threads in flight at once (default: all)")
    parser.add_argument(
        "--keep", action="store_true", help="rerun only --methods; keep the other rows of --out's .json"
    )
    args = parser.parse_args(argv)
    command = what_was_measured("motion", argv if argv is not None else sys.argv[1:], "make motion-table")
    commands, kept = [command], {}
    if args.keep:
        commands, kept = _previous_rows(args, parser)
        commands.append(command)
    data_dir = args.work / f"data_c{args.clips}_f{args.frames}_s{args.size}_seed{args.seed}"
    videos, manifests = write_dataset(data_dir, args.clips, args.frames, args.size, args.seed)
    methods = args.methods.split(",")
    for preset in methods:
        if preset not in LABELS:
            parser.error(f"--methods: {preset!r} is not one of {','.join(LABELS)}")
    runnable = [m for m in methods if m in available_presets()]
    # The authors' STOP takes ~15x the others' time: its runs go last, so the other rows are ready early.
    order = sorted(runnable, key=lambda m: m == "stop_official")
    jobs = [
        method_job(preset, seed, threads, videos, manifests, args)
        for slow in (False, True)
        for threads in sorted(int_list(args.threads), reverse=True)
        for preset in order
        if (preset == "stop_official") == slow
        for seed in int_list(args.seeds)
    ]
    runs = [with_pair_accuracy(r, manifests) for r in run_jobs(jobs, args.work / "logs", cores=args.cores)]
    results: dict[str, dict | None] = dict(kept)
    for preset in methods:
        results[preset] = None
        if preset in runnable:
            results[preset] = {
                "top1": spread(runs, preset, lambda r: r["metrics"]["test/top1"]),
                "pair_acc": spread(runs, preset, lambda r: r["pair_acc"]),
                "seconds": spread(runs, preset, lambda r: r["seconds"]),
            }
    results = {m: results[m] for m in sorted(results, key=lambda m: list(LABELS).index(m))}
    text = markdown(results, args, commands)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, text)
    runs_out = [
        {k: r[k] for k in ("key", "seed", "threads", "seconds", "pair_acc")}
        | {"top1": r["metrics"]["test/top1"]}
        for r in runs
    ]
    atomic_write(
        args.out.with_suffix(".json"),
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "commands": commands,
                "results": results,
                "runs": runs_out,
            },
            indent=2,
        ),
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
