"""Measurement primitives of `make bench`.

- :func:`build_clip`: a random CLIP of a real size (ViT-B/32 by default) from ``tiny_clip.sized_clip_config``.
- :func:`build_subjects`: the models compared, each on its own copy of the same frozen CLIP
  (adapters hook CLIP's layers unconditionally, so two models cannot share one).
- :func:`video_step` / :func:`text_step` / :func:`infer_step`: one recognition training step split in
  its two independent halves (video side; class-prompt text side, which only the STOP/DGL presets
  recompute every step), and one inference forward.
- :func:`measure`: interleaved timing (every case once per round, rotating order), so load from
  other processes on a shared machine hits all cases alike; medians and minima; peak memory and
  FLOPs of the first (warm-up) call.
- :func:`module_profile`: a torch.profiler table by module, forward and backward separately.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import CLIPModel

from stop_lightning.models.tiny_clip import OPENAI_EOT_ID, OPENAI_SOT_ID, sized_clip_config
from stop_lightning.models.video_encoder import STOPVideoModel
from stop_lightning.schema import EXPERIMENTS_DIR, ModelConfig
from stop_lightning.tasks.optim import adamw, parameter_groups


@dataclass(frozen=True)
class SubjectSpec:
    preset: str  # experiments/presets/<preset>.yaml
    grad_to_pixels: bool  # backward through the frozen tower to the input, as every prompt method must
    about: str


SUBJECTS: dict[str, SubjectSpec] = {
    "clip4clip_meanp": SubjectSpec(
        "clip4clip_meanp", False, "baseline: frozen CLIP forward, mean of frame CLS, trainable head"
    ),
    "clip_fwd_bwd": SubjectSpec(
        "clip4clip_meanp",
        True,
        "meanP + backward through the frozen CLIP to the pixels: the floor of any prompt method",
    ),
    "dgl": SubjectSpec("dgl", False, "DGL base: local, global, text prompts, shared latent, adapters"),
    "stop_fast": SubjectSpec("stop_fast", False, "STOP, fast spatial generator"),
    "stop": SubjectSpec("stop", False, "STOP, reference spatial generator (paper)"),
}


# ------------------------------------------------------------------------------------------------
# Models and inputs
# ------------------------------------------------------------------------------------------------


def build_clip(size: str, seed: int = 0) -> CLIPModel:
    """Random weights (timing does not depend on their values), frozen, eval mode."""
    torch.manual_seed(seed)
    clip = CLIPModel(sized_clip_config(size)).eval()
    clip.requires_grad_(False)
    return clip


def model_config(preset: str, *overrides: str) -> DictConfig:
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        OmegaConf.load(EXPERIMENTS_DIR / "presets" / f"{preset}.yaml").model,
    )
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


@dataclass
class Subject:
    name: str
    spec: SubjectSpec
    model: STOPVideoModel
    optimizer: torch.optim.Optimizer | None
    trainable: int


def build_subjects(
    clip: CLIPModel, names: list[str], max_frames: int, device: torch.device, overrides: tuple[str, ...] = ()
) -> dict[str, Subject]:
    out = {}
    for name in names:
        spec = SUBJECTS[name]
        model = (
            STOPVideoModel(model_config(spec.preset, *overrides), copy.deepcopy(clip), max_frames)
            .to(device)
            .train()
        )
        groups = parameter_groups(model, 0.2)
        optimizer = adamw(groups, 1e-3, (0.9, 0.98), fused=True) if groups else None  # docs/benchmarks.md
        out[name] = Subject(name, spec, model, optimizer, model.trainable_parameter_count()[0])
    return out


@dataclass
class Workload:
    """One batch: video, labels, and the class prompts of a recognition dataset (HMDB51: 51 classes)."""

    video: torch.Tensor  # [B, T, 3, H, W]
    labels: torch.Tensor  # [B]
    input_ids: torch.Tensor  # [C, S] class prompts, cut to the longest (S <= 12) as tokenize leaves them
    attention_mask: torch.Tensor  # [C, S]
    text_features: torch.Tensor  # [C, E] cached, normalised (what a frozen text side uses)
    video_features: torch.Tensor  # [B, E] fixed, normalised (the other side of the text-side loss)


def make_workload(
    clip: CLIPModel, batch: int, frames: int, num_classes: int, device: torch.device, seed: int = 0
) -> Workload:
    g = torch.Generator().manual_seed(seed)
    size = clip.config.vision_config.image_size
    video = torch.randn(batch, frames, 3, size, size, generator=g)
    # "a video of a person {name}." is 9 to 12 BPE tokens with SOT and EOT for HMDB51's class names.
    lengths = torch.randint(9, 13, (num_classes,), generator=g)
    ids = torch.randint(0, OPENAI_SOT_ID, (num_classes, 32), generator=g)
    mask = torch.zeros(num_classes, 32, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0], ids[row, n - 1 :] = OPENAI_SOT_ID, OPENAI_EOT_ID
        mask[row, :n] = 1
    clip = clip.to(device)
    with torch.no_grad():
        text = clip.get_text_features(input_ids=ids.to(device), attention_mask=mask.to(device)).pooler_output
    dim = text.shape[-1]
    longest = int(lengths.max())  # the padding after the last EOT dropped (PromptedTextEncoder.prepare)
    return Workload(
        video=video.to(device),
        labels=torch.randint(0, num_classes, (batch,), generator=g).to(device),
        input_ids=ids[:, :longest].to(device),  # [C, 32] -> [C, S]
        attention_mask=mask[:, :longest].to(device),
        text_features=F.normalize(text.float(), dim=-1),
        video_features=F.normalize(torch.randn(batch, dim, generator=g), dim=-1).to(device),
    )


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision {precision!r}: expected fp32 or bf16")


def video_step(s: Subject, work: Workload, precision: str) -> None:
    """Video side of a recognition training step: forward, loss against class text features, backward, AdamW.

    Text features are the cached ones; the text side of prompt presets is :func:`text_step`.
    """
    video = work.video.detach().requires_grad_(s.spec.grad_to_pixels)
    with autocast(precision, video.device):
        out = s.model(video)
        logits = s.model.logit_scale * F.normalize(out.embeds.float(), dim=-1) @ work.text_features.t()
        loss = F.cross_entropy(logits, work.labels)
    loss.backward()
    if s.optimizer is not None:
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)


def text_step(s: Subject, work: Workload, precision: str) -> None:
    """Text side of a recognition training step: the class prompts re-encoded with gradient (what
    RecognitionModule does when text prompts or text adapters train), loss, backward. The optimiser
    step is counted in :func:`video_step`."""
    with autocast(precision, work.video.device):
        text = F.normalize(s.model.encode_text(work.input_ids, work.attention_mask).float(), dim=-1)
        loss = F.cross_entropy(s.model.logit_scale * work.video_features @ text.t(), work.labels)
    loss.backward()
    s.model.zero_grad(set_to_none=True)


def infer_step(s: Subject, work: Workload, precision: str) -> None:
    with torch.inference_mode(), autocast(precision, work.video.device):
        s.model(work.video)


# ------------------------------------------------------------------------------------------------
# Timing, memory, FLOPs
# ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory a block adds over what is resident when it starts, in MiB (``.mib``; None if unknown).

    GPU: ``torch.cuda.max_memory_allocated``. CPU: the process's peak RSS (VmHWM), reset just before
    the block through ``/proc/self/clear_refs`` (Linux), after freeing cached heap pages, minus the
    RSS at the start. tracemalloc does not see torch's allocations; this does.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS to the current RSS
            self._base = _status_kib("VmRSS")
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._base is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            peak = _status_kib("VmHWM")
            self.mib = None if peak is None else (peak - self._base) / 1024


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Case:
    key: str
    fn: Callable[[], None]
    repeats: int = 3  # timed calls after the warm-up
    warmup: bool = True  # False: the first call is also the (only) timed one
    flops: bool = False


@dataclass
class Measurement:
    times: list[float] = field(default_factory=list)
    first_s: float | None = None
    peak_mib: float | None = None
    flops: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "times_s": self.times,
            "first_s": self.first_s,
            "peak_mib": self.peak_mib,
            "flops": self.flops,
        }


def measure(
    cases: list[Case], device: torch.device, log: Callable[[str], None] = print
) -> dict[str, Measurement]:
    """Time the cases interleaved: a first call each (peak memory, FLOPs), then rounds of one call each."""
    out: dict[str, Measurement] = {}
    for case in cases:
        m = out[case.key] = Measurement()
        with PeakMemory(device) as mem:
            _sync(device)
            start = time.perf_counter()
            case.fn()
            _sync(device)
            m.first_s = time.perf_counter() - start
        m.peak_mib = mem.mib
        if not case.warmup:
            m.times.append(m.first_s)
        if case.flops:
            m.flops = count_flops(case.fn)
        log(f"  {case.key}: first {m.first_s:.2f}s, peak {_fmt_mib(m.peak_mib)}")
    rounds = max((c.repeats - (0 if c.warmup else 1) for c in cases), default=0)
    for r in range(rounds):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]  # rotate: no case always runs first
        for case in order:
            m = out[case.key]
            if len(m.times) >= case.repeats:
                continue
            _sync(device)
            start = time.perf_counter()
            case.fn()
            _sync(device)
            m.times.append(time.perf_counter() - start)
        log(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{c.key} {out[c.key].times[-1]:.2f}s" for c in order if out[c.key].times)
        )
    return out


def _fmt_mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} MiB"


# ------------------------------------------------------------------------------------------------
# Profiler table by module
# ------------------------------------------------------------------------------------------------

_BACKWARD = "autograd::engine::evaluate_function: "
_OPTIMIZER = "optimizer: AdamW step, zero_grad, gradient accumulation"
_UNLABELLED = "loss, prompt-insertion hooks, glue (no module)"


def module_labels(model: STOPVideoModel) -> list[tuple[nn.Module, str]]:
    """Modules whose forward (and, through autograd's sequence numbers, backward) is reported as one row."""
    parts = model.parts
    labels: list[tuple[nn.Module, str]] = [
        (model.clip.vision_model, "CLIP vision: embeddings, pre/post LN, hooks' slot/global insertion"),
        (parts.embeddings, "CLIP patch embedding (+ spatial prompt conv)"),
    ]
    for layer in parts.layers:
        labels += [
            (layer, "CLIP vision layers: LayerNorms, residuals"),
            (layer.self_attn, "CLIP vision attention (+ global prompts)"),
            (layer.mlp, "CLIP vision MLP"),
        ]
    labels.append((model.clip.text_model, "CLIP text tower (class prompts)"))
    if model.spatial is not None:
        kind = type(model.spatial.generator).__name__
        labels += [
            (model.spatial, "spatial prompts: top-k mask, delta"),
            (model.spatial.generator, f"spatial generator ({kind})"),
            (model.spatial.scorer, "spatial scorer (no grad)"),
        ]
    if model.temporal is not None:
        labels += [
            (model.temporal, "temporal prompts: frame variation, insertion"),
            (model.temporal.generator, "temporal generator: (T, N, D) conv, patch MLP"),
            (model.temporal.generator.attn, "temporal generator: attention over T*N tokens"),
        ]
    if model.vision_adapters is not None:
        labels += [(a, "adapters") for a in model.vision_adapters]
    if model.text_encoder is not None and model.text_encoder.adapters is not None:
        labels += [(a, "adapters") for a in model.text_encoder.adapters]
    if model.shared_space is not None:
        labels.append((model.shared_space, "shared latent space"))
    labels.append((model.aggregator, "aggregation (MSA block, head)"))
    return labels


@contextlib.contextmanager
def _record_modules(labels: list[tuple[nn.Module, str]]):
    from torch.autograd.profiler import record_function

    handles, stack = [], []

    def enter(name):
        def hook(module, args):
            rf = record_function(name)
            rf.__enter__()
            stack.append(rf)

        return hook

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    for module, name in labels:
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def module_profile(
    model: STOPVideoModel, fn: Callable[[], None], device: torch.device | None = None
) -> dict[str, Any]:
    """Self time by module label, forward and backward (backward ops are matched to the forward op
    that created them by autograd sequence number): CPU time, or GPU kernel time on a GPU.
    Runs ``fn`` once under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device is not None and device.type == "cuda"
    self_time = (lambda e: e.self_device_time_total) if gpu else (lambda e: e.self_cpu_time_total)
    total_time = (lambda e: e.device_time_total) if gpu else (lambda e: e.cpu_time_total)
    labels = module_labels(model)
    names = {name for _, name in labels}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with _record_modules(labels), profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        _sync(device or torch.device("cpu"))
        wall = time.perf_counter() - start
    events = [
        e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU
    ]  # kernels are counted on their ops

    def ancestors(ev):
        p = ev.cpu_parent
        while p is not None:
            yield p
            p = p.cpu_parent

    def in_backward(ev) -> bool:
        return ev.name.startswith(_BACKWARD) or any(a.name.startswith(_BACKWARD) for a in ancestors(ev))

    def label_of(ev) -> str:
        if ev.name in names:
            return ev.name
        for a in ancestors(ev):
            if a.name in names:
                return a.name
            if a.name.startswith("Optimizer."):
                return _OPTIMIZER
        return _OPTIMIZER if ev.name.startswith("Optimizer.") else _UNLABELLED

    forward: dict[str, float] = defaultdict(float)
    backward: dict[str, float] = defaultdict(float)
    seq_label: dict[int, str] = {}
    for ev in events:
        if in_backward(ev):
            continue
        label = label_of(ev)
        forward[label] += self_time(ev)
        if ev.sequence_nr >= 0 and ev.name not in names:
            seq_label.setdefault(ev.sequence_nr, label)
    for ev in events:
        if ev.name.startswith(_BACKWARD) and not any(a.name.startswith(_BACKWARD) for a in ancestors(ev)):
            label = _OPTIMIZER if "AccumulateGrad" in ev.name else seq_label.get(ev.sequence_nr, _UNLABELLED)
            backward[label] += total_time(ev)
    rows = []
    total = sum(forward.values()) + sum(backward.values())
    for label in set(forward) | set(backward):
        f, b = forward.get(label, 0.0) / 1e3, backward.get(label, 0.0) / 1e3  # us -> ms
        rows.append(
            {
                "module": label,
                "forward_ms": f,
                "backward_ms": b,
                "total_ms": f + b,
                "share": (f + b) / (total / 1e3) if total else 0.0,
            }
        )
    rows.sort(key=lambda r: -r["total_ms"])
    top_ops = [
        {"op": e.key, "self_ms": self_time(e) / 1e3, "calls": e.count}
        for e in sorted(prof.key_averages(), key=lambda e: -self_time(e))
        if not e.key.startswith(_BACKWARD)
        and e.key not in names
        and not e.key.startswith(("Optimizer.", "ProfilerStep"))
    ][:12]
    return {
        "rows": rows,
        "top_ops": top_ops,
        "profiled_wall_s": wall,
        "total_ms": total / 1e3,
        "clock": "GPU kernels" if gpu else "CPU",
    }
