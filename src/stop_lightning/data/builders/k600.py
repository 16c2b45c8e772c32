"""Kinetics-600: the Kinetics-400 layout and csv format (read by ``k400.build_kinetics``), 600 classes.

K600 is not a superset of K400 by name: some K400 classes are renamed or re-cased in K600 (e.g.
"dying hair" became "dyeing hair"). The zero-shot protocol's 220 novel classes therefore come from
a class-list file (``data.class_subset``, format in data_manifests/README.md), never from a
difference of names.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import BuildReport
from .k400 import ANNOTATIONS_HINT, TEMPLATES, TEST_VIEWS, build_kinetics, write_kinetics_synthetic

__all__ = ["TEMPLATES", "TEST_VIEWS", "build", "write_synthetic"]


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    return build_kinetics("k600", root, annotations, out_dir, probe, progress)


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """DeepMind's naming and a crawler's folders: ``validate.csv``, unquoted labels, per-class
    folders, a ``test.csv`` without labels."""
    write_kinetics_synthetic(
        root, clips, "validate.csv", per_class_folders=True, quoted=False, test_labels=False
    )


register_dataset(
    DatasetSpec(
        name="k600",
        task="recognition",
        description="Kinetics-600: 600 actions, the Kinetics-400 csv format and layout",
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint=ANNOTATIONS_HINT,
        templates=TEMPLATES,
    )
)
