"""Clips from stored JPEG frames, decoded in the loader worker or on the model's device.

A shard item's wanted frames leave :meth:`~stop_lightning.data.shards.ShardSource.encoded` as an
:class:`EncodedVideo`: their JPEG bytes, which frame of the clip(s) each is, and the transform's
random draws for each clip, made in the worker in the order the decoding path makes them (clip by
clip, after the frames are chosen), so both paths crop the same boxes for the same item seed.

``data.decode_on=worker`` decodes it there and then (:func:`decode_views`, on the CPU). With
``data.decode_on=device`` the worker ships it undecoded: :func:`collate` keeps the batch's
``EncodedVideo`` objects in an :class:`EncodedBatch` (a plain object, so the Trainer's transfer
leaves its bytes on the CPU, where the decoders want them), and the DataModule's
``on_after_batch_transfer`` decodes the whole batch in one call on the device (nvJPEG on a GPU),
then crops, resizes, flips and normalises there with the same transform and the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

from .datasets import assemble_views
from .decode import VideoDecodeError
from .jpeg import decode_jpegs


@dataclass
class EncodedVideo:
    """One item's stored frames before decoding."""

    where: str  # names the item in errors, as the worker path does
    # The distinct wanted frames' JPEG files one after the other, frame k ending at ends[k]: one bytes
    # object, which crosses from a loader worker as one copy (a tensor a frame would cost a
    # shared-memory segment each, ~10x the item's own time).
    data: bytes
    ends: list[int]
    numbers: list[int]  # their frame numbers in the stored video
    take: list[int]  # [C*T]: which of ``frames`` each frame of the clip(s) is
    num_clips: int
    draws: list[Any]  # the transform's draw for each clip
    stage: str  # whose transform applies them (the dataset of this stage)

    def frames(self) -> list[torch.Tensor]:
        """Each distinct frame's JPEG bytes as a 1-D uint8 CPU tensor (views of one copy of ``data``)."""
        whole = torch.frombuffer(bytearray(self.data), dtype=torch.uint8)
        return [whole[a:b] for a, b in zip([0, *self.ends[:-1]], self.ends)]


def _bad_frame(video: EncodedVideo) -> VideoDecodeError:
    """The error naming the first frame of ``video`` that does not decode."""
    for blob, number in zip(video.frames(), video.numbers):
        try:
            decode_jpegs([blob])
        except (RuntimeError, ValueError) as err:
            return VideoDecodeError(
                video.where, f"stored frame {number} is not a valid JPEG ({str(err).splitlines()[0]})"
            )
    return VideoDecodeError(video.where, "its stored frames do not decode together")


def _decode(videos: list[EncodedVideo], device: torch.device | str) -> list[list[torch.Tensor]]:
    """Every frame of ``videos`` decoded in one call on ``device``: per video, ``[3, H, W]`` each."""
    frames = [v.frames() for v in videos]
    try:
        flat = decode_jpegs([b for f in frames for b in f], device)
    except (RuntimeError, ValueError) as err:
        for video, blobs in zip(videos, frames):
            try:
                decode_jpegs(blobs)
            except (RuntimeError, ValueError):
                raise _bad_frame(video) from err
        raise
    out, at = [], 0
    for f in frames:
        out.append(flat[at : at + len(f)])
        at += len(f)
    return out


def clips_of(video: EncodedVideo, decoded: list[torch.Tensor], num_frames: int) -> torch.Tensor:
    """uint8 ``[num_clips, T, 3, H, W]`` from the decoded distinct frames, channels-last in memory
    like the video path's PyAV frames (so the crop kernels are the same on both paths)."""
    hwc = [d.permute(1, 2, 0) for d in decoded]  # [H, W, 3] views
    frames = torch.stack([hwc[k] for k in video.take])  # [C*T, H, W, 3]
    return frames.permute(0, 3, 1, 2).reshape(video.num_clips, num_frames, 3, *frames.shape[1:3])


def transformed(video: EncodedVideo, clips: torch.Tensor, transform: Any) -> torch.Tensor:
    """The item's views (``assemble_views``) of ``clips`` ``[C, T, 3, H, W]`` with its draws."""
    return assemble_views([transform.apply(c, d) for c, d in zip(clips, video.draws)])


def decode_clips(video: EncodedVideo, num_frames: int) -> torch.Tensor:
    """The item's clips, decoded here on the CPU: uint8 ``[num_clips, T, 3, H, W]``."""
    (decoded,) = _decode([video], "cpu")
    return clips_of(video, decoded, num_frames)


def decode_views(video: EncodedVideo, transform: Any, num_frames: int) -> torch.Tensor:
    """``data.decode_on=worker``: the item's views, decoded here on the CPU."""
    return transformed(video, decode_clips(video, num_frames), transform)


class EncodedBatch:
    """A batch's undecoded clips (``EncodedVideo``), and the decoded stand-ins of unreadable ones."""

    def __init__(self, videos: list[EncodedVideo | torch.Tensor]):
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def decode(self, device: torch.device, transforms: dict[str, Any], num_frames: int) -> torch.Tensor:
        """The batch's views on ``device``: ``[B, T, 3, S, S]`` (or ``[B, V, T, 3, S, S]``), each item
        through ``transforms[its stage]`` with its own draws."""
        encoded = [v for v in self.videos if isinstance(v, EncodedVideo)]
        decoded = iter(_decode(encoded, device))
        views = []
        for v in self.videos:
            if isinstance(v, EncodedVideo):
                views.append(transformed(v, clips_of(v, next(decoded), num_frames), transforms[v.stage]))
            else:  # a blank stand-in (data.bad_video=skip), already the views' shape and dtype
                views.append(v.to(device))
        return torch.stack(views)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The DataLoader's ``collate_fn``: the default collation, except that a batch holding
    ``EncodedVideo`` clips keeps its ``"video"`` entries as one :class:`EncodedBatch`."""
    if not any(isinstance(item["video"], EncodedVideo) for item in items):
        return default_collate(items)
    batch = default_collate([{k: v for k, v in item.items() if k != "video"} for item in items])
    return {**batch, "video": EncodedBatch([item["video"] for item in items])}
