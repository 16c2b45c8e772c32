"""Files encoded like the public sets, for what decoding costs (``benchmarks/data_formats.py``).

A detailed moving texture (not flat colour), written at each public set's size, rate, length, codec
and key-frame interval. The tests' and the demo's clips are ``stop_lightning.data.synthetic``'s
moving squares; these exist only to be timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stop_lightning.data.synthetic import QP2LAMBDA


@dataclass(frozen=True)
class Encoding:
    """How a public set's files are encoded (size, rate, length, codec, key-frame interval)."""

    about: str
    width: int
    height: int
    fps: float
    seconds: float
    suffix: str  # .avi: MPEG-4 part 2; .mp4: H.264
    gop: int


ENCODINGS: dict[str, Encoding] = {
    "ucf101": Encoding(
        "UCF101/HMDB51-like: 320x240 MPEG-4 part 2 AVI, 30 fps, 8 s", 320, 240, 30.0, 8.0, ".avi", 12
    ),
    "msrvtt": Encoding(
        "MSRVTT-like: 320x240 H.264 MP4, 30 fps, 15 s, GOP 250", 320, 240, 30.0, 15.0, ".mp4", 250
    ),
    "kinetics": Encoding("Kinetics-like: 454x340 H.264 MP4, 30 fps, 10 s", 454, 340, 30.0, 10.0, ".mp4", 250),
}


# Detail of the realistic texture: (cell size in pixels, weight) of random blocks at each scale, and
# the amplitude of the fresh grain in every frame. Calibrated so that a frame stored by
# `stop-lightning shard` (224x298, JPEG quality 90) is ~23 KB, what real footage gave (issue 16);
# equal weights and grain 6, the first version, gave ~37 KB, twice the JPEG decoding work.
TEXTURE_DETAIL = ((2, 0.05), (8, 0.15), (32, 0.8))
TEXTURE_GRAIN = 4


def textured_frames(width: int, height: int, num_frames: int, seed: int = 0):
    """High-entropy moving texture, one RGB uint8 ``[H, W, 3]`` frame at a time: a detailed random
    texture panned along a curved path, a block sliding over it, and fresh grain in every frame, so
    the encoder has motion and residuals to code, as in camera footage (not flat colour)."""
    rng = np.random.default_rng(seed)
    big_h, big_w = 2 * height, 2 * width
    texture = np.zeros((big_h, big_w, 3), dtype=np.float32)
    for cell, weight in TEXTURE_DETAIL:  # detail at several scales
        coarse = rng.uniform(0, 255, (big_h // cell + 1, big_w // cell + 1, 3)).astype(np.float32)
        texture += np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:big_h, :big_w] * weight
    texture = texture.astype(np.uint8)
    side = min(width, height) // 3
    block = rng.uniform(0, 255, (side, side, 3)).astype(np.uint8)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        x = int((width / 2) * (0.5 + 0.5 * np.sin(2 * np.pi * t)))
        y = int((height / 2) * t)
        frame = texture[y : y + height, x : x + width].copy()
        bx, by = int((width - side) * t), int((height - side) * (1 - t))
        frame[by : by + side, bx : bx + side] = block
        grain = rng.integers(-TEXTURE_GRAIN, TEXTURE_GRAIN + 1, frame.shape, dtype=np.int16)
        yield np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def write_realistic_video(
    path: str | Path, encoding: Encoding, seconds: float | None = None, seed: int = 0
) -> Path:
    """A textured video encoded like ``encoding`` (H.264 at x264's defaults, B-frames included, or
    MPEG-4 part 2 at a web-typical quantiser); ``seconds`` shortens it (benchmarks' quick mode)."""
    path = Path(path).with_suffix(encoding.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round((seconds or encoding.seconds) * encoding.fps))
    if encoding.suffix == ".mp4":
        codec, options = "libx264", {"crf": "23", "preset": "fast", "g": str(encoding.gop)}
    else:
        # Quantiser 5, fixed (see write_video): on this texture ~2.2 Mbit/s and a decode rate close to
        # the real UCF101 footage; the rate-controlled default (200 kbit/s) decoded 3x faster.
        codec = "mpeg4"
        options = {"flags": "+qscale", "global_quality": str(5 * QP2LAMBDA), "g": str(encoding.gop)}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(encoding.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = encoding.width, encoding.height, "yuv420p"
        stream.options = options
        for frame in textured_frames(encoding.width, encoding.height, n, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
