"""The shards' JPEG codec (data/jpeg.py): a frame's size read from its header, and what is not a JPEG."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from stop_lightning.data.jpeg import decode_jpegs, encode_jpeg, jpeg_size


def _pil_jpeg(height: int, width: int, **options) -> bytes:
    """A JPEG written by PIL (another encoder than the codec's), of random pixels."""
    gen = torch.Generator().manual_seed(height * 1000 + width)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("height", "width", "options"),
    [
        (1, 1, {}),
        (17, 90, {"progressive": True}),  # a progressive start-of-frame marker (0xC2)
        (240, 320, {"optimize": True, "quality": 40}),
        (333, 7, {"exif": b"Exif\x00\x00" + bytes(300), "subsampling": 0}),  # an APP1 segment first
        (64, 48, {"icc_profile": bytes(2000)}),  # an APP2 segment before the frame header
    ],
)
def test_jpeg_size_reads_the_frame_header(height, width, options):
    blob = _pil_jpeg(height, width, **options)
    assert jpeg_size(blob) == jpeg_size(memoryview(blob)) == (height, width)
    (decoded,) = decode_jpegs([torch.frombuffer(bytearray(blob), dtype=torch.uint8)])
    assert decoded.shape == (3, height, width)


def test_codec_round_trip_size():
    image = torch.zeros(3, 31, 45, dtype=torch.uint8)
    assert jpeg_size(encode_jpeg(image, 90)) == (31, 45)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty frame"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "no JPEG start marker"),
        (b"\xff\xd8 not a jpeg at all", "no JPEG marker at byte 2"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(7), "no JPEG frame header"),  # cut after APP0
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00", "cut short"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10\x03" + bytes(9), "a 16x0 image"),
    ],
)
def test_jpeg_size_names_what_is_wrong(data, reason):
    with pytest.raises(ValueError, match=reason):
        jpeg_size(data)
