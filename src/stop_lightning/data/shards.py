"""Frame shards on LitData: ``stop-lightning shard`` writes them, ``data.format=shards`` reads them.

Writing: the videos of every manifest under ``<manifest_dir>`` (all splits and stages, each video
once: HMDB51's three splits and its val = test lists share one copy) become one LitData dataset
folder ``<shard_dir>/items/`` (``index.json`` + ``chunk-*.bin``), one item per distinct video, in
the order of :func:`~stop_lightning.data.stored_copies.videos_of` over the sorted manifest files::

    {"meta": JSON text {"path", "num_frames", "fps", "source_frames", "source_fps", "error"?},
     "offsets": int64 [num_frames + 1],   # frame k is jpegs[offsets[k]:offsets[k + 1]]
     "jpegs": bytes}                       # the stored frames (data/stored_copies.py), JPEG-encoded

A video that cannot be read is still written, with ``error`` set and no frames, so item numbers stay
those of the manifests and the bad video meets the reading side's ``data.bad_video`` policy. The
folder is written under a temporary name and renamed when complete; a complete folder is skipped
by the next run. The reading side numbers the items the same way from the same manifests, and
checks each item's ``path`` against the row it serves.

Reading: :class:`ShardClipDataset` and :class:`ShardCaptionDataset` are the video datasets
(``datasets.py``) with the decoding step swapped: the same records, sampling (segment or fps,
multi-view test) over the stored timeline, transforms and bad-input policy. They are map-style and
read an item by index through LitData's ``StreamingDataset.__getitem__`` rather than iterating a
``StreamingDataset``, because the order must stay the project's: ``EpochSampler`` derives each
epoch's order, the DDP split and every item's random seed from ``(seed, epoch, position)``, which
is what makes a resumed run exact and a shards run sample the same frames as a video run. LitData
still does the storage part: chunk files, local folders, and remote ``s3://`` / ``gs://`` URLs
(``data.shard_dir=s3://bucket/hmdb51``), which it downloads chunk by chunk into its cache
(``$DATA_OPTIMIZER_CACHE_FOLDER``; credentials the usual way for the cloud's SDK, which then must be
installed: ``boto3`` for S3, ``google-cloud-storage`` for GCS). A random order over a remote set
fetches chunks at random; shards of a few videos each (``chunk_bytes``) keep that cheap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from ..fileio import writing
from ..reading import problem, read_text
from .datasets import VideoCaptionDataset, VideoClipDataset
from .decode import VideoDecodeError, VideoFile
from .jpeg import encode_jpeg, jpeg_size
from .jpeg_clips import EncodedVideo, decode_clips, decode_views
from .manifest import ClipRecord, ManifestError, resolve_video_path
from .stored_copies import StoreSettings, manifest_files, ordered_map, stored_frames, timeline, videos_of

log = logging.getLogger(__name__)

CHUNK_BYTES = "64MB"
REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "azure://", "hf://")


def is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE_PREFIXES)


ITEMS = "items"  # the one LitData dataset folder under data.shard_dir


def shard_location(shard_dir: str) -> str:
    """Where the shards under ``shard_dir`` (a folder or a remote URL) live: ``<shard_dir>/items``."""
    return f"{str(shard_dir).rstrip('/')}/{ITEMS}"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def encode_item(video_path: Path, rel: str, settings: StoreSettings) -> dict[str, Any]:
    """The shard item of one video (``meta`` carries ``error`` instead of frames when it cannot be read)."""
    try:
        with VideoFile(video_path) as video:
            plan = timeline(video, settings)
            blobs = [
                encode_jpeg(
                    torch.from_numpy(f.to_ndarray()).permute(2, 0, 1).contiguous(), settings.jpeg_quality
                )
                for f in stored_frames(video, plan, "rgb24")
            ]
        meta = {
            "path": rel,
            "num_frames": len(blobs),
            "fps": plan.fps,
            "source_frames": plan.source_frames,
            "source_fps": plan.source_fps,
        }
    except (VideoDecodeError, ManifestError, av.error.FFmpegError, OSError) as err:
        blobs, meta = (
            [],
            {"path": rel, "num_frames": 0, "fps": 0.0, "error": str(getattr(err, "reason", err))},
        )
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return {"meta": json.dumps(meta), "offsets": offsets, "jpegs": b"".join(blobs)}


class _Encode:
    def __init__(self, video_root: Path, settings: StoreSettings):
        self.video_root, self.settings = video_root, settings

    def __call__(self, rel: str) -> dict[str, Any]:
        return encode_item(resolve_video_path(self.video_root, rel), rel, self.settings)


def write_items(out: Path, items, chunk_bytes: str = CHUNK_BYTES) -> int:
    """Write ``items`` (in order) as a LitData dataset folder ``out``, atomically; returns the count."""
    from litdata.streaming.writer import BinaryWriter

    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    with writing(out):
        try:
            writer = BinaryWriter(str(tmp), chunk_bytes=chunk_bytes)
            n = 0
            for n, item in enumerate(items, start=1):
                writer.add_item(n - 1, item)
            writer.done()
            writer.merge(num_workers=1)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
            return n
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _note_bad(items, bad: list[dict[str, str]]):
    for item in items:
        meta = json.loads(item["meta"])
        if "error" in meta:
            bad.append({"path": meta["path"], "reason": meta["error"]})
        yield item


def write_shards(
    video_root: str | Path,
    manifest_dir: str | Path,
    shard_dir: str | Path,
    settings: StoreSettings,
    workers: int = 0,
    progress: bool = True,
    chunk_bytes: str = CHUNK_BYTES,
) -> dict[str, Any]:
    """The shards of every video that a manifest under ``manifest_dir`` lists, each once; a complete
    folder is kept. Returns ``{"written": {ITEMS: items}, "existing": [ITEMS] or [], "manifests": n,
    "bad": [{"path", "reason"}]}``."""
    video_root, manifest_dir, shard_dir = Path(video_root), Path(manifest_dir), Path(shard_dir)
    files = manifest_files(manifest_dir)
    report: dict[str, Any] = {"written": {}, "existing": [], "manifests": len(files), "bad": []}
    out = Path(shard_location(str(shard_dir)))
    if (out / "index.json").is_file():
        report["existing"].append(ITEMS)
        return report
    out.parent.mkdir(parents=True, exist_ok=True)
    videos = videos_of(files)
    jobs = ordered_map(_Encode(video_root, settings), videos, workers, f"shard {ITEMS}", progress)
    report["written"][ITEMS] = write_items(out, _note_bad(jobs, report["bad"]), chunk_bytes)
    return report


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


SHARD_TODO = (
    "write them again with `stop-lightning shard EXPERIMENT --out SHARD_DIR`, or set data.format=video"
)


def check_shard_index(folder: Path) -> None:
    """A local shard folder's ``index.json`` is LitData's (``chunks`` and ``config``) and every chunk it
    lists is there; otherwise one line naming the file (:mod:`stop_lightning.reading`)."""
    index = folder / "index.json"
    if not index.exists():
        raise ManifestError(f"no shards at {folder} (data.shard_dir): {SHARD_TODO}")
    text = read_text(index, "shard index", ManifestError, SHARD_TODO)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(
            problem(index, f"not valid JSON ({err.msg}): cut short or damaged", SHARD_TODO)
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("chunks"), list) or "config" not in data:
        raise ManifestError(problem(index, "not a LitData index (no 'chunks' and 'config')", SHARD_TODO))
    for chunk in data["chunks"]:
        name = chunk.get("filename") if isinstance(chunk, dict) else None
        if not name or not (folder / name).is_file():
            raise ManifestError(
                problem(index, f"lists the chunk {name!r}, which is not in {folder}", SHARD_TODO)
            )


class ShardReader:
    """Items of one shard folder by number; LitData's dataset is opened lazily in each process."""

    def __init__(self, location: str):
        self.location = str(location)
        self._ds = None

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "_ds": None}

    def _open(self):
        if self._ds is None:
            from litdata import StreamingDataset

            if not is_remote(self.location):
                check_shard_index(Path(self.location))
            self._ds = StreamingDataset(self.location)
        return self._ds

    def __len__(self) -> int:
        # All items: the dataset's own len() is this rank's share under DDP (LitData splits by itself).
        return sum(end - start for start, end in self._open().region_of_interest)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self._open()[k]


class ShardSource:
    """Mixin over a ``VideoDataset``: frames come from shard items instead of video files."""

    def attach(self, reader: ShardReader, order: list[str], manifests: str) -> None:
        """``order``: the videos the shards were written from (item k is ``order[k]``), from
        ``manifests``; this dataset's records may be any subset of them."""
        if len(reader) != len(order):
            raise ManifestError(
                f"the shards at {reader.location} hold {len(reader)} videos "
                f"but the manifests in {manifests} list {len(order)}: "
                "they were written from other manifests; write them again (stop-lightning shard)"
            )
        number = {p: k for k, p in enumerate(order)}
        missing = [r.path for r in self.records if r.path not in number]
        if missing:
            raise ManifestError(
                f"{missing[0]} is not in the manifests in {manifests}, whose videos the shards at "
                f"{reader.location} hold"
            )
        self.reader = reader
        self.items = [number[r.path] for r in self.records]
        self.paths = [f"{reader.location} item {k} ({r.path})" for k, r in zip(self.items, self.records)]

    decode_on = "worker"  # data.decode_on: "device" ships the frames undecoded (data/jpeg_clips.py)

    def encoded(self, i: int, num_clips: int = 1) -> tuple[EncodedVideo, torch.Tensor]:
        """Item ``i``'s wanted frames as stored (checked, not decoded) with the transform's draws for
        each clip, and the frame mask ``[num_clips, T]``."""
        where = self.paths[i]
        try:
            item = self.reader[self.items[i]]
            meta = json.loads(item["meta"])
            offsets = np.asarray(item["offsets"])
        except (KeyError, ValueError, TypeError, OSError) as err:
            raise VideoDecodeError(where, f"unreadable shard item ({type(err).__name__}: {err})") from err
        if meta.get("path") != self.records[i].path:
            raise VideoDecodeError(
                where, f"holds {meta.get('path')!r}; the shards do not match the manifest, write them again"
            )
        if "error" in meta:
            raise VideoDecodeError(where, f"bad when sharded: {meta['error']}")
        n = int(meta["num_frames"])
        if n < 1 or len(offsets) != n + 1:
            raise VideoDecodeError(where, f"no frames stored ({n} frames, {len(offsets)} offsets)")
        if int(meta.get("source_frames", n)) < self.sampling.min_video_frames:
            raise VideoDecodeError(
                where,
                f"too short: {meta.get('source_frames', n)} frames "
                f"< data.min_video_frames={self.sampling.min_video_frames}",
            )
        plans = [self.frame_indices(i, n, float(meta["fps"]), c, num_clips) for c in range(num_clips)]
        numbers = sorted({j for idx, _ in plans for j in idx})
        jpegs = memoryview(item["jpegs"])
        frames, sizes = [], set()
        for j in numbers:
            frame = jpegs[offsets[j] : offsets[j + 1]]  # a view: only the wanted frames are copied, once
            try:
                sizes.add(jpeg_size(frame))
            except ValueError as err:
                raise VideoDecodeError(where, f"stored frame {j} is not a valid JPEG ({err})") from err
            frames.append(frame)
        if len(sizes) > 1:
            raise VideoDecodeError(
                where, f"stored frames of different sizes {sorted(sizes)}: write the shards again"
            )
        position = {j: k for k, j in enumerate(numbers)}
        (height, width) = sizes.pop()
        video = EncodedVideo(
            where=str(where),
            data=b"".join(frames),
            ends=np.cumsum([len(f) for f in frames]).tolist(),
            numbers=numbers,
            take=[position[j] for idx, _ in plans for j in idx],
            num_clips=num_clips,
            draws=[self.transform.draw(height, width) for _ in range(num_clips)],
            stage=self.stage,
        )
        return video, torch.tensor([m for _, m in plans], dtype=torch.bool)

    def decode(self, i: int, num_clips: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``VideoDataset.decode``, over the stored frames: uint8 ``[num_clips, T, 3, H, W]``,
        mask ``[num_clips, T]`` (the transform's draws are made and dropped)."""
        video, mask = self.encoded(i, num_clips)
        return decode_clips(video, self.sampling.num_frames), mask

    def views(self, i: int, num_clips: int = 1) -> tuple[Any, torch.Tensor]:
        """As ``VideoDataset.views`` over the stored frames; with ``decode_on="device"`` the item's
        :class:`~stop_lightning.data.jpeg_clips.EncodedVideo`, decoded after the transfer."""
        video, mask = self.encoded(i, num_clips)
        if self.decode_on == "device":
            return video, mask
        return decode_views(video, self.transform, self.sampling.num_frames), mask


class ShardClipDataset(ShardSource, VideoClipDataset):
    """Recognition from frame shards (see :class:`~stop_lightning.data.datasets.VideoClipDataset`)."""


class ShardCaptionDataset(ShardSource, VideoCaptionDataset):
    """Retrieval from frame shards (see :class:`~stop_lightning.data.datasets.VideoCaptionDataset`)."""


SHARD_CLASSES = {VideoClipDataset: ShardClipDataset, VideoCaptionDataset: ShardCaptionDataset}


def shard_dataset(
    cls: type,
    records: list[ClipRecord],
    shard_dir: str,
    manifest_dir: Path,
    *args: Any,
    decode_on: str = "worker",
    **kwargs: Any,
):
    """The shard twin of dataset class ``cls`` over ``records``, reading the shards under
    ``shard_dir`` written from the manifests in ``manifest_dir``; ``decode_on``: data.decode_on."""
    dataset = SHARD_CLASSES[cls](records, Path("."), *args, **kwargs)
    dataset.decode_on = decode_on
    order = videos_of(manifest_files(Path(manifest_dir)))
    dataset.attach(ShardReader(shard_location(shard_dir)), order, str(manifest_dir))
    return dataset
