"""The closed sets of values of the model's config keys, each spelled once.

The schema (``schema.py``) builds its ``CHOICES`` table from these constants and the model modules
dispatch on the same names (and check them with :func:`check_choice` when built without a validated
config, e.g. in tests). They live here, on the ground floor beside the schema and importing nothing,
rather than in the modules that use them: the schema is loaded by the CLI before any model code, and
the model modules (which import torch and transformers) stand above it.
"""

from __future__ import annotations

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")  # model.clip.attn_implementation

# model.spatial
GENERATORS = ("fast", "reference")  # generator
SCORERS = ("attention", "reference")  # scorer
SCORE_POOLINGS = ("patch", "lattice")  # score_pooling: scores into the g x g cells
MASK_THRESHOLDS = ("topk", "strict")  # threshold: exactly k cells | cells strictly above the (k+1)-th score
MASK_LAYOUTS = ("block", "lattice")  # mask_layout: cell mask back to pixels

# model.temporal
VARIATIONS = ("similarity", "reference")  # variation
NORMALIZE = ("video", "batch")  # normalize
INSERTIONS = ("soft", "hard")  # insertion
CONV_IMPLS = ("fft", "direct")  # conv_impl
OUT_CONVS = ("pointwise", "full")  # out_conv: the generator's second volume conv

GLOBAL_PER_LAYER = ("add", "replace")  # model.global_prompts.per_layer
SHARED_LATENT = ("none", "linear", "transformer")  # model.shared_latent
OUTPUTS = ("global_prompt0", "global_mean", "mean_cls", "global_and_cls")  # model.aggregation.output

# trainer.compile: false (eager) or one of torch.compile's modes (models/compile.py).
# trainer.compile_backend: inductor generates kernels; aot_eager / eager only trace (for the tests and
# for telling an inductor fault from a tracing one).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")

# Config key -> its choices, merged into config.CHOICES.
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "model.clip.attn_implementation": ATTN_IMPLEMENTATIONS,
    "model.spatial.generator": GENERATORS,
    "model.spatial.scorer": SCORERS,
    "model.spatial.score_pooling": SCORE_POOLINGS,
    "model.spatial.threshold": MASK_THRESHOLDS,
    "model.spatial.mask_layout": MASK_LAYOUTS,
    "model.temporal.variation": VARIATIONS,
    "model.temporal.normalize": NORMALIZE,
    "model.temporal.insertion": INSERTIONS,
    "model.temporal.conv_impl": CONV_IMPLS,
    "model.temporal.out_conv": OUT_CONVS,
    "model.global_prompts.per_layer": GLOBAL_PER_LAYER,
    "model.shared_latent": SHARED_LATENT,
    "model.aggregation.output": OUTPUTS,
}


def check_choice(key: str, value: str) -> str:
    """``value`` if it is one of ``key``'s choices, else a ValueError naming the key and the choices."""
    choices = MODEL_CHOICES[key]
    if value not in choices:
        raise ValueError(f"{key} = {value!r} is not one of: {', '.join(choices)}")
    return value
