"""A run's figure beside the published one it reproduces: the line under the test metrics table.

An experiment names the published results it reproduces in its ``published`` section
(:class:`stop_lightning.schema.PublishedTarget`; ``experiments/msrvtt.yaml`` holds STOP's, DGL's and
VoP's MSR-VTT rows). A target is compared only when the run is the published setting: its
``model.preset``, its CLIP (``model.clip.source``) and every key the target's ``settings`` names
equal the target's, and the test logged the target's metric. Any other run (another preset, the
tiny CLIP, another shared latent space) is told nothing, because nothing was published for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stop_lightning.loggers import update_wandb_summary
from stop_lightning.provenance import update_run_info

RUN_INFO_KEY = "published"  # the run_info.json section
_UNSET = object()


def backbone_matches(source: str, backbone: str) -> bool:
    """``source`` (the run's ``model.clip.source``) is the published ``backbone``: the same string, or
    a local copy of a hub checkpoint whose folder is named as it (``/models/clip-vit-base-patch32``
    for ``openai/clip-vit-base-patch32``, the way ``huggingface-cli download --local-dir`` names it)."""
    if not source or not backbone:
        return False
    if source.rstrip("/") == backbone:
        return True
    hub_name = backbone.rsplit("/", 1)[-1]
    return "/" in backbone and Path(source.rstrip("/")).name == hub_name


def mismatches(cfg: DictConfig, target: DictConfig) -> list[str]:
    """The settings in which the run differs from ``target``'s published one (empty: it is that setting)."""
    out = []
    if cfg.model.preset != target.preset:
        out.append(f"model.preset={cfg.model.preset} (published: {target.preset or 'unset'})")
    if not backbone_matches(str(cfg.model.clip.source), str(target.backbone)):
        out.append(f"model.clip.source={cfg.model.clip.source} (published: {target.backbone or 'unset'})")
    for key, value in target.settings.items():
        own = OmegaConf.select(cfg, str(key), default=_UNSET)
        if own is _UNSET or own != value:
            out.append(f"{key}={'unset' if own is _UNSET else own} (published: {value})")
    return out


def compare_published(cfg: DictConfig, metrics: dict[str, float]) -> list[dict[str, Any]]:
    """One entry per target of ``cfg.published`` that this run's setting matches and whose metric the
    test logged: the run's figure and the published one in the source's units, and their difference."""
    out = []
    for name, target in (cfg.get("published") or {}).items():
        if not target.metric or target.metric not in metrics or mismatches(cfg, target):
            continue
        run_value = float(metrics[target.metric]) * float(target.scale)
        out.append(
            {
                "name": str(name),
                "method": target.method,
                "metric": target.metric,
                "run": run_value,
                "published": float(target.value),
                "difference": run_value - float(target.value),
                "source": target.source,
                "backbone": target.backbone,
                "protocol": target.protocol,
                "preset": target.preset,
            }
        )
    return out


def published_line(entry: dict[str, Any]) -> str:
    """``"published STOP: test/t2v_R1 46.90 here, 47.70 published, difference -0.80 (source; protocol)"``."""
    where = "; ".join(x for x in (entry["source"], entry["protocol"]) if x)
    return (
        f"published {entry['method'] or entry['name']}: {entry['metric']} {entry['run']:.2f} here, "
        f"{entry['published']:.2f} published, difference {entry['difference']:+.2f}"
        + (f" ({where})" if where else "")
    )


def report_published(cfg: DictConfig, metrics: dict[str, float], run_dir: Path) -> list[dict[str, Any]]:
    """Print a line per matching target (:func:`compare_published`), record them in ``run_info.json``
    (section ``published``) and, when a W&B run is active, in its summary (``published/<name>/...``).
    Nothing is printed or written when no target matches."""
    entries = compare_published(cfg, metrics)
    if not entries:
        return entries
    for entry in entries:
        print(published_line(entry))
    update_run_info(run_dir, RUN_INFO_KEY, entries)
    update_wandb_summary(
        {
            f"{RUN_INFO_KEY}/{e['name']}/{part}": e[part]
            for e in entries
            for part in ("run", "published", "difference")
        }
    )
    return entries
