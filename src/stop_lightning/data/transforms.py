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


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = False,
    scale: Sequence[float] = (0.4, 1.0),
    normalise: bool = True,
) -> VideoTransform:
    """Random resized crop (+ optional horizontal flip): ``uint8 [T, 3, H, W] -> float32 [T, 3, S, S]``
    (``normalise=False``: uint8 ``[T, 3, S, S]``, normalised later by :func:`normalize`).

    ``hflip`` defaults to off: on motion data a flip turns "move left" into "move right".
    """
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(
            image_size, scale=(float(scale[0]), float(scale[1])), ratio=(3 / 4, 4 / 3), antialias=True
        )
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    geometry, norm = v2.Compose(steps), normalize(mean, std) if normalise else _unnormalised

    def apply(video: torch.Tensor) -> torch.Tensor:
        return norm(geometry(tv_tensors.Video(video)).as_subclass(torch.Tensor))  # crop/flip on uint8

    return apply


def three_crops(video: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Start, centre and end ``size x size`` crops along the longer side of ``[..., H, W]``."""
    h, w = video.shape[-2:]
    if w >= h:
        tops, lefts = [(h - size) // 2] * 3, [0, (w - size) // 2, w - size]
    else:
        tops, lefts = [0, (h - size) // 2, h - size], [(w - size) // 2] * 3
    return [F.crop(video, t, left, size, size) for t, left in zip(tops, lefts)]


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crops: int = 1, normalise: bool = True
) -> VideoTransform:
    """Resize the short side to ``image_size``, then a centre crop (``crops=1``: ``[T, 3, S, S]``)
    or three crops (``crops=3``: ``[3, T, 3, S, S]``), as normalised float32 (``normalise=False``:
    uint8)."""
    if crops not in (1, 3):
        raise ValueError(f"eval crops must be 1 (centre) or 3 (start/centre/end), got {crops}")
    resize = v2.Resize(image_size, antialias=True)
    norm = normalize(mean, std) if normalise else _unnormalised

    def apply(video: torch.Tensor) -> torch.Tensor:
        video = resize(tv_tensors.Video(video)).as_subclass(torch.Tensor)  # short side -> image_size
        if crops == 1:
            return norm(F.center_crop(video, [image_size, image_size]))
        return torch.stack([norm(c) for c in three_crops(video, image_size)])

    return apply
