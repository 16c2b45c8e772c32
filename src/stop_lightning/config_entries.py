"""Callbacks and loggers named in the config, LightningCLI-style.

Each entry of the ``callbacks`` and ``loggers`` sections is ``name: {class_path, init_args,
enabled}``; experiments add one under a new name and remove one by ``<section>.<name>.enabled=false``::

    callbacks:
      early_stopping:
        class_path: lightning.pytorch.callbacks.EarlyStopping
        init_args: {monitor: val/top1, mode: max, patience: 3}
    loggers:
      tensorboard: {class_path: lightning.pytorch.loggers.TensorBoardLogger}

:func:`check_components` runs when the config is loaded, before any run folder exists: an
unimportable module, an unknown class, a class of the wrong kind, an optional package that is not
installed, an unknown or a missing init argument each end in one line naming the key.
An argument named in ``RUN_DIR_ARGS`` that the entry leaves out is set to the run folder.
:func:`build_components` then makes each object with Lightning's ``instantiate_class``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stop_lightning.schema import ConfigError

SECTIONS = {  # config section -> the class every entry must derive from
    "callbacks": "lightning.pytorch.callbacks.Callback",
    "loggers": "lightning.pytorch.loggers.Logger",
}
RUN_DIR_ARGS = ("save_dir", "dirpath")  # filled with the run folder when an entry does not set them
OPTIONAL_PACKAGES = {  # class name -> (packages that provide it, any one will do)
    "TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "MLFlowLogger": ("mlflow",),
}


def _import(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def resolve_class(key: str, class_path: str, base: type) -> type:
    """The class ``class_path`` names, checked to derive from ``base``; ``key`` names the entry in errors."""
    module_name, _, name = class_path.rpartition(".")
    where = f"config key '{key}.class_path' = {class_path!r}"
    if not module_name:
        raise ConfigError(f"{where} is not a dotted path such as lightning.pytorch.callbacks.EarlyStopping")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import module '{module_name}' ({err})") from err
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        close = difflib.get_close_matches(name, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f" Did you mean {module_name}.{close[0]}?" if close else ""
        raise ConfigError(f"{where}: module '{module_name}' has no class '{name}'.{hint}")
    if not issubclass(cls, base):
        raise ConfigError(f"{where} is not a {base.__module__}.{base.__name__}")
    packages = OPTIONAL_PACKAGES.get(cls.__name__, ())
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        raise ConfigError(f"{where} needs the package '{packages[0]}': pip install {packages[0]}")
    return cls


def component_args(
    cls: type, init_args: dict[str, Any], run_dir: str | Path, fill: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``init_args`` plus the run folder for the ``RUN_DIR_ARGS`` that ``cls`` takes and the entry omits,
    and likewise each argument of ``fill`` (e.g. the run's name)."""
    params = inspect.signature(cls).parameters
    defaults = {**{a: str(run_dir) for a in RUN_DIR_ARGS}, **(fill or {})}
    filled = {a: v for a, v in defaults.items() if a in params and a not in init_args}
    return {**filled, **init_args}


def check_init_args(key: str, cls: type, init_args: dict[str, Any]) -> None:
    """Bind the arguments to ``cls``'s signature: an unknown or missing one names itself."""
    signature = inspect.signature(cls)
    args = component_args(cls, init_args, "<run folder>")
    try:
        signature.bind(**args)
    except TypeError as err:
        names = [
            n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unknown = [a for a in args if a not in names]
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"config key '{key}.init_args.{unknown[0]}': {cls.__name__} has no argument "
                f"'{unknown[0]}'.{hint} "
                f"Its arguments: {', '.join(names)}"
            ) from err
        raise ConfigError(f"config key '{key}.init_args': {cls.__name__}: {err}") from err


def _entries(cfg: DictConfig, section: str) -> list[tuple[str, dict[str, Any]]]:
    entries = OmegaConf.to_container(cfg[section], resolve=True) if section in cfg else {}
    return [(f"{section}.{name}", spec) for name, spec in entries.items() if spec.get("enabled", True)]


def check_components(cfg: DictConfig) -> None:
    """Every enabled callback and logger entry resolves and accepts its arguments (nothing is built)."""
    for section, base_path in SECTIONS.items():
        base = _import(base_path)
        for key, spec in _entries(cfg, section):
            check_init_args(key, resolve_class(key, spec["class_path"], base), spec.get("init_args") or {})


def build_components(
    cfg: DictConfig, section: str, run_dir: str | Path, fill: dict[str, Any] | None = None
) -> list[Any]:
    """The enabled entries of ``cfg.<section>`` as objects, in config order, made by Lightning's
    ``instantiate_class`` once :func:`resolve_class` has checked them; ``fill``: arguments given to
    the classes that take them when an entry leaves them out (:func:`component_args`)."""
    from lightning.pytorch.cli import instantiate_class  # here: loading a config never imports it

    base = _import(SECTIONS[section])
    out = []
    for key, spec in _entries(cfg, section):
        cls = resolve_class(key, spec["class_path"], base)
        init_args = component_args(cls, spec.get("init_args") or {}, run_dir, fill)
        out.append(instantiate_class((), {"class_path": spec["class_path"], "init_args": init_args}))
    return out
