"""Video data: manifests, builders, synthetic data, PyAV decoding, sampling, transforms, DataModules."""

from .datamodules import (
    RecognitionDataModule,
    RetrievalDataModule,
    VideoDataModule,
    base_novel_split,
    build_datamodule,
    few_shot_records,
)
from .decode import VideoDecodeError, VideoFile, probe_video
from .manifest import (
    ClipRecord,
    ManifestError,
    read_classes,
    read_manifest,
    readable_class_name,
    write_classes,
    write_manifest,
)
from .synthetic import ensure_synthetic, write_synthetic_dataset

__all__ = [
    "ClipRecord",
    "ManifestError",
    "RecognitionDataModule",
    "RetrievalDataModule",
    "VideoDataModule",
    "VideoDecodeError",
    "VideoFile",
    "base_novel_split",
    "build_datamodule",
    "ensure_synthetic",
    "few_shot_records",
    "probe_video",
    "read_classes",
    "read_manifest",
    "readable_class_name",
    "write_classes",
    "write_manifest",
    "write_synthetic_dataset",
]
