"""Tiny synthetic video datasets written as real encoded files in the official layouts.

``kind="motion"``: every class is a direction of motion of a coloured square on a plain
background. Clip ``j`` of every class uses the same colours and the same off-axis position, so
"move left" clip ``j`` is exactly "move right" clip ``j`` played backwards: the class lives only in
the temporal order, which is what a video model (and not a single-frame model) must learn. Every
frame is encoded as a key frame at a fixed quantiser (or losslessly), so a frame decodes to the
same picture whatever precedes it and a clip and its reversed twin decode to the same frames.

With ``heldout_looks`` the clips a split evaluates on are drawn in colours and on a background that
no training clip uses (:data:`HELDOUT_COLOURS`, :data:`HELDOUT_BACKGROUNDS`), so accuracy on them
is generalisation, not memory of the training clips.

Each registered dataset module lays these clips out with its own split and annotation files
(``DatasetSpec.write_synthetic``), so the manifest builders are exercised against the real formats.
``ensure_synthetic`` is the generate-build-cache step behind ``data.dataset=synthetic``.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from .build import build_manifests
from .manifest import read_manifest, recognition_manifest_path
from .registry import DatasetSpec, dataset_names, get_dataset

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 210),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
BACKGROUNDS = ((20, 20, 20), (110, 110, 110), (60, 60, 90))
# What evaluation clips look like under ``heldout_looks``; training clips then use the rest.
HELDOUT_COLOURS = ("orange", "white", "cyan")
HELDOUT_BACKGROUNDS = ((60, 60, 90),)

# (name, dx, dy); opposite directions sit next to each other.
_DIRECTIONS = (
    ("left", -1, 0),
    ("right", 1, 0),
    ("up", 0, -1),
    ("down", 0, 1),
    ("up_left", -1, -1),
    ("down_right", 1, 1),
    ("up_right", 1, -1),
    ("down_left", -1, 1),
)
MAX_CLASSES = 2 * len(_DIRECTIONS)  # each direction at full span, then at half span ("slowly")


@dataclass(frozen=True)
class MotionClass:
    name: str  # words, e.g. "move up left slowly"
    dx: int
    dy: int
    span: float  # fraction of the free range the square travels


def motion_classes(num_classes: int) -> list[MotionClass]:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"synthetic motion data has 1..{MAX_CLASSES} classes, got num_classes={num_classes}")
    out = []
    for i in range(num_classes):
        name, dx, dy = _DIRECTIONS[i % len(_DIRECTIONS)]
        slow = i >= len(_DIRECTIONS)
        words = "move " + name.replace("_", " ") + (" slowly" if slow else "")
        out.append(MotionClass(words, dx, dy, 0.5 if slow else 1.0))
    return out


@dataclass(frozen=True)
class ClipLook:
    """What clip ``j`` looks like in every class (only the motion differs between classes)."""

    colour: str
    background: tuple[int, int, int]
    cross: float  # position along the axis that does not move, in [0, 1]


def clip_look(j: int, seed: int, palette: str = "all") -> ClipLook:
    """The look of clip ``j``; ``palette``: ``all`` (every colour and background), ``train`` (all but
    the held-out ones) or ``heldout`` (only :data:`HELDOUT_COLOURS` and :data:`HELDOUT_BACKGROUNDS`)."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    if palette == "train":
        colours = [c for c in colours if c not in HELDOUT_COLOURS]
        backgrounds = [b for b in backgrounds if b not in HELDOUT_BACKGROUNDS]
    elif palette == "heldout":
        colours, backgrounds = list(HELDOUT_COLOURS), list(HELDOUT_BACKGROUNDS)
    elif palette != "all":
        raise ValueError(f"clip_look: palette must be all, train or heldout, got {palette!r}")
    rng = np.random.default_rng([seed, j])
    return ClipLook(
        colour=colours[int(rng.integers(len(colours)))],
        background=backgrounds[int(rng.integers(len(backgrounds)))],
        cross=float(rng.uniform(0.15, 0.85)),
    )


def square_positions(cls: MotionClass, look: ClipLook, num_frames: int, size: int) -> np.ndarray:
    """Top-left corner (x, y) of the square in each frame, shape ``(num_frames, 2)``."""
    side = square_side(size)
    free = size - side
    t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    lo, hi = 0.5 - cls.span / 2, 0.5 + cls.span / 2

    def axis(d: int) -> np.ndarray:
        if d == 0:
            return np.full(num_frames, look.cross)
        return lo + (hi - lo) * (t if d > 0 else 1.0 - t)

    return np.stack([np.rint(axis(cls.dx) * free), np.rint(axis(cls.dy) * free)], axis=1).astype(int)


def square_side(size: int) -> int:
    return max(4, size // 4)


def motion_frames(cls: MotionClass, look: ClipLook, num_frames: int, size: int) -> np.ndarray:
    """RGB frames ``(num_frames, size, size, 3)`` uint8."""
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = np.asarray(look.background, dtype=np.uint8)
    side = square_side(size)
    colour = np.asarray(COLOURS[look.colour], dtype=np.uint8)
    for i, (x, y) in enumerate(square_positions(cls, look, num_frames, size)):
        frames[i, y : y + side, x : x + side] = colour
    return frames


# ---------------------------------------------------------------------------------------------
# Frame-number patterns: tests read back which frames were sampled.
# ---------------------------------------------------------------------------------------------

CODE_BITS = 8


def frame_code_frames(num_frames: int, size: int = 64) -> np.ndarray:
    """Frames whose index is written in binary as CODE_BITS black/white vertical bars."""
    if num_frames > 2**CODE_BITS:
        raise ValueError(f"frame codes hold at most {2**CODE_BITS} frames, got {num_frames}")
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    bar = size // CODE_BITS
    for i in range(num_frames):
        for b in range(CODE_BITS):
            if (i >> b) & 1:
                frames[i, :, b * bar : (b + 1) * bar] = 255
    return frames


def read_frame_code(frame: np.ndarray) -> int:
    """Inverse of :func:`frame_code_frames` for one decoded frame ``[H, W, 3]`` or ``[3, H, W]``."""
    arr = np.asarray(frame, dtype=np.float32)
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    bar = arr.shape[1] // CODE_BITS
    value = 0
    for b in range(CODE_BITS):
        # Sample the middle of the bar, away from edges that the codec blurs.
        centre = arr[:, b * bar + bar // 4 : (b + 1) * bar - bar // 4].mean()
        if centre > 127:
            value |= 1 << b
    return value


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


# FFmpeg's lambda per quantiser step: a fixed MPEG-4 quantiser q is global_quality = q * this.
QP2LAMBDA = 118


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8.0, gop: int = 8) -> Path:
    """Encode RGB uint8 frames ``(T, H, W, 3)``: libx264 lossless (qp 0) for ``.mp4``, MPEG-4 part 2
    at the fixed quantiser 2 for ``.avi``, VP9 (libvpx, lossless) for ``.webm``; ``gop``: frames per
    key frame (1: every frame a key frame).

    Only the RGB -> YUV 4:2:0 conversion and, for ``.avi``, the quantiser lose detail, the same way
    in every frame: no rate control, so a frame's quality never depends on the frames around it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        codec, options = "libx264", {"qp": "0", "preset": "ultrafast", "g": str(gop), "bf": "0"}
    elif path.suffix == ".avi":
        # FFmpeg's mpeg4 encoder ignores a "qscale" option: a fixed quantiser is a flag plus
        # global_quality, otherwise its rate control (200 kbit/s) sets each frame's quality.
        codec = "mpeg4"
        options = {"flags": "+qscale", "global_quality": str(2 * QP2LAMBDA), "g": str(gop)}
    elif path.suffix == ".webm":  # Something-Something v2's container and codec
        codec, options = (
            "libvpx-vp9",
            {"lossless": "1", "deadline": "realtime", "cpu-used": "8", "g": str(gop)},
        )
    else:
        raise ValueError(
            f"write_video: unsupported extension {path.suffix!r} for {path} (use .mp4, .avi or .webm)"
        )
    frames = np.ascontiguousarray(frames)
    _, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------
# Layouts: each dataset module writes its own (DatasetSpec.write_synthetic) from these clips
# ---------------------------------------------------------------------------------------------


def motion_captions(cls: MotionClass, look: ClipLook) -> list[str]:
    motion = cls.name.removeprefix("move ")
    return [
        f"a {look.colour} square moves {motion}",
        f"a {look.colour} box moving {motion}",
        f"the {look.colour} square slides {motion} across the screen",
        f"a small {look.colour} block travels {motion}",
        f"video of a {look.colour} square going {motion}",
    ]


@dataclass(frozen=True)
class MotionClips:
    """The synthetic clips a dataset's ``write_synthetic`` lays out (``registry.SyntheticClips``)."""

    classes: list[MotionClass]
    looks: list[ClipLook]  # one per clip index j, shared by every class
    num_frames: int
    size: int
    fps: float
    written: dict[Path, tuple[int, int]] = field(default_factory=dict)  # path -> (c, j)

    @property
    def class_names(self) -> list[str]:
        return [cls.name for cls in self.classes]

    @property
    def clips_per_class(self) -> int:
        return len(self.looks)

    def write(self, path: Path, c: int, j: int, look: ClipLook | None = None) -> Path:
        """Clip ``j`` of class ``c``, every frame a key frame (twins decode to the same frames)."""
        frames = motion_frames(self.classes[c], look or self.looks[j], self.num_frames, self.size)
        self.written[Path(path)] = (c, j)
        return write_video(path, frames, self.fps, gop=1)

    def captions(self, c: int, j: int) -> list[str]:
        return motion_captions(self.classes[c], self.looks[j])


def layout_spec(layout: DatasetSpec | str) -> DatasetSpec:
    """The registered dataset ``layout`` names (looked up once; the spec is passed on from here)."""
    spec = layout if isinstance(layout, DatasetSpec) else get_dataset(layout)
    if spec.write_synthetic is None:
        with_layout = [n for n in dataset_names() if get_dataset(n).write_synthetic is not None]
        raise ValueError(
            f"dataset {spec.name!r} has no synthetic layout; choose one of {', '.join(with_layout)}"
        )
    return spec


def write_motion_dataset(
    root: str | Path,
    layout: DatasetSpec | str,
    num_classes: int = 4,
    clips_per_class: int = 6,
    num_frames: int = 16,
    size: int = 64,
    seed: int = 0,
    kind: str = "motion",
    fps: float = 8.0,
    looks: int = 0,
    heldout_looks: bool = False,
) -> MotionClips:
    """:func:`write_synthetic_dataset`, returning the clips written (``.written`` maps each file to
    its class and clip).

    ``looks`` > 0 cycles through that many colour/background/position variations instead of one per
    clip (fewer nuisances, an easier problem). ``heldout_looks``: draw them from the training palette
    only, leaving the held-out colours and background to :func:`hold_out_eval_looks`.
    """
    spec = layout_spec(layout)
    if kind != "motion":
        raise ValueError(f"unknown synthetic kind {kind!r}; only 'motion' is implemented")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    palette = "train" if heldout_looks else "all"
    clip_looks = [clip_look(j % looks if looks > 0 else j, seed, palette) for j in range(clips_per_class)]
    clips = MotionClips(motion_classes(num_classes), clip_looks, num_frames, size, fps)
    spec.write_synthetic(root, clips)
    return clips


def write_synthetic_dataset(root: str | Path, layout: DatasetSpec | str, **options: Any) -> Path:
    """Write a tiny dataset in the official ``layout`` (a registered dataset's name) under ``root``.

    Returns ``root``, the folder to pass as ``--root`` to the manifest builder; annotation files sit
    where the builder looks by default. ``options``: those of :func:`write_motion_dataset`.
    """
    write_motion_dataset(root, layout, **options)
    return Path(root)


def hold_out_eval_looks(
    clips: MotionClips, video_root: Path, manifest_dir: Path, split: int, seed: int
) -> int:
    """Re-encode the clips that ``split``'s val and test lists name (and its train list does not) in
    held-out looks: clip ``j`` of every class gets ``clip_look(j, seed, "heldout")``, so twins stay
    twins. Returns how many files were re-encoded. Raises when the layout trains on its eval clips."""

    def paths(stage: str) -> set[str]:
        path = recognition_manifest_path(manifest_dir, split, stage)
        return {r.path for r in read_manifest(path, require_target=False)} if path.is_file() else set()

    train, evaluated = paths("train"), paths("val") | paths("test")
    shared = evaluated & train
    if shared:
        raise ValueError(
            f"data.synthetic_heldout_looks: split {split} of {manifest_dir} trains on {len(shared)} "
            f"of its eval clips (e.g. {sorted(shared)[0]}), so their looks cannot be held out"
        )
    for rel in sorted(evaluated):
        path = video_root / rel
        c, j = clips.written[path]
        clips.write(path, c, j, look=clip_look(j, seed, "heldout"))
    return len(evaluated)


# ---------------------------------------------------------------------------------------------
# On-demand generation for `data.dataset: synthetic`
# ---------------------------------------------------------------------------------------------

_DONE = ".complete"
_FORMAT = 2  # bump when the clips written for the same settings change (2: key frames, fixed quantiser)


def ensure_synthetic(
    cfg_data: Any, cache_dir: str | Path, layout: DatasetSpec | str, seed: int = 0
) -> tuple[Path, Path]:
    """Generate the synthetic dataset in ``layout`` (a registered dataset) and its manifests under
    ``cache_dir`` if missing.

    Returns ``(video_root, manifest_dir)``. Idempotent, and safe when several DDP ranks (or
    several runs) call it at once: each writer builds in a private temporary folder and renames it
    into place; the first rename wins and the others discard their copy.
    """
    spec = layout_spec(layout)
    key = (
        f"v{_FORMAT}_{spec.name}_c{cfg_data.synthetic_classes}_n{cfg_data.synthetic_clips_per_class}"
        f"_f{cfg_data.synthetic_frames}_s{cfg_data.synthetic_size}_seed{seed}"
    )
    looks = int(getattr(cfg_data, "synthetic_looks", 0))
    key += f"_l{looks}" if looks > 0 else ""
    heldout = bool(getattr(cfg_data, "synthetic_heldout_looks", False))
    if heldout and spec.task != "recognition":
        raise ValueError(
            f"data.synthetic_heldout_looks is for recognition layouts: the captions of the {spec.name} "
            "layout name each clip's colour, and re-encoding the clips in other colours would "
            "contradict them; set data.synthetic_heldout_looks=false"
        )
    key += f"_heldout{cfg_data.split}" if heldout else ""
    final = Path(cache_dir) / "synthetic" / key
    if not (final / _DONE).is_file():
        tmp = final.with_name(f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            clips = write_motion_dataset(
                tmp / "videos",
                spec,
                num_classes=cfg_data.synthetic_classes,
                clips_per_class=cfg_data.synthetic_clips_per_class,
                num_frames=cfg_data.synthetic_frames,
                size=cfg_data.synthetic_size,
                seed=seed,
                looks=looks,
                heldout_looks=heldout,
            )
            build_manifests(spec.name, tmp / "videos", None, tmp / "manifests", progress=False)
            if heldout:
                hold_out_eval_looks(clips, tmp / "videos", tmp / "manifests", cfg_data.split, seed)
            (tmp / _DONE).write_text("ok\n")
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
                log.info("wrote synthetic %s dataset to %s", spec.name, final)
            except OSError:
                if not (final / _DONE).is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final / "videos", final / "manifests"
