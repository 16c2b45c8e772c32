"""Typed experiment schema, composition and validation.

A run's config is composed, in this order, from:

1. ``experiments/base.yaml``                shared defaults (every key of the schema)
2. ``experiments/presets/<model.preset>.yaml``  a named model (``stop``, ``dgl``, ...)
3. ``experiments/<name>.yaml``              the experiment
4. command-line dotlist overrides            ``trainer.max_epochs=3 model.spatial.alpha=0.1``

and merged onto the structured schema below, so an unknown key, a wrong type or a missing
required value fails before any work, with the key, the file it came from and the valid choices.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    ConfigTypeError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from stop_lightning.fileio import atomic_write
from stop_lightning.models.choices import MODEL_CHOICES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = Path(os.environ.get("STOP_EXPERIMENTS_DIR", PROJECT_ROOT / "experiments"))


class ConfigError(ValueError):
    """A user-facing configuration problem; the message says what to change."""


# --------------------------------------------------------------------------------------------
# Schema. Defaults are the `stop` settings of docs/method.md; experiments override what differs.
# --------------------------------------------------------------------------------------------


@dataclass
class ClipSource:
    # HF hub id, a local directory written by save_pretrained, an OpenAI ``.pt`` checkpoint,
    # or ``tiny`` (a small random CLIP built in ``paths.cache_dir``; needs nothing from outside).
    source: str = "openai/clip-vit-base-patch32"
    attn_implementation: str = "sdpa"  # models.choices.ATTN_IMPLEMENTATIONS
    # Sizes of the ``tiny`` CLIP (ignored for real weights, whose sizes come from their config).
    tiny_width: int = 64
    tiny_layers: int = 2
    tiny_patch_size: int = 16
    tiny_image_size: int = 64
    # Recompute each frozen vision layer in the backward pass instead of keeping its activations:
    # same gradients, less memory for long videos (models/checkpointing.py, docs/benchmarks.md).
    activation_checkpointing: bool = False


@dataclass
class SpatialPromptConfig:
    """Intra-frame spatial prompts (docs/method.md, "Spatial prompts"). Choices: models/choices.py."""

    enabled: bool = True
    generator: str = "fast"  # fast | reference
    scorer: str = "attention"  # attention (paper: attention x temporal variation) | reference (conv)
    topk_ratio: float = 6 / 49  # fraction of patches per frame kept by the mask (reference: 6 of 49)
    # How the scores and the mask map to the g x g cells (docs/fidelity.md): patch (cell = patch) |
    # lattice (the authors' code: cell (i, j) = the pixels with h mod g = i, w mod g = j).
    score_pooling: str = "patch"
    mask_layout: str = "block"  # block (a cell covers its P x P patch) | lattice (as score_pooling)
    threshold: str = "topk"  # topk (exactly k cells) | strict (cells strictly above the (k+1)-th score)
    first_activation: bool = True  # reference generator: PReLU after its first conv (authors' code: none)
    output_dropouts: int = 0  # dropouts applied after the pixel MLP (authors' code: 2)
    alpha: float = 0.05
    dropout: float = 0.5
    hidden_channels: int = 16  # width of the generator's last conv / per-pixel MLP
    conv_channels: int = 9  # channels of the generator's inner convs (reference: 9)
    fast_samples_per_patch: int = 4  # fast generator: resolution, in samples per patch side
    fast_kernel: int = 5  # fast generator: spatial kernel of its (2+1)D convs


@dataclass
class TemporalPromptConfig:
    """Inter-frame temporal prompts (docs/method.md, "Temporal prompts"). Choices: models/choices.py."""

    enabled: bool = True
    num_tokens: int = 4  # K tokens per frame
    alpha: float = 0.05
    variation: str = "similarity"  # similarity | reference (learned conv)
    normalize: str = "video"  # video | batch (min-max range of the frame variation)
    insertion: str = "soft"  # soft: q * (1 + w) | hard: only the top-m frames get prompts
    hard_top_m: int = 4
    depth: int = -1  # number of layers that get deep prompts; -1: all layers
    conv_channels: int = 9
    conv_kernel: list[int] = field(default_factory=lambda: [3, 15, 25])
    out_conv: str = "pointwise"  # second volume conv: pointwise (1x1x1) | full (conv_kernel; authors' code)
    attention_residual: bool = True  # tokens + attention(tokens) into the conv (authors' code: no residual)
    zero_init: bool = True  # prompt MLP's last layer starts at zero (authors' code: PyTorch's default init)
    # How the (T, N, D) conv (and the reference variation conv) is computed: fft | direct. The same
    # map and parameters; fft is ~5x cheaper forward+backward on CPU (docs/benchmarks.md).
    conv_impl: str = "fft"
    dropout: float = 0.0


@dataclass
class LocalPromptConfig:
    """Deep local visual prompts, K per frame at each layer (docs/method.md, "DGL base")."""

    enabled: bool = True
    num_tokens: int = 4
    # normal init of the prompt tokens (and of the shared latent source; VoP-F's video-level prompts and
    # frame position embedding)
    init_std: float = 0.02
    # number of layers (from the first) whose prompt slots get local prompts; -1: all (with VoP-F: all
    # of the function_prompts.split_layer layers that attend within each frame)
    depth: int = -1
    # Position-specific (VoP-P, docs/fidelity.md "VoP"): each frame index gets its own tokens,
    # ``[L, T, K, D]`` instead of ``[L, 1, K, D]``; clips must then have data.num_frames frames.
    per_frame: bool = False
    # With per_frame: how many of the num_tokens are position-specific (the last ones), the others
    # shared by every frame; -1: all. VoP-P makes 4 of its 8 position-specific (VoP paper, Sec. 4.1).
    per_frame_tokens: int = -1


@dataclass
class ContextPromptConfig:
    """Context-specific video prompts (VoP-C; VoP paper Sec. 3.3, Eqs. 6-8; docs/fidelity.md "VoP"): at
    each prompted vision layer the CLS tokens of the clip's frames entering it pass a 1-layer BiLSTM
    and a fully connected layer (both shared by all layers), which give each frame its own
    ``num_tokens`` prompt tokens: the last ``num_tokens`` of ``model.local_prompts.num_tokens``."""

    enabled: bool = False
    num_tokens: int = 4  # context-specific tokens per frame and layer (the paper's video prompt length)
    hidden: int = -1  # BiLSTM hidden size per direction; -1: the vision width D (not stated in the paper)


@dataclass
class FunctionPromptConfig:
    """Function-specific video prompts (VoP-F; VoP paper Sec. 3.3, Eq. 9; docs/fidelity.md "VoP"): the
    vision layers after ``split_layer`` attend across all frames of the clip (one sequence per video, a
    trainable frame position embedding added before them), each with ``model.local_prompts.num_tokens``
    video-level prompt tokens; the local prompts serve the first ``split_layer`` layers."""

    enabled: bool = False
    split_layer: int = 8  # K^s: layers 1..K^s attend within each frame, K^s+1..L across frames


@dataclass
class GlobalPromptConfig:
    """G global tokens per video seeing every frame (docs/method.md, "DGL base")."""

    enabled: bool = True
    num_tokens: int = 4
    # add: layer 0 inserts its tokens, later layers add theirs to the carried global states, so
    # frames exchange information through them; replace: overwritten at every layer (VPT-deep).
    per_layer: str = "add"
    init_std: float = 0.02


@dataclass
class TextPromptConfig:
    """Deep text prompts around the caption tokens at every text layer (docs/method.md, "DGL base")."""

    enabled: bool = True
    prefix: int = 4
    postfix: int = 4
    # Caption tokens (SOT and EOT included) the text encoder accepts. Not set by hand: base.yaml
    # makes it ${data.max_text_tokens}, the length the tokenizer pads/truncates to, so set that one.
    # Sequences are this + prefix + postfix.
    max_text_tokens: int = 32
    init_std: float = 0.02  # normal init of the text tower's own deep prompts


@dataclass
class AdapterConfig:
    enabled: bool = True
    bottleneck: int = 32
    scale: float = 0.1
    vision: bool = True
    text: bool = True


@dataclass
class AggregationConfig:
    """How a video's frames become one vector."""

    # global_prompt0 | global_mean | mean_cls (CLIP4Clip meanP) | global_and_cls
    output: str = "global_prompt0"
    # A trainable multi-head self-attention block over frame CLS + temporal prompt tokens
    # before pooling (STOP core); off in the pure meanP baseline.
    msa: bool = True
    msa_layers: int = 1
    # A video projection head initialised to the identity (the one trainable part of meanP).
    head: bool = False


@dataclass
class ModelConfig:
    preset: str = "stop"  # a file in experiments/presets (stop, stop_fast, stop_official, dgl, vop, ...)
    clip: ClipSource = field(default_factory=ClipSource)
    spatial: SpatialPromptConfig = field(default_factory=SpatialPromptConfig)
    temporal: TemporalPromptConfig = field(default_factory=TemporalPromptConfig)
    local_prompts: LocalPromptConfig = field(default_factory=LocalPromptConfig)
    context_prompts: ContextPromptConfig = field(default_factory=ContextPromptConfig)
    function_prompts: FunctionPromptConfig = field(default_factory=FunctionPromptConfig)
    global_prompts: GlobalPromptConfig = field(default_factory=GlobalPromptConfig)
    text_prompts: TextPromptConfig = field(default_factory=TextPromptConfig)
    shared_latent: str = "linear"  # none | linear | transformer (models.choices.SHARED_LATENT)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)


@dataclass
class DataConfig:
    # a registered dataset (data/registry.py): official ones, manifest (any manifest folder) or
    # synthetic (made on the fly)
    dataset: str = "synthetic"
    video_root: str = "${paths.data_root}/${data.dataset}/videos"
    manifest_dir: str = "${paths.manifest_root}/${data.dataset}"
    split: int = 1  # official split 1..3 (HMDB51, UCF101)
    num_frames: int = 8
    sampling: str = "segment"  # segment (uniform, recognition) | fps (retrieval)
    fps: float = 3.0
    image_size: int = -1  # -1: the CLIP config's image_size
    test_clips: int = 1  # multi-view testing: temporal clips x spatial crops, scores averaged
    test_crops: int = 1  # 1 (centre) | 3 (left/centre/right)
    batch_size: int = 8
    eval_batch_size: int = -1  # -1: same as batch_size
    num_workers: int = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    # Loader workers yield uint8 clips and the DataModule normalises each batch on the model's device
    # (after the transfer): a quarter of the bytes to collate, pin and copy, and no float pass per
    # clip in the workers (docs/benchmarks.md "Data formats: the loader"). For GPU training.
    normalize_on_device: bool = False
    bad_video: str = "raise"  # raise | skip
    min_video_frames: int = 1  # a video with fewer frames is bad (policy data.bad_video)
    # Training augmentation. Horizontal flip is off by default: on motion data (the synthetic set,
    # "move left"/"move right") it swaps classes. Turn it on for HMDB51/UCF101/MSRVTT.
    hflip: bool = False
    train_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])  # RandomResizedCrop area range
    max_text_tokens: int = 32
    # Protocols (recognition): supervised | few_shot | base_to_novel | zero_shot
    protocol: str = "supervised"
    shots: int = 0  # few-shot K clips per class
    protocol_seed: int = 0
    # Base-to-novel halves: alphabetical (the first ceil(n/2) sorted names are base) | seeded (a
    # random half drawn with protocol_seed) | a class-list file of the base classes, e.g. ViFi-CLIP's
    # labels/hmdb_51_base_labels.csv (format: data_manifests/README.md, "Class-list files")
    class_split: str = "alphabetical"
    # A class-list file: only the listed classes and their clips are used (K600's 220 novel classes)
    class_subset: str = ""
    subset_size: int = 0  # >0: that many of class_subset's classes, drawn with protocol_seed
    # Synthetic data (demo and tests): written under paths.cache_dir when missing.
    synthetic_classes: int = 4
    synthetic_clips_per_class: int = 6
    synthetic_frames: int = 16
    synthetic_size: int = 64
    synthetic_looks: int = 0  # >0: cycle that many colour/background looks (0: one per clip)
    # Recognition layouts: the clips data.split evaluates on get colours and a background that no
    # training clip has (data/synthetic.py), so their accuracy measures generalisation.
    synthetic_heldout_looks: bool = False
    # Storage (data/preprocess.py, data/shards.py): read the videos as they are, or frames from JPEG
    # shards written by `stop-lightning shard` (a local folder or an s3:// / gs:// URL, LitData).
    format: str = "video"  # video | shards
    shard_dir: str = "${paths.data_root}/${data.dataset}/shards"
    # What `stop-lightning preprocess` and `stop-lightning shard` store: short side in pixels, frame
    # rate (-1: data.fps under fps sampling, every source frame under segment sampling; 0: every
    # source frame), video codec and key-frame interval, JPEG quality.
    store_short_side: int = 224
    store_fps: float = -1.0
    store_codec: str = "h264"
    store_gop: int = 6
    store_jpeg_quality: int = 90


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class TaskConfig:
    name: str = "recognition"  # a task registered in tasks/registry.py
    templates: list[str] = field(default_factory=lambda: ["a video of a person {name}."])
    # Recognition classifier: text (cosine with class-prompt text features, the CLIP way) or
    # linear (a trained linear layer on the video feature; for models without a text tower).
    head: str = "text"
    dual_softmax: bool = False  # retrieval re-ranking at inference
    # Retrieval ranking conventions (docs/metrics.md): how a tie ranks, and how video-to-text ranks
    # a split with several captions per video. clip4clip + best_caption: CLIP4Clip's compute_metrics.
    tie_rank: str = "pessimistic"  # pessimistic | optimistic | clip4clip
    v2t_captions: str = "all_captions"  # all_captions | best_caption
    # QB-Norm (dynamic inverted softmax) of text-to-video at test time, with the training split's
    # captions as the query bank; logged as test/qb_t2v_* next to the raw metrics.
    qb_norm: bool = False
    qb_norm_beta: float = 20.0
    qb_norm_k: int = 1


@dataclass
class TrainerConfig:
    max_epochs: int = 5
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = (
        "auto"  # "auto", an int (-1: all), a list of device ids, or "0,1" (checked by _check_trainer)
    )
    strategy: str = "auto"
    num_nodes: int = 1  # nodes of a multi-node run (docs/cluster.md)
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, 32-true on CPU
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    val_check_interval: float = 1.0
    check_val_every_n_epoch: int = 1
    # Lightning's meaning, kept by typing these int | float: an int is a number of batches (1: one
    # batch), a float a fraction of them (1.0: all).
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    enable_progress_bar: bool = (
        True  # on a terminal; output to a file gets text lines (logger.text_every_n_steps)
    )
    requeue: bool = True  # under SLURM, a preemption signal requeues the job (docs/cluster.md)


@dataclass
class LoggerConfig:
    wandb: bool = True
    mode: str = "auto"  # auto (offline without an API key) | online | offline | disabled
    project: str = "stop-lightning"
    entity: str = ""
    tags: list[str] = field(default_factory=list)
    log_images_every_n_steps: int = 200
    text_every_n_steps: int = (
        50  # when stdout is not a terminal: a text line every N steps (0: per epoch only)
    )


@dataclass
class CheckpointConfig:
    monitor: str = "val/top1"
    mode: str = "max"
    # Which weights `train` tests after fitting: best (by monitor; the last epoch when nothing was
    # monitored) | last (the weights the fit ended with)
    test: str = "best"
    save_last: bool = True
    save_top_k: int = 1
    every_n_epochs: int = 1


@dataclass
class PathsConfig:
    data_root: str = "${oc.env:STOP_DATA_ROOT,data}"
    manifest_root: str = "data_manifests"
    cache_dir: str = "${oc.env:STOP_CACHE_DIR,.cache/stop_lightning}"
    output_dir: str = "runs"
    run_dir: str = "${paths.output_dir}/${name}"


@dataclass
class ComponentConfig:
    """A callback or logger built from config (LightningCLI-style); see :mod:`stop_lightning.components`."""

    class_path: str = MISSING  # e.g. lightning.pytorch.callbacks.EarlyStopping
    init_args: dict[str, Any] = field(default_factory=dict)  # save_dir/dirpath default to the run folder
    enabled: bool = True  # false removes an entry an earlier layer added


def _default_callbacks() -> dict[str, ComponentConfig]:
    lr = ComponentConfig("lightning.pytorch.callbacks.LearningRateMonitor", {"logging_interval": "step"})
    return {"lr_monitor": lr}


def _default_loggers() -> dict[str, ComponentConfig]:
    return {
        "csv": ComponentConfig("stop_lightning.loggers.AppendingCSVLogger", {"name": "csv", "version": ""})
    }


@dataclass
class ExperimentConfig:
    name: str = "demo"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # Added to the project's own callbacks (run info, RNG state, data health, checkpoints, throughput,
    # prompt images) and to W&B (logger.wandb); add or remove entries by name.
    callbacks: dict[str, ComponentConfig] = field(default_factory=_default_callbacks)
    loggers: dict[str, ComponentConfig] = field(default_factory=_default_loggers)


# String fields with a closed set of values: checked after composition.
CHOICES: dict[str, tuple[str, ...]] = {
    **MODEL_CHOICES,  # the model modules' own constants (models/choices.py)
    "data.sampling": ("segment", "fps"),
    "data.bad_video": ("raise", "skip"),
    "data.format": ("video", "shards"),
    "data.store_codec": ("h264", "mpeg4"),
    "data.protocol": ("supervised", "few_shot", "base_to_novel", "zero_shot"),
    "optim.scheduler": ("cosine", "constant"),
    "task.head": ("text", "linear"),
    "task.tie_rank": ("pessimistic", "optimistic", "clip4clip"),
    "task.v2t_captions": ("all_captions", "best_caption"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "checkpoint.mode": ("min", "max"),
    "checkpoint.test": ("best", "last"),
}


def registered_choices() -> dict[str, tuple[str, ...]]:
    """Choices that come from the registries (imported late: they import this module)."""
    from stop_lightning.data.registry import dataset_names
    from stop_lightning.tasks.registry import TASKS

    return {"data.dataset": dataset_names(), "task.name": tuple(TASKS), "model.preset": available_presets()}


def available_presets(exp_dir: Path = EXPERIMENTS_DIR) -> tuple[str, ...]:
    """The presets are the files ``experiments/presets/<name>.yaml``: adding one is adding a file."""
    return tuple(sorted(p.stem for p in (exp_dir / "presets").glob("*.yaml")))


# Numeric ranges: key -> (low, high), inclusive.
RANGES: dict[str, tuple[float, float]] = {
    "model.spatial.topk_ratio": (0.0, 1.0),
    "model.spatial.alpha": (0.0, 10.0),
    "model.spatial.dropout": (0.0, 1.0),
    "model.spatial.output_dropouts": (0, 8),
    "model.temporal.alpha": (0.0, 10.0),
    "model.temporal.num_tokens": (1, 64),
    "model.local_prompts.per_frame_tokens": (-1, 1024),
    "model.context_prompts.num_tokens": (1, 1024),
    "model.context_prompts.hidden": (-1, 1 << 16),
    "model.function_prompts.split_layer": (1, 1024),
    "data.split": (1, 3),
    "data.num_frames": (1, 256),
    "data.test_crops": (1, 3),
    "data.test_clips": (1, 64),
    "data.batch_size": (1, 1 << 16),
    "data.store_short_side": (16, 4096),
    "data.store_fps": (-1, 240),
    "data.store_gop": (1, 1000),
    "data.store_jpeg_quality": (1, 100),
    "data.num_workers": (0, 1024),
    "trainer.num_nodes": (1, 1 << 16),
    "logger.text_every_n_steps": (0, 1 << 30),
    "optim.lr": (0.0, 10.0),
    "optim.warmup_ratio": (0.0, 1.0),
    "task.qb_norm_beta": (0.0, 1000.0),
    "task.qb_norm_k": (1, 1000),
}


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


def available_experiments(exp_dir: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in exp_dir.glob("*.yaml") if p.stem != "base")


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except OmegaConfBaseException as err:  # pragma: no cover - yaml syntax errors
        raise ConfigError(f"{path}: cannot parse YAML: {err}") from err
    except Exception as err:
        raise ConfigError(f"{path}: cannot parse YAML: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(cfg).__name__}")
    return cfg


def _schema_keys(schema: Any, prefix: str = "") -> dict[str, Any]:
    """All dotted keys of the schema dataclass with their field default."""
    out: dict[str, Any] = {}
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        default = getattr(schema(), f.name) if isinstance(schema, type) else getattr(schema, f.name)
        if is_dataclass(default):
            out[key] = default
            out.update(_schema_keys(type(default), key + "."))
        else:
            out[key] = default
    return out


_ALL_KEYS = _schema_keys(ExperimentConfig)


def _check_keys(cfg: DictConfig, origin: str, prefix: str = "") -> None:
    """Unknown keys: name the key, the file and the closest valid keys."""
    for key, value in cfg.items_ex(resolve=False) if hasattr(cfg, "items_ex") else cfg.items():
        dotted = f"{prefix}{key}"
        if dotted not in _ALL_KEYS:
            siblings = sorted(
                k[len(prefix) :] for k in _ALL_KEYS if k.startswith(prefix) and "." not in k[len(prefix) :]
            )
            close = difflib.get_close_matches(str(key), siblings, n=3)
            hint = f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown config key '{dotted}' in {origin}.{hint} "
                f"Valid keys under '{prefix[:-1] or '<top level>'}': {', '.join(siblings)}"
            )
        if isinstance(value, DictConfig) and is_dataclass(_ALL_KEYS[dotted]):
            _check_keys(value, origin, dotted + ".")


def _merge_checked(base: DictConfig, layer: DictConfig, origin: str) -> DictConfig:
    _check_keys(layer, origin)
    try:
        merged = OmegaConf.merge(base, layer)
    except (ValidationError, ConfigTypeError, ConfigKeyError) as err:
        key = getattr(err, "full_key", None) or "?"
        expected = _ALL_KEYS.get(key)
        want = f" (expected {type(expected).__name__}, default {expected!r})" if key in _ALL_KEYS else ""
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"bad value for config key '{key}' in {origin}{want}: {reason}") from err
    _validate_values(merged, layer, origin)
    return merged


def _validate_values(cfg: DictConfig, layer: DictConfig, origin: str) -> None:
    """Check closed choices and ranges of the keys this layer sets, naming the layer's file."""
    for key, choices in {**CHOICES, **registered_choices()}.items():
        if OmegaConf.select(layer, key, throw_on_missing=False, default=None) is None:
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False, throw_on_resolution_failure=False)
        if value is None:  # an interpolation that a later layer resolves: checked after composition
            continue
        if value not in choices:
            raise ConfigError(
                f"config key '{key}' = {value!r} in {origin} is not one of: {', '.join(choices)}"
            )
    for key, (low, high) in RANGES.items():
        if OmegaConf.select(layer, key, throw_on_missing=False, default=None) is None:
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False, throw_on_resolution_failure=False)
        if value is None:
            continue
        if not (low <= value <= high):
            raise ConfigError(
                f"config key '{key}' = {value!r} in {origin} is outside the valid range [{low}, {high}]"
            )


LIMIT_KEYS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")


def _check_trainer(t: DictConfig) -> None:
    """The trainer values Lightning would otherwise reject with a traceback, checked before any folder."""
    for key in LIMIT_KEYS:
        value = t[key]
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
            isinstance(value, float) and 0.0 <= value <= 1.0
        )
        if not ok:
            raise ConfigError(
                f"config key 'trainer.{key}' = {value!r}: give a number of batches (int >= 0, e.g. 1 for one "
                "batch) or a fraction (float in [0.0, 1.0], e.g. 1.0 for all)"
            )
    devices = t.devices
    items = list(devices) if isinstance(devices, ListConfig) else [devices]
    if isinstance(devices, str) and devices != "auto":
        items = [d.strip() for d in devices.split(",") if d.strip()]
    good = devices == "auto" or (items and all(_is_device_id(d, len(items)) for d in items))
    if not good:
        raise ConfigError(
            f"config key 'trainer.devices' = {devices!r}: use \"auto\", a count (1, 2, -1 for all), "
            'a list of device ids ([0, 1]) or a string of them ("0,1")'
        )


def _is_device_id(item: Any, count: int) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, str):
        if not item.lstrip("-").isdigit():
            return False
        item = int(item)
    return isinstance(item, int) and (item >= 0 or (item == -1 and count == 1))


def load_config(
    experiment: str | Path,
    overrides: list[str] | None = None,
    exp_dir: Path | None = None,
) -> DictConfig:
    """Compose base + preset + experiment + overrides onto the schema and validate.

    ``experiment`` is a name in ``experiments/`` or a path to a YAML file. Returns a resolved,
    read-only ``DictConfig`` typed by :class:`ExperimentConfig`.
    """
    exp_dir = Path(exp_dir) if exp_dir is not None else EXPERIMENTS_DIR
    for item in [str(experiment), *(overrides or [])]:
        if item.split("=", 1)[0] == "experiment":
            # The Hydra habit (`experiment=hmdb51`): here the experiment is a positional argument.
            raise ConfigError(
                f"'{item}': the experiment is the first argument, not an override; "
                f"e.g. `stop-lightning train {item.split('=', 1)[-1] or '<name>'} [key=value ...]`"
            )
    exp_path = Path(experiment)
    if exp_path.suffix not in (".yaml", ".yml"):
        exp_path = exp_dir / f"{experiment}.yaml"
    if not exp_path.is_file():
        names = available_experiments(exp_dir)
        close = difflib.get_close_matches(str(experiment), names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"no experiment '{experiment}' ({exp_path} does not exist).{hint} Available: {', '.join(names)}"
        )

    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"command-line override '{item}' is not of the form key=value (e.g. trainer.max_epochs=3)"
            )
    cli = OmegaConf.from_dotlist(overrides)
    exp = _load_yaml(exp_path)

    cfg = OmegaConf.structured(ExperimentConfig)
    base_path = exp_dir / "base.yaml"
    if base_path.is_file():
        cfg = _merge_checked(cfg, _load_yaml(base_path), str(base_path))

    # The preset is chosen by the override, else the experiment, else the base.
    preset = (
        OmegaConf.select(cli, "model.preset") or OmegaConf.select(exp, "model.preset") or cfg.model.preset
    )
    presets = available_presets(exp_dir) or available_presets()  # a folder of experiments without presets/
    if preset not in presets:
        origin = "command-line overrides" if OmegaConf.select(cli, "model.preset") else str(exp_path)
        raise ConfigError(
            f"config key 'model.preset' = {preset!r} in {origin} is not one of: {', '.join(presets)}"
        )
    preset_path = exp_dir / "presets" / f"{preset}.yaml"
    if preset_path.is_file():
        cfg = _merge_checked(cfg, _load_yaml(preset_path), str(preset_path))

    if "name" not in exp:
        exp.name = exp_path.stem
    cfg = _merge_checked(cfg, exp, str(exp_path))
    cfg = _merge_checked(cfg, cli, "command-line overrides")
    try:
        OmegaConf.resolve(cfg)
        missing = OmegaConf.missing_keys(cfg)
    except (MissingMandatoryValue, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot resolve config key '{getattr(err, 'full_key', '?')}': {err}") from err
    if missing:
        raise ConfigError(
            f"required config values missing: {', '.join(sorted(missing))} "
            f"(set them in {exp_path} or on the command line)"
        )
    _validate_values(cfg, cfg, "the composed config (after interpolation)")
    _check_trainer(cfg.trainer)
    from stop_lightning.components import check_components  # imports lightning: only once composed

    check_components(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    return atomic_write(path, to_yaml(cfg))
