"""The JPEG codec of the frame shards: one place that decides which library encodes and decodes.

TorchCodec (from 0.16, which needs torch >= 2.11: the floor of this project's range) holds PyTorch's
image decoders now; torchvision 0.29 marks its own ``torchvision.io`` image functions deprecated
(``DeprecationWarning`` at every call) in their favour, and the torchvision versions this project
supports (0.26-0.29) all still have them. So: TorchCodec when it is installed (``pip install
torchcodec``; the ``gpu`` extra), else torchvision's functions with exactly that one warning silenced.
Both decode with libjpeg-turbo on the CPU and nvJPEG on a CUDA device, take the bytes on the CPU
whatever the device, and give ``uint8 [3, H, W]``; a list of frames decodes in one batched call.

:func:`jpeg_size` reads a frame's size from its header without decoding it, and is the check that
a stored frame is a JPEG at all: a frame whose header is broken is named there, in the loader worker,
the same way whichever side decodes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from functools import cache

import torch

# The message torchvision >= 0.29 gives at every image decode/encode call (torchvision/io/image.py).
_TORCHVISION_NOTICE = r"The image decoding and encoding capabilities of TorchVision are deprecated"


@cache
def _torchcodec():
    """TorchCodec's ``(decode_jpeg, JpegEncoder)``, or None; looked up at the first use, so that
    importing this module (every DataModule does) loads nothing."""
    try:
        from torchcodec.decoders import decode_jpeg
        from torchcodec.encoders import JpegEncoder
    except (ImportError, OSError, RuntimeError):  # not installed, or built for another torch
        return None
    return decode_jpeg, JpegEncoder


def codec_name() -> str:
    """Which library encodes and decodes here (the benchmarks record it)."""
    return "torchcodec" if _torchcodec() is not None else "torchvision"


@contextmanager
def _quiet_torchvision():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCHVISION_NOTICE, category=DeprecationWarning)
        yield


def decode_jpegs(blobs: Sequence[torch.Tensor], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Each 1-D uint8 CPU tensor of ``blobs`` as RGB ``uint8 [3, H, W]`` on ``device`` (one call)."""
    if not blobs:
        return []
    if _torchcodec() is not None:
        return list(_torchcodec()[0](list(blobs), mode="RGB", device=device))
    from torchvision.io import ImageReadMode, decode_jpeg

    with _quiet_torchvision():
        return list(decode_jpeg(list(blobs), mode=ImageReadMode.RGB, device=device))


def encode_jpeg(image: torch.Tensor, quality: int) -> bytes:
    """``uint8 [3, H, W]`` -> the JPEG file's bytes."""
    if _torchcodec() is not None:
        return _torchcodec()[1](image).to_tensor(quality=quality).numpy().tobytes()
    from torchvision.io import encode_jpeg as tv_encode

    with _quiet_torchvision():
        return tv_encode(image, quality=quality).numpy().tobytes()


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic coding):
# 0xC0-0xCF except DHT (0xC4), JPG (0xC8) and DAC (0xCC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM stand alone


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """``(height, width)`` from a JPEG's start-of-frame header; ``ValueError`` naming what is wrong when
    ``data`` is not a JPEG up to that header."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ValueError("no JPEG start marker" if n else "empty frame")
    at = 2
    while at + 4 <= n:
        if data[at] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {at}")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _NO_LENGTH:
            at += 2
            continue
        length = (data[at + 2] << 8) | data[at + 3]
        if marker in _SOF:
            if at + 9 > n or length < 8:
                raise ValueError("JPEG frame header cut short")
            height = (data[at + 5] << 8) | data[at + 6]
            width = (data[at + 7] << 8) | data[at + 8]
            if height == 0 or width == 0:
                raise ValueError(f"JPEG frame header gives a {width}x{height} image")
            return height, width
        if marker == 0xD9 or length < 2:  # end of image, or a broken segment length
            break
        at += 2 + length
    raise ValueError("no JPEG frame header")
