"""Video transforms (torchvision v2) on uint8 ``[T, 3, H, W]`` clips; one set of random parameters per
clip so every frame gets the same crop and flip. Conversion to float and CLIP normalisation come last.

Cost (one loader worker, 12 frames of 224x298 to 224x224, docs/benchmarks.md "Data formats: the
loader"): crops and resizes run on uint8, where torchvision's channels-last kernel is cheap (~1 ms a
clip); the float step is one pass over a contiguous copy (~1.5 ms), not torchvision's
``ToDtype`` + ``Normalize``, which on the channels-last frames the decoders give cost ~8 ms a clip and
returned a strided tensor that made the batch collation slower too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

VideoTransform = Callable[[torch.Tensor], torch.Tensor]


def normalize(mean: Sequence[float], std: Sequence[float]) -> VideoTransform:
    """uint8 ``[..., 3, H, W]`` (any memory layout, any device) -> contiguous float32
    ``(x / 255 - mean) / std``, computed as ``x * (1 / (255 std)) - mean / std`` in place on one
    contiguous float copy."""
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(3, 1, 1))
    shift = -torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / torch.tensor(std).view(3, 1, 1)

    def apply(video: torch.Tensor) -> torch.Tensor:
        if video.dtype != torch.uint8:
            raise TypeError(f"video transforms take uint8 clips (0-255), got {video.dtype}")
        out = video.contiguous().to(torch.float32)
        return out.mul_(scale.to(out.device)).add_(shift.to(out.device))

    return apply


def _unnormalised(video: torch.Tensor) -> torch.Tensor:
    return video  # uint8, any memory layout: the batch collation makes the one contiguous copy


class TrainTransform:
    """Random resized crop (+ optional horizontal flip): ``uint8 [T, 3, H, W] -> float32 [T, 3, S, S]``
    (``normalise=False``: uint8 ``[T, 3, S, S]``, normalised later by :func:`normalize`).

    Two halves, so the random draw can happen where the clip is not: :meth:`draw` takes the frame
    size and draws the crop and flip exactly as torchvision's ``v2.RandomResizedCrop`` +
    ``v2.RandomHorizontalFlip`` do (same generator calls in the same order), :meth:`apply` crops,
    resizes, flips and normalises with them on any device. ``hflip`` defaults to off: on motion data
    a flip turns "move left" into "move right".
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: bool = False,
        scale: Sequence[float] = (0.4, 1.0),
        normalise: bool = True,
    ):
        self.size = int(image_size)
        self.crop = v2.RandomResizedCrop(
            self.size, scale=(float(scale[0]), float(scale[1])), ratio=(3 / 4, 4 / 3), antialias=True
        )
        self.flip = v2.RandomHorizontalFlip() if hflip else None
        self.norm = normalize(mean, std) if normalise else _unnormalised

    def draw(self, height: int, width: int) -> tuple[int, int, int, int, bool]:
        """``(top, left, crop height, crop width, flip)`` for a clip of ``height x width`` frames."""
        where = [tv_tensors.Video(torch.empty(1, 3, height, width, dtype=torch.uint8, device="meta"))]
        box = self.crop.make_params(where)
        flip = self.flip is not None and bool(torch.rand(1) < self.flip.p)
        return box["top"], box["left"], box["height"], box["width"], flip

    def apply(self, video: torch.Tensor, params: tuple[int, int, int, int, bool]) -> torch.Tensor:
        top, left, height, width, flip = params
        out = F.resized_crop(video, top, left, height, width, [self.size, self.size], antialias=True)
        return self.norm(F.horizontal_flip(out) if flip else out)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        return self.apply(video, self.draw(*video.shape[-2:]))


def three_crops(video: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Start, centre and end ``size x size`` crops along the longer side of ``[..., H, W]``."""
    h, w = video.shape[-2:]
    if w >= h:
        tops, lefts = [(h - size) // 2] * 3, [0, (w - size) // 2, w - size]
    else:
        tops, lefts = [0, (h - size) // 2, h - size], [(w - size) // 2] * 3
    return [F.crop(video, t, left, size, size) for t, left in zip(tops, lefts)]


class EvalTransform:
    """Resize the short side to ``image_size``, then a centre crop (``crops=1``: ``[T, 3, S, S]``)
    or three crops (``crops=3``: ``[3, T, 3, S, S]``), as normalised float32 (``normalise=False``:
    uint8). Nothing random: :meth:`draw` gives ``None``; the same two halves as :class:`TrainTransform`."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crops: int = 1,
        normalise: bool = True,
    ):
        if crops not in (1, 3):
            raise ValueError(f"eval crops must be 1 (centre) or 3 (start/centre/end), got {crops}")
        self.size, self.crops = int(image_size), crops
        self.resize = v2.Resize(self.size, antialias=True)
        self.norm = normalize(mean, std) if normalise else _unnormalised

    def draw(self, height: int, width: int) -> None:
        return None

    def apply(self, video: torch.Tensor, params: None = None) -> torch.Tensor:
        video = self.resize(tv_tensors.Video(video)).as_subclass(torch.Tensor)  # short side -> image_size
        if self.crops == 1:
            return self.norm(F.center_crop(video, [self.size, self.size]))
        return torch.stack([self.norm(c) for c in three_crops(video, self.size)])

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        return self.apply(video)
