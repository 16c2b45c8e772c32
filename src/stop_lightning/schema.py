"""The typed experiment schema: every key, its type and default, its closed choices and ranges.

This is the ground floor of the package (``docs/architecture.md``): it imports nothing of
``stop_lightning`` beyond ``fileio`` and ``choices``, and no torch, Lightning or transformers, so the
registries, the model and data modules and the CLI can all stand on it. Which names the registries
hold (datasets, tasks, presets) is checked one floor up, by composition (``config.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from stop_lightning.choices import COMPILE_BACKENDS, MODEL_CHOICES
from stop_lightning.errors import UserError
from stop_lightning.fileio import atomic_write

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = Path(os.environ.get("STOP_EXPERIMENTS_DIR", PROJECT_ROOT / "experiments"))
# Where relative folders of a config lie (``rooted_paths``): this variable when set, else the folder
# holding the experiments/ folder the config is composed from (the repository in a checkout).
PROJECT_ROOT_ENV = "STOP_PROJECT_ROOT"
# The config keys that name folders. A relative value is taken relative to the project root, not to
# the current directory, so a run, its cache and its data are found from any directory.
ROOTED_KEYS = (
    "paths.data_root",
    "paths.manifest_root",
    "paths.cache_dir",
    "paths.output_dir",
    "paths.run_dir",
    "data.video_root",
    "data.manifest_dir",
    "data.shard_dir",
)


class ConfigError(UserError, ValueError):
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
    # A new run starts from another run's trained tensors (a .ckpt from `train` or a folder from
    # `export`), not resuming it: those whose names and shapes fit are taken, the rest start fresh, and
    # the optimiser, schedule and epoch start anew (model_io.read_initial_weights). Empty: none.
    init_from: str = ""


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
    # Before a run, every val/test video is probed (header, stream, first packet, content as far as a
    # clip needs; data/video_probe.py) on data.num_workers threads, so a bad one stops the run before
    # the fit (policy data.bad_video). Its cost per clip: python benchmarks/probe.py (docs/reliability.md).
    probe_videos: bool = True
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
    # Where shard frames are decoded: in the loader workers (worker), or, for GPU training, only
    # their JPEG bytes leave the workers and the batch is decoded (nvJPEG), cropped, resized and
    # normalised on the model's device after the transfer (device; data.format=shards only).
    decode_on: str = "worker"  # worker | device
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
    # Class-name prompt templates; empty: the dataset's own (its DatasetSpec.templates, filled in
    # by composition).
    templates: list[str] = field(default_factory=list)
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
    # Lightning's debugging and time knobs, passed through as Lightning reads them.
    fast_dev_run: Any = False  # true: one batch of each stage; an int n: n batches (no checkpoints kept)
    overfit_batches: Any = 0.0  # an int (batches) or a float (fraction) of the training set, reused
    max_time: str = ""  # "DD:HH:MM:SS": stop the fit (with a checkpoint) after this long, e.g. a SLURM slot
    profiler: str = ""  # "" (none) | simple | advanced | pytorch
    # torch.compile of the video model and the prompted text side: false | default | reduce-overhead |
    # max-autotune (README "Multi-GPU and precision"); compile_backend: inductor, or aot_eager / eager
    # (trace only).
    compile: Any = False
    compile_backend: str = "inductor"
    detect_anomaly: bool = False  # torch.autograd anomaly detection (slow: for finding NaNs)
    benchmark: bool = False  # cudnn.benchmark: pick the fastest convolution kernels for fixed shapes
    deterministic: bool = False
    enable_progress_bar: bool = (
        True  # on a terminal; output to a file gets text lines (logger.text_every_n_steps)
    )
    requeue: bool = True  # under SLURM, a preemption signal requeues the job (docs/cluster.md)


TAG_LENGTH = (1, 64)  # characters of one logger.tags entry: W&B refuses a run with any other tag


@dataclass
class LoggerConfig:
    wandb: bool = True
    mode: str = "auto"  # auto (offline without an API key) | online | offline | disabled
    project: str = "stop-lightning"
    entity: str = ""
    # The run as W&B (and MLflow) shows it. name: empty = "<name>/<run folder>" (e.g. demo/20250101-120000);
    # group: runs shown together (a sweep sets "<sweep>-<stamp>" for its trials); tags: 1-64 characters each.
    name: str = ""
    group: str = ""
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
    save_last: bool = True  # last.ckpt after every epoch; false: only at the end of the fit
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
    """A callback or logger built from config (LightningCLI-style, `config_entries.py`)."""

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
class PublishedTarget:
    """A published figure an experiment reproduces (README, "Expected accuracy"). At the end of a test
    the run's figure is set beside it (``published.py``), only when the run's ``model.preset``, its
    CLIP (``model.clip.source``) and every key of ``settings`` match the published setting."""

    method: str = ""  # the row of the source's table, e.g. "STOP", "DGL-Transformer"
    metric: str = ""  # the run's metric it compares with, e.g. test/t2v_R1
    value: float = 0.0  # as the source prints it
    scale: float = 1.0  # run figure x scale = the source's units (100: a fraction vs a percentage)
    source: str = ""  # paper and table (or repository and file) the value was read in
    backbone: str = ""  # the model.clip.source of the published setting
    protocol: str = ""  # split and setting as the source states them, and what it does not state
    preset: str = ""  # the model.preset that stands for the method
    # Further config keys that must hold, e.g. {model.shared_latent: transformer}
    settings: dict[str, Any] = field(default_factory=dict)


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
    # Published results this experiment reproduces, by name; empty: none (published.py compares).
    published: dict[str, PublishedTarget] = field(default_factory=dict)


# String fields with a closed set of values: checked after composition.
CHOICES: dict[str, tuple[str, ...]] = {
    **MODEL_CHOICES,  # the model modules' own constants (choices.py)
    "data.sampling": ("segment", "fps"),
    "data.bad_video": ("raise", "skip"),
    "data.format": ("video", "shards"),
    "data.decode_on": ("worker", "device"),
    "data.store_codec": ("h264", "mpeg4"),
    "data.protocol": ("supervised", "few_shot", "base_to_novel", "zero_shot"),
    "optim.scheduler": ("cosine", "constant"),
    "task.head": ("text", "linear"),
    "task.tie_rank": ("pessimistic", "optimistic", "clip4clip"),
    "task.v2t_captions": ("all_captions", "best_caption"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "checkpoint.mode": ("min", "max"),
    "checkpoint.test": ("best", "last"),
    "trainer.profiler": ("", "simple", "advanced", "pytorch"),
    "trainer.compile_backend": COMPILE_BACKENDS,
}


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


def flat_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a config as plain containers) as ``{"dotted.key": value}``; an empty section
    stays visible as ``{"section": {}}``."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat_keys(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def key_under(key: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """``key`` is one of ``prefixes`` or lies in one of those sections (``trainer`` holds ``trainer.x``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def project_root(exp_dir: str | Path | None = None) -> Path:
    """``$STOP_PROJECT_ROOT``, else the parent of ``exp_dir`` (default: the experiments folder in use)."""
    if os.environ.get(PROJECT_ROOT_ENV):
        return Path(os.environ[PROJECT_ROOT_ENV]).expanduser().resolve()
    return Path(exp_dir if exp_dir is not None else EXPERIMENTS_DIR).resolve().parent


def _is_url(value: str) -> bool:
    return "://" in value  # s3://, gs://: shard folders LitData reads remotely


def rooted(value: str, root: Path) -> str:
    """``value`` as an absolute path: relative ones under ``root``; empty values and URLs unchanged."""
    if not value or _is_url(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def portable(value: Any, root: Path) -> Any:
    """A path under ``root`` written relative to it (what another checkout reads the same); other
    values unchanged. The inverse of :func:`rooted` for what lies inside the project."""
    if not isinstance(value, str) or not value or _is_url(value) or not Path(value).is_absolute():
        return value
    try:
        return Path(value).relative_to(root).as_posix()
    except ValueError:
        return value


def _map_folders(cfg: DictConfig, change: Any, root: Path) -> DictConfig:
    values = flat_keys(OmegaConf.to_container(cfg, resolve=True))
    for key in ROOTED_KEYS:
        if isinstance(values.get(key), str):
            OmegaConf.update(cfg, key, change(values[key], root), merge=False)
    return cfg


def rooted_paths(cfg: DictConfig, root: Path) -> DictConfig:
    """Set every :data:`ROOTED_KEYS` value of a (writable) config to its absolute path under ``root``.

    On a composed config call it before interpolations are resolved, so that the keys built from
    ``paths.*`` (``data.video_root``, ``data.class_subset``) are absolute too."""
    return _map_folders(cfg, rooted, root)


def portable_paths(cfg: DictConfig, root: Path) -> DictConfig:
    """Every :data:`ROOTED_KEYS` value under ``root`` made relative to it (a config to share)."""
    return _map_folders(cfg, portable, root)


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    return atomic_write(path, to_yaml(cfg))
