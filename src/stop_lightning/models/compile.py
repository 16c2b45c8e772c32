"""``trainer.compile``: ``torch.compile`` of the video model's step, its hooks included, in place.

:meth:`STOPVideoModel.forward` and :meth:`PromptedTextEncoder.forward` check their inputs' shapes
and do the work outside the graph (the padded-frame choice, the captions' end-of-text positions and
layout) eagerly, then call a tensor-only core, ``_encode``, that runs the frozen CLIP with every
prompt hook. Only those cores are compiled, each into one graph (``fullgraph=True``): a part that
would split the graph stops the first step with one line naming it instead of silently running half
eager.

Compiling in place replaces a bound method on the instance, so the modules, their parameters and
their state-dict keys stay as they are (no ``_orig_mod.`` prefix): a compiled run's checkpoints and
exports load into an eager model and back.

The video core marks the batch dimension dynamic, so an uneven last batch reuses the graph instead
of compiling another; the text side keeps PyTorch's automatic dynamic shapes (captions of a new
length compile once more, as dynamic, then never again). Inductor's C++ kernels would still tie a graph to
a range of batch sizes through their float32 sums (:func:`_batch_free_sums`), and PyTorch's convolution
ties it to a batch below or from 16 (README, "Compiling the step"). Inductor runs random ops (dropout)
with eager's kernels, so a compiled step draws the masks an eager one draws from the same seed and gives
its losses and gradients to rounding.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from stop_lightning.choices import COMPILE_BACKENDS, COMPILE_MODES
from stop_lightning.errors import UserError

CORE = "_encode"  # the tensor-only method each compiled module has
CASCADE_CHUNK = 4096  # inductor's C++ kernels sum float32 reductions longer than this in chunks


class CompileError(UserError, RuntimeError):
    """A part of the model that ``torch.compile`` cannot trace into one graph."""


def is_compiled(module: nn.Module) -> bool:
    return CORE in vars(module)


def compile_model(model: nn.Module, mode: str | bool, backend: str = "inductor") -> list[str]:
    """Compile ``model``'s video core and, where the text side trains with prompts, its text core.

    ``mode``: ``False`` / ``"false"`` leaves the model eager; else one of :data:`COMPILE_MODES`.
    Returns the names of the modules compiled (``[]`` when eager). Compilation itself happens at the
    first call; a part that cannot be traced then raises :class:`CompileError`.
    """
    if mode is False or mode == "false":
        return []
    if mode not in COMPILE_MODES or backend not in COMPILE_BACKENDS:
        raise ValueError(
            f"compile mode {mode!r}, backend {backend!r}: "
            f"expected a mode of {COMPILE_MODES} and a backend of {COMPILE_BACKENDS}"
        )
    # name -> (module, its core's arguments with a batch dimension: video, frame mask, padded frames)
    targets = {"video model": (model, (0, 1, 2))}
    text = getattr(model, "text_encoder", None)
    if text is not None and text.prompts_enabled:
        targets["text encoder"] = (text, ())
    for name, (module, batched) in targets.items():
        if not is_compiled(module):
            core = torch.compile(
                getattr(module, CORE),
                fullgraph=True,
                backend=backend,
                options=_inductor_options(mode) if backend == "inductor" else None,  # modes are inductor's
            )
            sums = _batch_free_sums if backend == "inductor" else contextlib.nullcontext
            setattr(module, CORE, _reporting(core, model, name, mode, batched, sums))
    return list(targets)


def _inductor_options(mode: str) -> dict[str, object]:
    """Inductor's settings for ``mode`` (what ``torch.compile(mode=...)`` applies) with its random ops left
    to eager's kernels. Inductor's own generator draws other dropout masks than eager's from the same
    seed, so a compiled training step was not eager's: on the tiny CLIP's ``stop_fast`` in float64 the
    loss 5e-5 apart and gradients 1e-3 of their largest (the spatial generator's dropout). With
    ``fallback_random`` the masks are eager's and the step is eager's to rounding
    (``tests/models/test_compile_inductor.py``)."""
    return {**torch._inductor.list_mode_options(mode), "fallback_random": True}


@contextlib.contextmanager
def _batch_free_sums() -> Iterator[None]:
    """While inductor compiles: its C++ kernels sum a float32 reduction in chunks of :data:`CASCADE_CHUNK`
    (a cascade, eager's precision) whenever the reduction's length is not known to be at most one chunk.

    Inductor chooses the chunked sum for a reduction longer than one chunk and a single running sum
    otherwise, and for a length that grows with the dynamic batch it decides by the batch of the step
    being compiled and guards on it (``CppKernel.need_use_acc_helper``, torch 2.14). Any sum over the batch
    of fewer than 2049 values per clip therefore ties the graph to a range of batch sizes: on the tiny
    CLIP's ``stop_fast`` the scalar PReLUs' weight gradients (1472 and 1024 values per clip) compiled the
    graph for a batch of exactly 2, again for 3 to 4, and again from 5. The helper sizes its chunks
    when the kernel runs, and over one chunk it is the single running sum, so choosing it whenever the
    length is not known to fit one chunk gives every batch the kernel inductor would have compiled for
    that batch, with no guard. The cache key is tagged so that no compilation made without this rule is
    reused. Patches inductor's own method for the duration of a call: PyTorch offers no setting for it;
    where a later PyTorch has no such method, nothing is patched."""
    from torch._inductor.codegen.cpp import CppKernel  # inductor's code generator: only when compiling
    from torch._inductor.virtualized import V

    decide = getattr(CppKernel, "need_use_acc_helper", None)
    if decide is None:
        yield
        return

    def chunked_unless_short(kernel, reduction_type, dtype, use_scalar):
        if reduction_type == "sum" and dtype == torch.float:
            length = math.prod(kernel.call_ranges[kernel.reduction_depth :])
            return not V.graph.sizevars.statically_known_leq(length, CASCADE_CHUNK)
        return decide(kernel, reduction_type, dtype, use_scalar)

    config = torch.compiler.config
    tagged = (  # a PyTorch without the tag caches by its own key: the rule is still applied
        config.patch(cache_key_tag=f"{config.cache_key_tag}|stop_lightning:chunked-sums-unless-short")
        if hasattr(config, "cache_key_tag")
        else contextlib.nullcontext()
    )
    CppKernel.need_use_acc_helper = chunked_unless_short
    try:
        with tagged:
            yield
    finally:
        CppKernel.need_use_acc_helper = decide


def _reporting(
    core: Callable,
    model: nn.Module,
    name: str,
    mode: str,
    batched: tuple[int, ...],
    sums: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Callable:
    """``core`` with its batch dimensions marked dynamic, run under ``sums`` (the code generator's rules,
    :func:`_batch_free_sums`), and a trace failure turned into one line."""

    @functools.wraps(core)
    def run(*args):
        for index in batched:
            if isinstance(args[index], torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(args[index], 0)  # [B, ...]: any batch size, one graph
        try:
            with sums():
                return core(*args)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as err:
            reason = next(
                (line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__
            )
            raise CompileError(
                f"trainer.compile={mode}: the {name} cannot be compiled into one graph at "
                f"{_culprit(err, model)} ({reason}); set trainer.compile=false to train this preset eagerly"
            ) from None

    return run


def _culprit(err: Exception, model: nn.Module) -> str:
    """The innermost frame of the failed trace outside PyTorch, named by the submodule whose forward
    it is when there is one: ``module 'temporal' (TemporalPrompter, temporal.py:88)``."""
    torch_dir = str(Path(torch.__file__).parent)
    frames = [f for f in (getattr(err, "real_stack", None) or []) if not f.filename.startswith(torch_dir)]
    if not frames:
        return "a part PyTorch did not name"
    frame = frames[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno}"
    for path, sub in model.named_modules():
        code = getattr(type(sub).forward, "__code__", None)
        if code is not None and code.co_filename == frame.filename and code.co_name == frame.name:
            lines = range(code.co_firstlineno, max(ln for _, _, ln in code.co_lines() if ln) + 1)
            if frame.lineno in lines:
                return f"module '{path or 'model'}' ({type(sub).__name__}, {where})"
    return f"{where} in {frame.name}"
