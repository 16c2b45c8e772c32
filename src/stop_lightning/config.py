"""Composition and validation: base + preset + experiment + overrides, checked against the schema.

A run's config is composed, in this order, from:

1. ``experiments/base.yaml``                shared defaults (every key of the schema)
2. ``experiments/presets/<model.preset>.yaml``  a named model (``stop``, ``dgl``, ...)
3. ``experiments/<name>.yaml``              the experiment (after the ones it ``extends``)
4. command-line dotlist overrides            ``trainer.max_epochs=3 model.spatial.alpha=0.1``

and merged onto the structured schema (``schema.py``), so an unknown key, a wrong type or a missing
required value fails before any work, with the key, the file it came from and the valid choices.
The names the registries hold (``data.dataset``, ``task.name``, ``model.preset``) are checked here;
the registries themselves import only the schema.
"""

from __future__ import annotations

import difflib
import io
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    ConfigTypeError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from stop_lightning.choices import COMPILE_MODES
from stop_lightning.config_entries import check_components
from stop_lightning.data.registry import dataset_names, get_dataset
from stop_lightning.reading import first_line, problem, read_text
from stop_lightning.schema import (
    CHOICES,
    EXPERIMENTS_DIR,
    RANGES,
    TAG_LENGTH,
    ConfigError,
    ExperimentConfig,
    project_root,
    rooted_paths,
)
from stop_lightning.tasks.registry import task_names


def did_you_mean(value: Any, choices: tuple[str, ...]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices``, or nothing when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def available_presets(exp_dir: Path = EXPERIMENTS_DIR) -> tuple[str, ...]:
    """The presets are the files ``experiments/presets/<name>.yaml``: adding one is adding a file."""
    return tuple(sorted(p.stem for p in (exp_dir / "presets").glob("*.yaml")))


def registered_choices() -> dict[str, tuple[str, ...]]:
    """Choices that come from the registries and the preset files."""
    return {"data.dataset": dataset_names(), "task.name": task_names(), "model.preset": available_presets()}


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


def available_experiments(exp_dir: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in exp_dir.glob("*.yaml") if p.stem != "base")


def read_yaml(path: str | Path, error: type[Exception], todo: str) -> DictConfig:
    """The mapping in a YAML file (an experiment, a preset, a run's ``config.yaml``, an export's, a
    sweep); an empty, unreadable or non-YAML file, or one whose top level is not a mapping, ends in
    ``error`` with one line naming it (:mod:`stop_lightning.reading`)."""
    text = read_text(path, "YAML config", error, todo)
    try:
        cfg = OmegaConf.load(io.StringIO(text))
    except Exception as err:  # yaml's parser and OmegaConf's checks both
        raise error(problem(path, f"cannot parse YAML ({first_line(err)})", todo)) from err
    if not isinstance(cfg, DictConfig):
        held = "a list" if isinstance(cfg, ListConfig) else f"a {type(cfg).__name__}"
        raise error(problem(path, f"holds {held} at the top level, not a mapping of config keys", todo))
    return cfg


def _load_yaml(path: Path) -> DictConfig:
    return read_yaml(path, ConfigError, "write it as `key: value` lines, as in experiments/base.yaml")


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
                f"config key '{key}' = {value!r} in {origin} is not one of: {', '.join(choices)}."
                f"{did_you_mean(value, choices)}"
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


LIMIT_KEYS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches")
_MAX_TIME = re.compile(r"\d{1,2}:\d{2}:\d{2}:\d{2}")


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
    if not (isinstance(t.fast_dev_run, bool) or (isinstance(t.fast_dev_run, int) and t.fast_dev_run >= 0)):
        raise ConfigError(
            f"config key 'trainer.fast_dev_run' = {t.fast_dev_run!r}: give true (one batch of each stage), "
            "false, or a number of batches (int >= 0)"
        )
    if t.max_time and not _MAX_TIME.fullmatch(str(t.max_time)):
        raise ConfigError(
            f"config key 'trainer.max_time' = {t.max_time!r}: give DD:HH:MM:SS (e.g. 00:03:50:00 for a "
            "4-hour slot less 10 minutes), or leave it empty for no limit"
        )
    if t.compile is not False and t.compile not in COMPILE_MODES:
        raise ConfigError(
            f"config key 'trainer.compile' = {t.compile!r}: give false (eager) or one of: "
            f"{', '.join(COMPILE_MODES)}.{did_you_mean(t.compile, COMPILE_MODES)}"
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


def check_init_from(source: str) -> None:
    """``model.init_from`` names a file or folder that is there (what it holds is read at the start).
    Checked where a new run starts, not when a config is composed: a resumed run has its own weights
    and must resume even when the source has gone since (a scratch folder cleaned, a run moved)."""
    if source and not Path(source).exists():
        raise ConfigError(
            f"config key 'model.init_from' = {source!r}: no such file or folder; give a .ckpt written by "
            "`stop-lightning train` or a folder written by `stop-lightning export`, or leave it empty"
        )


def _check_logger(logger: DictConfig) -> None:
    """Tags W&B would refuse only once the run has started (``wandb.init`` fails), named now."""
    low, high = TAG_LENGTH
    for i, tag in enumerate(logger.tags):
        if not low <= len(str(tag)) <= high:
            raise ConfigError(
                f"config key 'logger.tags[{i}]' = {str(tag)!r} has {len(str(tag))} characters: W&B takes "
                f"tags of {low} to {high} characters; shorten it or drop it"
            )


def _is_device_id(item: Any, count: int) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, str):
        if not item.lstrip("-").isdigit():
            return False
        item = int(item)
    return isinstance(item, int) and (item >= 0 or (item == -1 and count == 1))


EXTENDS = "extends"  # an experiment file's key: the experiment it starts from


def experiment_path(experiment: str | Path, exp_dir: Path) -> Path:
    """``experiments/<name>.yaml``, or ``experiment`` itself when it is a YAML path; one line naming the
    closest experiment when there is none."""
    exp_path = Path(experiment)
    if exp_path.suffix not in (".yaml", ".yml"):
        exp_path = exp_dir / f"{experiment}.yaml"
    if not exp_path.exists():  # a folder or an unreadable file is told by read_yaml
        names = available_experiments(exp_dir)
        close = difflib.get_close_matches(str(experiment), names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"no experiment '{experiment}' ({exp_path} does not exist).{hint} Available: {', '.join(names)}"
        )
    return exp_path


def experiment_chain(exp_path: Path, exp_dir: Path) -> list[tuple[Path, DictConfig]]:
    """The experiment file and the ones it ``extends`` (a name in ``exp_dir`` or a path relative to the
    file), the farthest parent first, each without its ``extends`` key. A circle is one clear error."""
    chain: list[tuple[Path, DictConfig]] = []
    path: Path | None = exp_path
    while path is not None:
        if any(path.resolve() == seen.resolve() for seen, _ in chain):
            names = " -> ".join(p.name for p, _ in [*chain, (path, None)])
            raise ConfigError(f"experiments extend each other in a circle: {names}")
        layer = _load_yaml(path)
        parent = layer.pop(EXTENDS, None) if EXTENDS in layer else None
        chain.append((path, layer))
        if parent is None:
            path = None
        elif not isinstance(parent, str) or not parent:
            raise ConfigError(
                f"{path}: '{EXTENDS}' must name one experiment (e.g. extends: demo), got {parent!r}"
            )
        else:
            relative = path.parent / parent
            path = relative if relative.suffix in (".yaml", ".yml") and relative.is_file() else None
            path = path or experiment_path(parent, exp_dir)
    # The name of a child that sets none is its own file's, not its parent's.
    child_path, child = chain[0]
    if "name" not in child:
        child.name = child_path.stem
    return list(reversed(chain))


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
    exp_path = experiment_path(experiment, exp_dir)

    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"command-line override '{item}' is not of the form key=value (e.g. trainer.max_epochs=3)"
            )
    cli = OmegaConf.from_dotlist(overrides)
    chain = experiment_chain(exp_path, exp_dir)  # [(path, layer)], the farthest parent first
    exp_path, exp = chain[-1]

    cfg = OmegaConf.structured(ExperimentConfig)
    base_path = exp_dir / "base.yaml"
    if base_path.is_file():
        cfg = _merge_checked(cfg, _load_yaml(base_path), str(base_path))

    # The preset is chosen by the override, else the experiment, else the base.
    from_files = [OmegaConf.select(layer, "model.preset") for _, layer in reversed(chain)]
    preset = (
        OmegaConf.select(cli, "model.preset") or next((p for p in from_files if p), None) or cfg.model.preset
    )
    presets = available_presets(exp_dir) or available_presets()  # a folder of experiments without presets/
    if preset not in presets:
        origin = "command-line overrides" if OmegaConf.select(cli, "model.preset") else str(exp_path)
        raise ConfigError(
            f"config key 'model.preset' = {preset!r} in {origin} is not one of: {', '.join(presets)}."
            f"{did_you_mean(preset, presets)}"
        )
    preset_path = exp_dir / "presets" / f"{preset}.yaml"
    if preset_path.is_file():
        cfg = _merge_checked(cfg, _load_yaml(preset_path), str(preset_path))

    for path, layer in chain:
        cfg = _merge_checked(cfg, layer, str(path))
    cfg = _merge_checked(cfg, cli, "command-line overrides")
    try:
        rooted_paths(cfg, project_root(exp_dir))  # folders: absolute, whatever the current directory
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
    if not cfg.task.templates:  # the dataset's own prompt templates (data/registry.py)
        cfg.task.templates = list(get_dataset(cfg.data.dataset).templates)
    _check_trainer(cfg.trainer)
    _check_logger(cfg.logger)
    check_components(cfg)  # imports the named classes' modules: only once composed
    OmegaConf.set_readonly(cfg, True)
    return cfg
