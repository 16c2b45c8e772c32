"""Use a trained checkpoint outside training: ``stop-lightning predict`` and ``stop-lightning embed``.

A checkpoint holds only what trains plus the run's resolved config and class names
(``hyper_parameters``); :func:`load_checkpoint` rebuilds the task module from that config,
loads the frozen CLIP from its source and fills in the trained tensors. Videos go through the
data package's own dataset, sampling and evaluation transform, so a prediction sees exactly the
view(s) the test set saw during ``stop-lightning eval``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from stop_lightning.data.builders import VIDEO_SUFFIXES
from stop_lightning.data.datamodules import VideoDataModule, eval_batch_size
from stop_lightning.data.datasets import SamplingConfig, VideoClipDataset, seed_worker
from stop_lightning.data.decode import VideoDecodeError
from stop_lightning.data.manifest import ClipRecord, ManifestError, read_manifest
from stop_lightning.data.sources import video_sources
from stop_lightning.data.transforms import EvalTransform
from stop_lightning.errors import USER_ERRORS, UserError
from stop_lightning.fileio import atomic_file
from stop_lightning.model_io import LoadedCheckpoint, load_model, model_fingerprint
from stop_lightning.tasks.base import CheckpointMismatchError
from stop_lightning.tasks.factory import run_datamodule

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".pt", ".npz")
# Labels are not read at inference; the clip dataset wants one per row.
NO_LABEL = -1


class InferenceInputError(UserError, ValueError):
    """An argument of ``predict`` or ``embed`` that cannot work (the message names it)."""


@dataclass
class Prediction:
    video: str
    top: list[tuple[str, float]]  # (class name, probability), best first
    probs: torch.Tensor  # [C] class probabilities, averaged over the test views


# ------------------------------------------------------------------------------ videos
def _common_root(paths: list[Path]) -> tuple[Path, list[str]]:
    """A folder holding every video and each video's path relative to it (the manifest convention)."""
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return root, [p.relative_to(root).as_posix() for p in resolved]


# What predict and embed can do about a video they cannot read (they take no data.bad_video).
FILES_ADVICE = "leave the file out, or re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"
EMBED_ADVICE = (
    "remove its row from the manifest, or rebuild the manifest with "
    "`stop-lightning manifest DATASET ... --probe --drop-unreadable`, which leaves out every unreadable video"
)


def clip_dataset(
    loaded: LoadedCheckpoint,
    records: list[ClipRecord],
    video_root: str | Path,
    views: bool = True,
    advice: str = FILES_ADVICE,
) -> VideoClipDataset:
    """The evaluation dataset of the checkpoint's data config over ``records``.

    ``views=True``: the test views (``data.test_clips`` x ``data.test_crops``), as ``stop-lightning
    eval`` scores them; ``views=False``: one centre clip, as validation and retrieval see a video.
    """
    d = loaded.cfg.data
    clips, crops = (int(d.test_clips), int(d.test_crops)) if views else (1, 1)
    sampling = SamplingConfig(
        num_frames=int(d.num_frames),
        sampling=str(d.sampling),
        fps=float(d.fps),
        min_video_frames=int(d.min_video_frames),
    )
    transform = EvalTransform(
        loaded.bundle.image_size, loaded.bundle.image_mean, loaded.bundle.image_std, crops=crops
    )
    records = [r if r.label is not None else replace(r, label=NO_LABEL) for r in records]
    return VideoClipDataset(
        records,
        video_root,
        "test",
        sampling,
        transform,
        bad_video="raise",
        bad_video_advice=advice,
        num_clips=clips,
        num_crops=crops,
    )


def expand_videos(items: list[str | Path]) -> list[str]:
    """The video files ``items`` name: a folder stands for the video files under it (any depth,
    sorted, by :data:`VIDEO_SUFFIXES`); anything else is kept as given (a missing file is reported
    where it is read)."""
    out: list[str] = []
    for item in items:
        folder = Path(item)
        if not folder.is_dir():
            out.append(str(item))
            continue
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if not found:
            raise InferenceInputError(
                f"folder {folder} holds no video files ({', '.join(VIDEO_SUFFIXES)}); "
                "name the videos or a folder that has some"
            )
        out += [str(p) for p in found]
    return out


def video_files_dataset(
    loaded: LoadedCheckpoint, videos: list[str | Path], views: bool = True
) -> VideoClipDataset:
    """:func:`clip_dataset` over video files anywhere on disk."""
    paths = [Path(v) for v in videos]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"video {p} does not exist")
    root, rel = _common_root(paths)
    return clip_dataset(loaded, [ClipRecord(path=r, label=NO_LABEL) for r in rel], root, views=views)


def checkpoint_datamodule(loaded: LoadedCheckpoint, stage: str | None = None) -> VideoDataModule:
    """The DataModule of the checkpoint's data config (synthetic data is generated if missing);
    set up for ``stage`` ("test", "fit", ...) unless ``stage`` is None."""
    dm = run_datamodule(loaded.cfg, loaded.bundle)
    if stage is not None:
        dm.setup(stage)
    return dm


def _loader(loaded: LoadedCheckpoint, dataset: VideoClipDataset) -> DataLoader:
    batch = eval_batch_size(loaded.cfg.data)
    workers = (
        int(loaded.cfg.data.num_workers) if len(dataset) > batch else 0
    )  # a worker pool costs more than a batch or two
    return DataLoader(
        dataset, batch_size=batch, shuffle=False, num_workers=workers, worker_init_fn=seed_worker
    )


# ------------------------------------------------------------------------------ predict
@dataclass
class FailedVideo:
    """A video ``predict`` could not score, and why (one line)."""

    video: str
    error: str


def _check_recognition(loaded: LoadedCheckpoint) -> None:
    if not loaded.classifies:
        raise CheckpointMismatchError(
            f"{loaded.path} is a {loaded.task} checkpoint (task.name={loaded.task}); predict needs a "
            "checkpoint that classifies. Export video features with `stop-lightning embed` instead."
        )


@torch.no_grad()
def predict_each(
    loaded: LoadedCheckpoint, videos: list[str | Path], top: int = 5
) -> list[Prediction | FailedVideo]:
    """One result per video, in order: its :class:`Prediction`, or a :class:`FailedVideo` for a file
    that is missing or cannot be decoded (the others are still scored)."""
    _check_recognition(loaded)
    if top < 1:
        raise InferenceInputError(f"--top must be >= 1, got {top}")
    results: list[Prediction | FailedVideo | None] = [
        None if Path(v).is_file() else FailedVideo(str(v), "no such file") for v in videos
    ]
    present = [i for i, r in enumerate(results) if r is None]
    dataset = video_files_dataset(loaded, [videos[i] for i in present]) if present else None
    names, k = loaded.class_names, min(top, len(loaded.class_names))
    batch_size = eval_batch_size(loaded.cfg.data)
    batch: list[tuple[int, torch.Tensor]] = []

    def score(batch: list[tuple[int, torch.Tensor]]) -> None:
        clips = torch.stack([clip for _, clip in batch]).to(loaded.device)  # [B, (V,) T, 3, S, S]
        for (i, _), probs in zip(batch, loaded.module.multiview_scores(clips).float().cpu()):
            best = probs.topk(k)
            results[i] = Prediction(
                str(videos[i]), [(names[j], float(p)) for p, j in zip(best.values, best.indices)], probs
            )

    for j, i in enumerate(present):
        try:
            batch.append((i, dataset.load(j)["video"]))  # the dataset's decode, without its skip/raise policy
        except VideoDecodeError as err:
            results[i] = FailedVideo(str(videos[i]), err.reason)
        if len(batch) == batch_size:
            score(batch)
            batch = []
    if batch:
        score(batch)
    return results  # type: ignore[return-value]


def predict(loaded: LoadedCheckpoint, videos: list[str | Path], top: int = 5) -> list[Prediction]:
    """Class probabilities of each video (test views averaged, as in evaluation), best ``top`` first.
    A missing or undecodable video raises; :func:`predict_each` reports it and scores the rest."""
    results = predict_each(loaded, videos, top)
    for r in results:
        if isinstance(r, FailedVideo):
            raise VideoDecodeError(r.video, r.error)
    return results  # type: ignore[return-value]


def predictions_json(results: list[Prediction | FailedVideo]) -> str:
    """``predict --json``: one JSON document, a list with one entry per video in order:
    ``{"video", "top": [{"class", "score"}, ...]}`` (best first), or ``{"video", "error"}``."""
    entries = [
        {"video": r.video, "top": [{"class": name, "score": prob} for name, prob in r.top]}
        if isinstance(r, Prediction)
        else {"video": r.video, "error": r.error}
        for r in results
    ]
    return json.dumps(entries, indent=2)


def format_predictions(predictions: list[Prediction]) -> str:
    width = max((len(name) for p in predictions for name, _ in p.top), default=4)
    lines = []
    for p in predictions:
        lines.append(p.video)
        lines += [
            f"  {rank}. {name:<{width}}  {prob:.4f}" for rank, (name, prob) in enumerate(p.top, start=1)
        ]
    return "\n".join(lines)


@dataclass
class VideoExplanation:
    """What the prompts did on one video (the notebook draws it with :mod:`stop_lightning.figures`)."""

    frames: np.ndarray  # uint8 [T, S, S, 3]: the centre clip the model saw
    spatial_mask: torch.Tensor | None  # [T, g, g] top-k patch mask (spatial prompts on)
    frame_weights: torch.Tensor | None  # [T] frame variation w_t (temporal prompts on)
    prediction: Prediction | None  # recognition checkpoints only


@torch.no_grad()
def explain(loaded: LoadedCheckpoint, video: str | Path, top: int = 5) -> VideoExplanation:
    from stop_lightning.figures import denormalize

    clip = video_files_dataset(loaded, [video], views=False)[0]["video"]  # [T, 3, S, S]
    out = loaded.module.model(clip[None].to(loaded.device))
    b = loaded.bundle
    return VideoExplanation(
        frames=denormalize(clip, b.image_mean, b.image_std),
        spatial_mask=out.spatial_mask[0].float().cpu() if out.spatial_mask is not None else None,
        frame_weights=out.frame_weights[0].float().cpu() if out.frame_weights is not None else None,
        prediction=predict(loaded, [video], top)[0] if loaded.classifies else None,
    )


# ------------------------------------------------------------------------------ embed
@torch.no_grad()
def embed_dataset(loaded: LoadedCheckpoint, dataset: VideoClipDataset) -> torch.Tensor:
    """L2-normalised video features ``[N, E]`` (float32, CPU), one centre clip per video."""
    feats = [
        loaded.module.encode_videos(b["video"].to(loaded.device))[0].float().cpu()
        for b in _loader(loaded, dataset)
    ]
    return torch.cat(feats) if feats else torch.zeros(0, 0)


def manifest_videos(manifest: str | Path) -> list[ClipRecord]:
    """A manifest's rows, one per video file (retrieval manifests may list a video once per caption).
    Rows need only a ``path``: labels and captions are not read."""
    seen: dict[str, ClipRecord] = {}
    for r in read_manifest(manifest, require_target=False):
        seen.setdefault(r.path, r)
    if not seen:
        raise ManifestError(f"manifest {manifest} has no rows")
    return list(seen.values())


def default_video_root(loaded: LoadedCheckpoint) -> Path:
    """Where the checkpoint's data config keeps its videos (for synthetic data, generated first)."""
    cfg = loaded.cfg
    return video_sources(cfg.data, cfg.task.name, cfg.paths.cache_dir)[0]


def check_embedding_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix not in EMBEDDING_SUFFIXES:
        raise InferenceInputError(
            f"--out {out}: unknown format '{out.suffix}', use one of {', '.join(EMBEDDING_SUFFIXES)}"
        )
    return out


def save_embeddings(
    out: str | Path, embeddings: torch.Tensor, ids: list[str], paths: list[str], meta: dict
) -> Path:
    """``.pt``: ``{"embeddings" [N, E], "ids", "paths", **meta}`` (loads with ``weights_only=True``);
    ``.npz``: arrays ``embeddings``, ``ids``, ``paths`` and ``meta`` (the JSON of ``meta``).
    Written atomically."""
    out = check_embedding_path(out)
    with atomic_file(out) as f:  # a file, not a name: np.savez would add .npz
        if out.suffix == ".pt":
            torch.save({"embeddings": embeddings, "ids": list(ids), "paths": list(paths), **meta}, f)
        else:
            np.savez(
                f,
                embeddings=embeddings.numpy(),
                ids=np.asarray(ids, dtype=str),
                paths=np.asarray(paths, dtype=str),
                meta=np.asarray(json.dumps(meta)),
            )
    return out


def embed_records(
    loaded: LoadedCheckpoint, records: list[ClipRecord], video_root: Path, out: str | Path, source: dict
) -> Path:
    """Features of the videos ``records`` name (paths relative to ``video_root``) saved to ``out``;
    ``source`` (where the list came from) goes into the file's metadata."""
    dataset = clip_dataset(loaded, records, video_root, views=False, advice=EMBED_ADVICE)
    embeddings = embed_dataset(loaded, dataset)
    ids = [r.video_id or r.path for r in records]
    # The fingerprint names the model whose text side belongs with these features (`stop-lightning search`).
    meta = {
        "checkpoint": str(Path(loaded.path).resolve()),
        "clip": dict(loaded.module.clip_source),
        "task": loaded.task,
        **source,
        "video_root": str(Path(video_root).resolve()),
        "fingerprint": model_fingerprint(loaded.module),
    }
    return save_embeddings(out, embeddings, ids, [r.path for r in records], meta)


def embed(
    loaded: LoadedCheckpoint, manifest: str | Path, out: str | Path, video_root: str | Path | None = None
) -> Path:
    """Features of every video of ``manifest`` (paths relative to ``video_root``) saved to ``out``."""
    records = manifest_videos(manifest)
    root = Path(video_root) if video_root is not None else default_video_root(loaded)
    if not root.is_dir():
        raise FileNotFoundError(
            f"the videos of {manifest} are looked up under {root} "
            "(data.video_root of the checkpoint's config), "
            "which is not a directory; pass --video-root <folder the manifest paths are relative to>"
        )
    return embed_records(loaded, records, root, out, {"manifest": str(manifest)})


def embed_files(loaded: LoadedCheckpoint, videos: list[str | Path], out: str | Path) -> Path:
    """Features of video files (a folder: the videos under it) saved to ``out``; each row's path is
    relative to the folder holding them all, its id that path."""
    paths = [Path(v) for v in expand_videos(list(videos))]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"video {p} does not exist")
    root, rel = _common_root(paths)
    return embed_records(loaded, [ClipRecord(path=r) for r in rel], root, out, {"manifest": None})


# ------------------------------------------------------------------------------ CLI


def predict_main(
    ckpt: str,
    videos: list[str],
    top: int = 5,
    clip_source: str | None = None,
    as_json: bool = False,
    device: str = "auto",
) -> int:
    """``stop-lightning predict --ckpt C video|folder [...]``: the top classes of each video on stdout
    (``as_json``: one JSON document, :func:`predictions_json`), one ``error:`` line per video that
    failed on stderr; exit 2 if any failed."""
    try:
        results = predict_each(load_model(ckpt, clip_source, device), expand_videos(videos), top)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    predictions = [r for r in results if isinstance(r, Prediction)]
    if as_json:
        print(predictions_json(results))
    elif predictions:
        print(format_predictions(predictions))
    failed = [r for r in results if isinstance(r, FailedVideo)]
    for f in failed:
        print(f"error: {f.video}: {f.error}", file=sys.stderr)
    if failed:
        print(
            f"error: {len(failed)} of {len(results)} videos could not be read (listed above)", file=sys.stderr
        )
        return 2
    return 0


def embed_main(
    ckpt: str,
    manifest: str | None,
    out: str,
    video_root: str | None = None,
    clip_source: str | None = None,
    videos: list[str] | tuple[str, ...] = (),
    device: str = "auto",
) -> int:
    """``stop-lightning embed --ckpt C (--manifest M | video|folder ...) --out F``: write the videos'
    features to a .pt or .npz."""
    try:
        if (manifest is None) == (not videos):
            raise InferenceInputError(
                "embed reads either --manifest M or video files / folders, "
                + ("not both" if videos else "and got neither")
                + ": stop-lightning embed --ckpt C --out F (--manifest M | VIDEO_OR_FOLDER ...)"
            )
        if videos and video_root is not None:
            raise InferenceInputError(
                "--video-root is for the paths of a --manifest; video files are read where they are"
            )
        check_embedding_path(out)  # before minutes of work, not after
        if manifest is not None:
            manifest_videos(manifest)  # a bad manifest is found before the model is loaded
        loaded = load_model(ckpt, clip_source, device)
        if videos:
            path = embed_files(loaded, list(videos), out)
        else:
            path = embed(loaded, manifest, out, video_root)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
