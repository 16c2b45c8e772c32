"""Where a config's videos and manifests are: the one answer training, evaluation, ``predict``,
``preprocess`` and ``shard`` all read.

For a generated dataset (``data.dataset=synthetic``) the videos are drawn and written under
``paths.cache_dir`` first, in the layout the dataset registry names for the task; for any other the
answer is ``data.video_root`` and ``data.manifest_dir`` as configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .registry import get_dataset, synthetic_layout
from .synthetic import ensure_synthetic


def video_sources(cfg_data: Any, task_name: str, cache_dir: str | Path) -> tuple[Path, Path]:
    """``(video_root, manifest_dir)`` of a data config for ``task_name``; a synthetic set is
    generated first (idempotent, safe under DDP: :func:`stop_lightning.data.synthetic.ensure_synthetic`)."""
    if get_dataset(cfg_data.dataset).generated:
        return ensure_synthetic(cfg_data, cache_dir, layout=synthetic_layout(task_name))
    return Path(cfg_data.video_root), Path(cfg_data.manifest_dir)
