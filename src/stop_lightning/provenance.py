"""What a run was made with: package versions, git state, CLIP source, manifest hashes.

``run_info.json`` in the run folder holds it, checkpoints carry a copy
(:class:`stop_lightning.callbacks.RunInfoInCheckpoint`), and ``eval``/``predict`` warn where the
checkpoint's conditions differ from the current ones.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from stop_lightning.fileio import atomic_write
from stop_lightning.schema import PROJECT_ROOT

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "transformers",
    "av",
    "torchmetrics",
    "omegaconf",
    "wandb",
)
PROVENANCE_KEYS = ("versions", "git", "clip", "manifests")
RUN_INFO_FILE = "run_info.json"


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        return {
            "revision": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain")),
        }
    except (OSError, subprocess.SubprocessError):
        return {"revision": "unknown", "dirty": None}


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect_run_info(cfg: DictConfig, bundle=None, datamodule=None) -> dict[str, Any]:
    info: dict[str, Any] = {"versions": package_versions(), "git": git_state()}
    if bundle is not None:
        info["clip"] = {"source": bundle.source, "config_hash": bundle.config_hash}
    manifest_dir = getattr(datamodule, "manifest_dir", None)
    if manifest_dir is not None and Path(manifest_dir).is_dir():
        info["manifests"] = {
            str(p.relative_to(manifest_dir)): file_hash(p)
            for p in sorted(Path(manifest_dir).rglob("*.jsonl"))
        }
    return info


def write_run_info(cfg: DictConfig, run_dir: Path, bundle=None, datamodule=None) -> Path:
    info = collect_run_info(cfg, bundle, datamodule)
    return atomic_write(run_dir / RUN_INFO_FILE, json.dumps(info, indent=2))


def update_run_info(run_dir: Path, key: str, value: Any) -> Path:
    """Set one top-level section of the run folder's ``run_info.json`` (what a test adds after the
    run began: unreadable videos, the published comparison), keeping the rest."""
    path = Path(run_dir) / RUN_INFO_FILE
    info = json.loads(path.read_text()) if path.is_file() else {}
    info[key] = value
    return atomic_write(path, json.dumps(info, indent=2))


def _short(value: Any) -> str:
    text = str(value)
    is_sha256 = len(text) == 64 and all(c in "0123456789abcdef" for c in text)
    return text[:12] if is_sha256 else text


def provenance_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per entry of ``PROVENANCE_KEYS`` that differs, e.g.
    ``versions.torch: checkpoint '2.11.0', now '2.14.1'``.

    A section missing on either side is not compared (``predict`` has no manifests, old
    checkpoints no run info).
    """
    lines = []
    for key in PROVENANCE_KEYS:
        if key not in saved or key not in now or saved[key] == now[key]:
            continue
        a, b = saved[key], now[key]
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    before, after = _short(a.get(sub, "(absent)")), _short(b.get(sub, "(absent)"))
                    lines.append(f"{key}.{sub}: checkpoint {before!r}, now {after!r}")
        else:
            lines.append(f"{key}: checkpoint {a!r}, now {b!r}")
    return lines


def warn_on_differences(
    checkpoint: dict[str, Any], now: dict[str, Any], name: str = "checkpoint"
) -> list[str]:
    """Log a warning per package version, git state, CLIP source or manifest hash that differs."""
    saved = checkpoint.get("stop_lightning", {}).get("run_info", {})
    lines = provenance_differences(saved, now)
    for line in lines:
        log.warning("%s was made under other conditions: %s", name, line)
    return lines
