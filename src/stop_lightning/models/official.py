"""Load the authors' released prompt-module weights into a ``stop_official`` model.

The authors' prompt module (class ``TemporalPrompt_3`` in ``modules/temporal_prompting.py`` of their
public repository; Liu et al., CVPR 2025, arXiv 2503.15973) names its parameters ``Conv.*``,
``MLP.*``, ``Cal_Net.*``, ``Attention.*``, ``InterConv.*``, ``InterMLP.*`` and ``Cal_Net_Inter.*``.
Inside their checkpoints these names carry a prefix (where the module sits in their model); the
prefix is ignored here. :data:`OFFICIAL_MODULES` maps each to the module of
:class:`~stop_lightning.models.video_encoder.STOPVideoModel` built with ``model.preset=stop_official``
(docs/fidelity.md explains each). Everything else in such a checkpoint (CLIP, DGL prompts,
adapters, the shared latent space) is reported as unplaced, with the reason.

    report = load_official_prompt_weights(model, torch.load(path, weights_only=True))
    print(report.summary())

A prompt-module key that finds no place, a wrong shape or a prompt-module parameter left without a
value stops the load with one line naming them all (:class:`OfficialWeightsError`);
``partial=True`` loads what fits and reports the rest.

or, to see which keys of a checkpoint would be placed, without building a model:
``python -m stop_lightning.models.official CHECKPOINT``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stop_lightning.errors import UserError
from stop_lightning.reading import check_file, first_line, problem

# The authors' module name (``Sequential`` index included) -> the stop_official module.
# Their spatial ``Conv`` is conv, conv, PReLU, conv, PReLU, conv; ours keeps an Identity where
# ``stop`` has its first PReLU (model.spatial.first_activation=false), so indices shift by one.
OFFICIAL_MODULES: dict[str, str] = {
    "Conv.0": "spatial.generator.convs.0",
    "Conv.1": "spatial.generator.convs.2",
    "Conv.2": "spatial.generator.convs.3",
    "Conv.3": "spatial.generator.convs.4",
    "Conv.4": "spatial.generator.convs.5",
    "Conv.5": "spatial.generator.convs.6",
    "MLP.0": "spatial.generator.mlp.fc1",
    "MLP.1": "spatial.generator.mlp.act",
    "MLP.2": "spatial.generator.mlp.fc2",
    "Cal_Net": "spatial.scorer.conv",
    "Attention": "temporal.generator.attn",
    "InterConv.0": "temporal.generator.conv_in",
    "InterConv.1": "temporal.generator.act",
    "InterConv.2": "temporal.generator.conv_out",
    "InterMLP.0": "temporal.generator.patch_mlp.0",
    "InterMLP.1": "temporal.generator.patch_mlp.1",
    "InterMLP.2": "temporal.generator.patch_mlp.2",
    "Cal_Net_Inter": "temporal.variation.conv",
}
_SEQUENTIAL = {"Conv", "MLP", "InterConv", "InterMLP"}
_SINGLE = {"Cal_Net", "Cal_Net_Inter", "Attention"}


def official_target(key: str) -> str | None:
    """The ``stop_official`` parameter name for one of the authors' keys (any prefix), or None."""
    parts = key.split(".")
    for i in range(len(parts) - 1, -1, -1):  # the last module name of theirs in the key
        name = parts[i]
        if name in _SEQUENTIAL and i + 2 < len(parts):
            module = f"{name}.{parts[i + 1]}"
            rest = parts[i + 2 :]
        elif name in _SINGLE and i + 1 < len(parts):
            module, rest = name, parts[i + 1 :]
        else:
            continue
        return f"{OFFICIAL_MODULES[module]}.{'.'.join(rest)}" if module in OFFICIAL_MODULES else None
    return None


def authors_key(name: str) -> str:
    """The inverse of :func:`official_target`: the authors' key (no prefix) of a ``stop_official``
    parameter name."""
    for theirs, ours in OFFICIAL_MODULES.items():
        if name.startswith(ours + "."):
            return f"{theirs}.{name[len(ours) + 1 :]}"
    return name


@dataclass
class ConversionReport:
    loaded: dict[str, str] = field(default_factory=dict)  # authors' key -> model key
    unplaced: dict[str, str] = field(default_factory=dict)  # authors' key -> why it was not loaded
    missing: list[str] = field(default_factory=list)  # prompt-module parameters the state dict did not give

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors into the prompt modules"]
        lines += [f"  {src} -> {dst}" for src, dst in self.loaded.items()]
        lines.append(f"could not place {len(self.unplaced)} keys")
        lines += [f"  {src}: {why}" for src, why in self.unplaced.items()]
        if self.missing:
            lines.append(f"{len(self.missing)} prompt-module parameters kept their initial values")
            lines += [f"  {k}" for k in self.missing]
        return "\n".join(lines)


class OfficialWeightsError(UserError, ValueError):
    """The authors' prompt weights do not fit the model; the one-line message lists every key."""


def load_official_prompt_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], partial: bool = False
) -> ConversionReport:
    """Copy the authors' prompt-module tensors into ``model`` (a ``stop_official`` STOPVideoModel).

    A key is placed when its name maps (:func:`official_target`) to a parameter of ``model`` with
    the same shape; every other key is listed in ``unplaced`` with the reason. ``missing`` lists the
    mapped parameters of ``model`` the state dict did not give.

    Keys outside the authors' prompt module (CLIP, DGL prompts, adapters) are ignored and listed. Any
    other problem (a prompt-module key with no place in ``model``, a shape that differs, a prompt-module
    parameter the state dict does not give) raises :class:`OfficialWeightsError` naming every such key,
    and nothing is copied, unless ``partial=True`` asks for whatever fits to be loaded.
    """
    own = dict(model.named_parameters())
    report = ConversionReport()
    problems: list[str] = []
    placed: dict[str, str] = {}
    for key, tensor in state_dict.items():
        target = official_target(key)
        if target is None:
            report.unplaced[key] = "not a parameter of the authors' prompt module (TemporalPrompt_3)"
        elif target not in own:
            report.unplaced[key] = f"the model has no {target}; build it with model.preset=stop_official"
            problems.append(f"{key} (the model has no {target})")
        elif tuple(own[target].shape) != tuple(tensor.shape):
            theirs, ours = tuple(tensor.shape), tuple(own[target].shape)
            report.unplaced[key] = (
                f"shape {theirs}, the model's {target} is {ours} "
                "(sizes come from the CLIP config: use the CLIP the weights were trained with)"
            )
            problems.append(f"{key} (shape {theirs}, the model's {target} is {ours})")
        else:
            placed[key] = target
    prefixes = tuple(v + "." for v in OFFICIAL_MODULES.values())
    report.missing = [k for k in own if k.startswith(prefixes) and k not in set(placed.values())]
    problems += [f"{k} (not given: the authors' {authors_key(k)})" for k in report.missing]
    if problems and not partial:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        raise OfficialWeightsError(
            f"the authors' prompt weights do not fit this model ({count}): "
            + "; ".join(problems)
            + ". Build the model with model.preset=stop_official on the CLIP the weights were trained "
            "with, or pass partial=True to load only what fits"
        )
    with torch.no_grad():
        for key, target in placed.items():
            own[target].copy_(state_dict[key].to(own[target].dtype))
    report.loaded = placed
    return report


def official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The inverse: ``model``'s prompt-module tensors under the authors' key names (no prefix)."""
    prefixes = tuple(v + "." for v in OFFICIAL_MODULES.values())
    own = dict(model.named_parameters())
    return {authors_key(n): t.detach().clone() for n, t in own.items() if n.startswith(prefixes)}


def read_official_checkpoint(path: Path) -> dict[str, Any]:
    """The state dict of one of the authors' checkpoints (``weights_only=True``); a missing, empty,
    cut-short or foreign file is one line naming it (:mod:`stop_lightning.reading`)."""
    todo = "download the authors' checkpoint again"
    check_file(path, "checkpoint", OfficialWeightsError, todo)
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle would add lines to the error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = first_line(err).split(". ")[0]  # torch's first sentence; the rest is advice for torch users
        raise OfficialWeightsError(problem(path, f"not a loadable PyTorch file ({reason})", todo)) from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise OfficialWeightsError(problem(path, f"holds a {type(state).__name__}, not a state dict", todo))
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="List which keys of an authors' checkpoint map to stop_official."
    )
    parser.add_argument("checkpoint", type=Path)
    args = parser.parse_args(argv)
    try:
        state = read_official_checkpoint(args.checkpoint)
    except OfficialWeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key in state:
        print(f"{key} -> {official_target(key) or 'unplaced'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
