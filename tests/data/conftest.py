"""Tiny synthetic datasets in the official layouts, written once per test session."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from stop_lightning.data.build import build_manifests
from stop_lightning.data.synthetic import write_synthetic_dataset
from stop_lightning.schema import DataConfig


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets")


def _built(datasets_dir: Path, layout: str) -> tuple[Path, Path]:
    root = datasets_dir / layout
    out = datasets_dir / f"{layout}_manifests"
    if not out.is_dir():
        write_synthetic_dataset(root, layout, num_classes=4, clips_per_class=6, num_frames=16, size=32)
        build_manifests(layout, root, None, out, progress=False)
    return root, out


@pytest.fixture(scope="session")
def hmdb(datasets_dir: Path) -> tuple[Path, Path]:
    """(video_root, manifest_dir) of a 4-class, 6-clips-per-class HMDB51-layout dataset."""
    return _built(datasets_dir, "hmdb51")


@pytest.fixture(scope="session")
def msrvtt(datasets_dir: Path) -> tuple[Path, Path]:
    return _built(datasets_dir, "msrvtt")


@pytest.fixture
def data_cfg():
    """DataConfig factory with test-friendly defaults (no workers, small batches)."""

    def make(video_root: Path, manifest_dir: Path, **overrides) -> DataConfig:
        base = DataConfig(
            dataset="manifest",
            video_root=str(video_root),
            manifest_dir=str(manifest_dir),
            num_frames=4,
            batch_size=4,
            num_workers=0,
            persistent_workers=False,
            pin_memory=False,
        )
        return replace(base, **overrides)

    return make
