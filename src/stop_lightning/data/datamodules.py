"""LightningDataModules for recognition and retrieval, built from a ``DataConfig`` and manifests.

Recognition batches::

    train/val: {"video": float32 [B, T, 3, H, W], "label": int64 [B], "index": int64 [B],
                "unreadable": bool [B]}
    test:      "video" is [B, V, T, 3, H, W] when V = test_clips * test_crops > 1

Retrieval batches::

    train:    {"video": [B, T, 3, H, W], "frame_mask": bool [B, T], "caption": list[str], "index": int64 [B],
               "unreadable": bool [B], "padded_frames": bool}
    val/test: {"video", "frame_mask", "index", "unreadable", "padded_frames"}, one item per video;
              captions via eval_captions(stage)

``padded_frames`` (a Python bool, added on the host before the transfer) says whether some frame of
``frame_mask`` is padding, so that the model need not read the mask back from the device.

``unreadable`` marks an evaluation item whose video could not be read (``data.bad_video=skip``): a
blank stand-in that the tasks score as a miss.

``index`` is the item's row in its manifest. Every loader draws its items from
:class:`~stop_lightning.data.item_order.EpochSampler`, which shards them across DDP ranks itself
(the Trainer runs with ``use_distributed_sampler=False``) and, like ``DistributedSampler``, pads the
last shard by repeating items: evaluation de-duplicates by ``index``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from ..schema import ConfigError, DataConfig
from .class_lists import class_ids, class_list_text, read_class_list, seeded_subset
from .class_splits import base_novel_split, few_shot_records
from .datasets import (
    SKIP_ADVICE,
    DataHealth,
    SamplingConfig,
    VideoCaptionDataset,
    VideoClipDataset,
    seed_worker,
)
from .decode import VideoDecodeError
from .file_check import missing_files, missing_files_message
from .item_order import EpochSampler
from .jpeg_clips import EncodedBatch, collate
from .manifest import (
    CLASSES_FILE,
    STAGES,
    ClipRecord,
    ManifestError,
    check_labels,
    manifest_text,
    read_classes,
    read_manifest,
    readable_class_name,
    recognition_manifest_path,
    retrieval_manifest_path,
)
from .registry import DatasetSpec, get_dataset
from .transforms import EvalTransform, TrainTransform, normalize
from .video_probe import FIX_OR_SKIP, unreadable_summary, unreadable_videos

log = logging.getLogger(__name__)

# Which manifest splits each Lightning stage reads.
SPLITS_FOR_STAGE = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}

# Ends a bad stored frame's line when it is found on the device, after its batch left the loader.
DEVICE_SKIP_ADVICE = (
    "found on the device, where data.bad_video=skip cannot replace it; "
    "set data.decode_on=worker to skip bad videos"
)


def as_data_config(cfg: Any) -> DataConfig:
    """A ``DataConfig`` from a DataConfig, an OmegaConf node or a plain mapping."""
    if isinstance(cfg, DataConfig):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a DataConfig, DictConfig or mapping, got {type(cfg).__name__}")
    known = {f.name for f in fields(DataConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"unknown data config key(s): {', '.join('data.' + k for k in unknown)}")
    return DataConfig(**dict(cfg))


def eval_batch_size(cfg: Any) -> int:
    """Clips per evaluation batch: ``data.eval_batch_size``, or ``data.batch_size`` when it is -1."""
    return int(cfg.eval_batch_size) if int(cfg.eval_batch_size) > 0 else int(cfg.batch_size)


def scored_once(records: list[ClipRecord], path: Path) -> list[ClipRecord]:
    """An evaluation split's rows without the rows that repeat an earlier one exactly (same file,
    span, label and captions), with a warning that counts them: a clip listed three times is scored
    once, so no clip weighs more than another in the metrics. (Training keeps repeats: they may be
    deliberate oversampling.)"""
    unique = list(dict.fromkeys(records))
    if len(unique) < len(records):
        log.warning(
            "%s: %d of %d rows repeat an earlier row; each clip is scored once (%d clips)",
            path,
            len(records) - len(unique),
            len(records),
            len(unique),
        )
    return unique


class VideoDataModule(L.LightningDataModule):
    """What recognition and retrieval share: config, transforms, loaders, data-health counters."""

    def __init__(
        self, data_cfg: Any, image_size: int, mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0
    ):
        super().__init__()
        self.cfg = as_data_config(data_cfg)
        self.spec: DatasetSpec = get_dataset(self.cfg.dataset)
        if self.cfg.hflip and not self.spec.hflip:
            log.info(
                "data.hflip=true ignored: a horizontal flip changes the class of %s clips", self.spec.name
            )
            self.cfg = replace(self.cfg, hflip=False)
        if self.cfg.decode_on == "device" and self.cfg.format != "shards":
            raise ConfigError(
                f"data.decode_on=device decodes stored JPEG frames, which data.format={self.cfg.format} has "
                "none: set data.format=shards (written by `stop-lightning shard`) or data.decode_on=worker"
            )
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.video_root = Path(self.cfg.video_root)
        self.manifest_dir = Path(self.cfg.manifest_dir)
        self.health = {stage: DataHealth() for stage in STAGES}
        self._totals = {stage: dict.fromkeys(DataHealth.KEYS, 0) for stage in STAGES}
        self.datasets: dict[str, Dataset | None] = dict.fromkeys(STAGES)
        # (epoch, training batches done) from a mid-epoch checkpoint (SamplerPositionInCheckpoint)
        self.resume_at: tuple[int, int] | None = None
        self._device_norm = None  # data.normalize_on_device: built at the first batch

    # -- config helpers -----------------------------------------------------------------------

    def _sampling(self) -> SamplingConfig:
        c = self.cfg
        return SamplingConfig(
            num_frames=c.num_frames, sampling=c.sampling, fps=c.fps, min_video_frames=c.min_video_frames
        )

    def _transform(self, stage: str, crops: int = 1):
        normalise = not self.cfg.normalize_on_device  # else: uint8 clips, see on_after_batch_transfer
        if stage == "train":
            return TrainTransform(
                self.image_size,
                self.mean,
                self.std,
                hflip=self.cfg.hflip,
                scale=self.cfg.train_crop_scale,
                normalise=normalise,
            )
        return EvalTransform(self.image_size, self.mean, self.std, crops=crops, normalise=normalise)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``data.decode_on=device``: the batch's stored JPEG frames decoded and transformed on
        the model's device (data/jpeg_clips.py); with ``data.normalize_on_device``: the batch's uint8
        clips, now on the model's device, as normalised float32 (the Trainer calls this before the
        model or any callback sees the batch)."""
        if isinstance(batch, dict) and isinstance(batch.get("video"), EncodedBatch):
            batch = {**batch, "video": self._decode_on_device(batch["video"], batch["index"].device)}
        if isinstance(batch, dict) and batch.get("video") is not None and batch["video"].dtype == torch.uint8:
            if self._device_norm is None:
                self._device_norm = normalize(self.mean, self.std)
            batch = {**batch, "video": self._device_norm(batch["video"])}
        return batch

    def _decode_on_device(self, videos: EncodedBatch, device: torch.device) -> torch.Tensor:
        transforms = {stage: ds.transform for stage, ds in self.datasets.items() if ds is not None}
        try:
            return videos.decode(device, transforms, self.cfg.num_frames)
        except VideoDecodeError as err:
            advice = SKIP_ADVICE if self.cfg.bad_video == "raise" else DEVICE_SKIP_ADVICE
            raise VideoDecodeError(err.path, f"{err.reason} ({advice})") from err

    def _read(self, path: Path, stage: str) -> list[ClipRecord]:
        if not path.exists():  # a folder, an empty or unreadable file: read_manifest names it
            raise ManifestError(self._missing_message(path))
        records = read_manifest(path)
        return records if stage == "train" else scored_once(records, path)

    def _missing_message(self, path: Path) -> str:
        msg = (
            f"manifest file {path} does not exist "
            f"(data.manifest_dir={self.manifest_dir}, data.dataset={self.cfg.dataset})."
        )
        if self.spec.buildable:
            ann = f" [--annotations {self.spec.annotations_hint}]"
            return (
                f"{msg} Build it with:\n  stop-lightning manifest {self.cfg.dataset} "
                f"--root {self.video_root}{ann} --out {self.manifest_dir}"
            )
        return f"{msg} Write the manifests in the format described in data_manifests/README.md."

    def _check_video_root(self) -> None:
        if self.cfg.format == "video" and not self.video_root.is_dir():
            msg = (
                f"data.video_root={self.video_root} is not a directory: "
                f"the {self.cfg.dataset} videos are not there. "
                "Unpack the dataset there (or set paths.data_root=... / data.video_root=...): "
                "it is the folder the "
                f"manifest paths in {self.manifest_dir} are relative to "
                "(the --root given to 'stop-lightning manifest')."
            )
            if self.spec.buildable and not any(self.manifest_dir.rglob("*.jsonl")):
                msg += (
                    f" The manifests are missing too; once the videos are there, build them with:\n"
                    f"  stop-lightning manifest {self.cfg.dataset} --root {self.video_root} "
                    f"[--annotations {self.spec.annotations_hint}] --out {self.manifest_dir}"
                )
            raise ManifestError(msg)

    def _dataset(self, cls: type, records: list[ClipRecord], stage: str, **kwargs: Any) -> Dataset:
        """``cls`` over the video files, or its frame-shard twin when ``data.format=shards``
        (data/shards.py)."""
        args = (stage, self._sampling(), self._transform(stage, crops=kwargs.get("num_crops", 1)))
        kwargs.update(bad_video=self.cfg.bad_video, health=self.health[stage])
        if self.cfg.format == "shards":
            from .shards import shard_dataset

            return shard_dataset(
                cls,
                records,
                self.cfg.shard_dir,
                self.manifest_dir,
                *args,
                decode_on=self.cfg.decode_on,
                **kwargs,
            )
        return cls(records, self.video_root, *args, **kwargs)

    def check_files(self, splits: tuple[str, ...] = STAGES) -> None:
        """Every video of ``splits`` (those set up) is a file; else one ``ManifestError`` listing the
        missing ones (count and the first 20), before anything is trained. Frame shards hold their
        videos' frames: the shard reader checks its own files when it opens them."""
        if self.cfg.format == "shards":
            return
        chosen = [(name, self.datasets.get(name)) for name in splits]
        listed = [(name, Path(p)) for name, ds in chosen if ds is not None for p in ds.paths]
        gone = set(missing_files([p for _, p in listed]))
        if gone:
            where: dict[Path, list[str]] = {}
            for name, path in listed:
                if path in gone:
                    where.setdefault(path, []).append(name)
            missing = [(", ".join(names), path) for path, names in where.items()]
            raise ManifestError(missing_files_message(missing, len({p for _, p in listed}), self.video_root))

    def probe_videos(self, splits: tuple[str, ...] = ("val", "test")) -> dict[Path, str]:
        """Probe every video of ``splits`` (those set up; :mod:`.video_probe`) before anything is
        trained: with ``data.bad_video=raise`` a failure is one ``ManifestError`` line naming the
        files; with ``skip`` the bad ones are marked (scored as misses without a decode) and counted in
        a warning. Returns ``{path: reason}``. Off with ``data.probe_videos=false`` or frame shards."""
        if self.cfg.format == "shards" or not self.cfg.probe_videos:
            return {}
        chosen = {name: self.datasets[name] for name in splits if self.datasets.get(name) is not None}
        paths = list(dict.fromkeys(p for ds in chosen.values() for p in ds.paths))
        bad = unreadable_videos(paths, self.cfg.num_frames, threads=self.cfg.num_workers)
        if not bad:
            return bad
        summary = unreadable_summary(bad, len(paths), "/".join(chosen))
        if self.cfg.bad_video == "raise":
            raise ManifestError(f"{summary}. {FIX_OR_SKIP}")
        for ds in chosen.values():
            ds.mark_bad(bad)
        log.warning("%s (data.bad_video=skip: each is scored as a miss)", summary)
        return bad

    def _splits_to_build(self, stage: str | None) -> list[str]:
        """The splits a Lightning ``stage`` needs that are not built yet (``None``: all of them)."""
        wanted = SPLITS_FOR_STAGE.get(stage or "", STAGES)
        return [name for name in wanted if self.datasets.get(name) is None]

    # -- loaders --------------------------------------------------------------------------------

    def _loader(self, stage: str) -> DataLoader:
        dataset = self.datasets.get(stage)
        if dataset is None:
            raise RuntimeError(
                f"no {stage} dataset: call setup() first (the {stage} loader needs a {stage} split)"
            )
        c = self.cfg
        train = stage == "train"
        batch = c.batch_size if train else eval_batch_size(c)
        generator = torch.Generator().manual_seed(self.seed + STAGES.index(stage))
        sampler = EpochSampler(len(dataset), seed=self.seed + STAGES.index(stage), shuffle=train)
        if train and self.resume_at is not None:  # a mid-epoch checkpoint: continue at its next batch
            sampler.resume(self.resume_at[0], self.resume_at[1] * batch)
        return DataLoader(
            dataset,
            batch_size=batch,
            # Seeded per epoch and position, sharded across DDP ranks: exact resume (the Trainer
            # runs with use_distributed_sampler=False so Lightning keeps this sampler).
            sampler=sampler,
            drop_last=False,
            num_workers=c.num_workers,
            persistent_workers=c.persistent_workers and c.num_workers > 0,
            pin_memory=c.pin_memory and torch.cuda.is_available(),
            worker_init_fn=seed_worker,
            collate_fn=collate,  # keeps data.decode_on=device's undecoded frames out of the collation
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    # -- data health ----------------------------------------------------------------------------

    @property
    def skipped(self) -> dict[str, int]:
        """Bad videos replaced so far in the current epoch, per stage (reset by ``epoch_summary``)."""
        return {stage: h.snapshot()["skipped"] for stage, h in self.health.items()}

    def epoch_summary(self, stage: str, reset: bool = True) -> dict[str, int]:
        """Counts for ``stage`` since the last call (clips, skipped, decode warnings/errors); logs a line."""
        counts = self.health[stage].reset() if reset else self.health[stage].snapshot()
        for key, n in counts.items():
            self._totals[stage][key] += n if reset else 0
        if _noteworthy(counts):
            log.warning(
                "%s epoch: %d clips, %d bad videos skipped, %d FFmpeg warnings and %d errors in %d files, "
                "%d frames past a video's end repeated in %d files",
                stage,
                counts["clips"],
                counts["skipped"],
                counts["decode_warnings"],
                counts["decode_errors"],
                counts["files_with_warnings"],
                counts["missing_frames"],
                counts["files_with_missing_frames"],
            )
        return counts

    def teardown(self, stage: str) -> None:
        for name in STAGES:
            left = self.health[name].reset()
            total = {k: self._totals[name][k] + left[k] for k in DataHealth.KEYS}
            self._totals[name] = dict.fromkeys(DataHealth.KEYS, 0)
            if _noteworthy(total):
                log.warning(
                    "data summary (%s): %d clips read, %d bad videos skipped, %d FFmpeg warnings, %d errors, "
                    "%d frames past a video's end repeated in %d files",
                    name,
                    total["clips"],
                    total["skipped"],
                    total["decode_warnings"],
                    total["decode_errors"],
                    total["missing_frames"],
                    total["files_with_missing_frames"],
                )


def _noteworthy(counts: dict[str, int]) -> bool:
    return any(counts[k] for k in DataHealth.REPORTED)


class RecognitionDataModule(VideoDataModule):
    """Action recognition from ``<manifest_dir>/split<k>/{train,val,test}.jsonl`` + ``classes.txt``.

    After ``setup()``: ``class_names`` (readable, index = label), ``raw_class_names`` (as in
    classes.txt), ``num_classes``, ``base_class_ids`` / ``novel_class_ids`` (the base-to-novel halves,
    ``data.class_split``), ``train_records``, and ``protocol_files`` (file name -> text: what the
    protocol drew, which training saves in the run folder).

    ``data.class_subset`` (a class-list file, ``data.subset_size`` of its classes drawn with
    ``data.protocol_seed`` when > 0) restricts the classes: labels are renumbered 0..n-1 in
    classes.txt order and clips of other classes are left out.
    """

    def __init__(
        self, data_cfg: Any, image_size: int, mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0
    ):
        super().__init__(data_cfg, image_size, mean, std, seed)
        self.class_names: list[str] = []
        self.raw_class_names: list[str] = []
        self.num_classes = 0
        self.base_class_ids: list[int] = []
        self.novel_class_ids: list[int] = []
        self.train_records: list[ClipRecord] = []
        self.protocol_files: dict[str, str] = {}
        self._kept: list[int] | None = None  # classes.txt ids kept by data.class_subset

    def manifest_path(self, stage: str) -> Path:
        split_path = recognition_manifest_path(self.manifest_dir, self.cfg.split, stage)
        if self.spec.splits or split_path.parent.is_dir():
            return split_path
        # A dataset without official splits, or a custom manifest folder without split<k>/ subfolders.
        flat = retrieval_manifest_path(self.manifest_dir, stage)
        return flat if flat.is_file() or self.spec.buildable else split_path

    def _classes(self) -> list[str]:
        for place in (self.manifest_dir / CLASSES_FILE, self.manifest_path("train").parent / CLASSES_FILE):
            if place.exists():  # a folder, an empty or unreadable file: read_classes names it
                return read_classes(place)
        raise ManifestError(self._missing_message(self.manifest_dir / CLASSES_FILE))

    def setup(self, stage: str | None = None) -> None:
        self._check_video_root()
        all_classes = self._classes()
        self._kept = self._class_subset(all_classes)
        self.raw_class_names = all_classes if self._kept is None else [all_classes[i] for i in self._kept]
        self.class_names = [readable_class_name(n) for n in self.raw_class_names]
        self.num_classes = len(self.class_names)
        self.base_class_ids, self.novel_class_ids = base_novel_split(
            self.raw_class_names, self.cfg.class_split, self.cfg.protocol_seed
        )
        if self.cfg.protocol == "base_to_novel":
            if not self.base_class_ids or not self.novel_class_ids:
                raise ConfigError(
                    f"data.class_split={self.cfg.class_split!r} leaves no "
                    f"{'base' if not self.base_class_ids else 'novel'} class of {self.num_classes}"
                )
            for half, ids in (("base", self.base_class_ids), ("novel", self.novel_class_ids)):
                self.protocol_files[f"{half}_classes.csv"] = class_list_text(
                    [self.raw_class_names[i] for i in ids]
                )
        for name in self._splits_to_build(stage):
            if name == "train" and self.cfg.protocol == "zero_shot":
                self.datasets["train"] = None
                continue
            path = self.manifest_path(name)
            records = self._read(path, name)
            check_labels(records, all_classes, str(path))
            records = self._keep_subset(records)
            if name == "train":
                records = self._protocol_train(records, path)
                self.train_records = records
            test = name == "test"
            self.health[name] = DataHealth()  # per process: a DDP rank counts its own clips
            self.datasets[name] = self._dataset(
                VideoClipDataset,
                records,
                name,
                num_clips=self.cfg.test_clips if test else 1,
                num_crops=self.cfg.test_crops if test else 1,
            )

    def _class_subset(self, classes: list[str]) -> list[int] | None:
        """classes.txt ids that ``data.class_subset`` keeps (None: all); the drawn list is a protocol file."""
        c = self.cfg
        if not c.class_subset:
            if c.subset_size > 0:
                raise ConfigError(
                    "data.subset_size > 0 needs data.class_subset (the class-list file to draw from)"
                )
            return None
        ids = class_ids(read_class_list(c.class_subset), classes, c.class_subset)
        if c.subset_size > 0:
            ids = seeded_subset(ids, c.subset_size, c.protocol_seed, c.class_subset)
        self.protocol_files["class_subset.csv"] = class_list_text([classes[i] for i in ids])
        log.info("%d classes of %s (data.class_subset=%s)", len(ids), self.manifest_dir, c.class_subset)
        return ids

    def _keep_subset(self, records: list[ClipRecord]) -> list[ClipRecord]:
        """Rows of the kept classes, labels renumbered to positions in the kept list."""
        if self._kept is None:
            return records
        new_label = {old: new for new, old in enumerate(self._kept)}
        return [replace(r, label=new_label[r.label]) for r in records if r.label in new_label]

    def _protocol_train(self, records: list[ClipRecord], path: Path) -> list[ClipRecord]:
        c = self.cfg
        if c.protocol == "base_to_novel":
            base = set(self.base_class_ids)
            records = [r for r in records if r.label in base]
        if c.protocol == "few_shot" or (c.protocol == "base_to_novel" and c.shots > 0):
            if c.shots <= 0:
                raise ConfigError(
                    f"data.protocol=few_shot needs data.shots > 0 (clips per class), got {c.shots}"
                )
            tag = "train_base" if c.protocol == "base_to_novel" else "train"
            if c.protocol == "base_to_novel" and c.class_split != "alphabetical":  # other base classes
                tag += "_seeded" if c.class_split == "seeded" else f"_{Path(c.class_split).stem}"
            if self._kept is not None:  # the list is of a class subset: named after the subset drawn
                tag += f"_subset{len(self._kept)}_seed{c.protocol_seed}"
            records = few_shot_records(records, c.shots, c.protocol_seed, path, self.raw_class_names, tag=tag)
            self.protocol_files[f"{tag}_fewshot_k{c.shots}_seed{c.protocol_seed}.jsonl"] = manifest_text(
                records
            )
        return records

    def train_dataloader(self) -> DataLoader:
        if self.cfg.protocol == "zero_shot":
            raise ConfigError(
                "data.protocol=zero_shot has no training set; evaluate instead (stop-lightning eval)"
            )
        return super().train_dataloader()


class RetrievalDataModule(VideoDataModule):
    """Text-video retrieval from ``<manifest_dir>/{train,val,test}.jsonl`` rows with captions."""

    def setup(self, stage: str | None = None) -> None:
        self._check_video_root()
        for name in self._splits_to_build(stage):
            path = retrieval_manifest_path(self.manifest_dir, name)
            records = self._read(path, name)
            self.health[name] = DataHealth()  # per process: a DDP rank counts its own clips
            self.datasets[name] = self._dataset(VideoCaptionDataset, records, name)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batch with ``padded_frames``: whether any of its frames is padding, a Python bool read
        here, on the host, while ``frame_mask`` is still a CPU tensor. The video model takes VoP's
        masked paths only then, without reading the mask back from the device in the training step."""
        if isinstance(batch, dict) and isinstance(batch.get("frame_mask"), torch.Tensor):
            batch = {**batch, "padded_frames": not bool(batch["frame_mask"].all())}
        return batch

    def eval_captions(self, stage: str = "test") -> tuple[list[str], list[int]]:
        """All captions of ``stage`` and the ``index`` of the video each belongs to (1k-A: one per video)."""
        dataset = self.datasets.get(stage)
        if dataset is None:
            self.setup({"val": "validate", "test": "test", "train": "fit"}[stage])
            dataset = self.datasets[stage]
        assert isinstance(dataset, VideoCaptionDataset)
        return dataset.caption_index()
