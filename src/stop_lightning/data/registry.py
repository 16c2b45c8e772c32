"""The dataset registry: every name ``data.dataset`` accepts, with what the framework knows about it.

How to add a dataset
--------------------
Write ONE file, ``src/stop_lightning/data/builders/<name>.py`` (copy ``hmdb51.py`` for a
classification set with official split lists, ``msrvtt.py`` for a captioned retrieval set), plus its
test in ``tests/data/``. The file holds:

1. the official-layout constants (folder and file names of the distribution, as module constants);
2. ``build(root, annotations, out_dir, probe, progress) -> BuildReport``: read the dataset exactly as
   distributed and write the JSONL manifests (helpers in ``builders/__init__.py``);
3. ``write_synthetic(root, clips: SyntheticClips)``: write a tiny dataset in the same layout from the
   synthetic clips it is given (``clips.write(path, c, j)`` encodes clip ``j`` of class ``c``), so the
   builder is tested against the real file formats without downloading anything;
4. ``register_dataset(DatasetSpec(name=..., task=..., build=build, write_synthetic=write_synthetic,
   ...))`` with its properties (``hflip``, ``multi_caption``, ``paragraph``, ``splits``, ``templates``).

Nothing else changes: the config's ``data.dataset`` choices, ``stop-lightning manifest <name>``, the
DataModules' messages and the synthetic test fixtures all read this registry, and
``tests/data/test_registry.py`` builds every registered dataset's synthetic layout.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..schema import ConfigError

if TYPE_CHECKING:
    from .builders import BuildReport

TASKS_ANY = None  # a DatasetSpec.task for a dataset that serves any task (manifest, synthetic)


class SyntheticClips(Protocol):
    """What a dataset's ``write_synthetic`` is given (made by ``data/synthetic.py``)."""

    class_names: list[str]  # words, e.g. "move up left"; index = class id
    clips_per_class: int

    def write(self, path: Path, c: int, j: int) -> Path:
        """Encode clip ``j`` of class ``c`` to ``path`` (``.avi`` or ``.mp4``)."""
        ...

    def captions(self, c: int, j: int) -> list[str]:
        """Sentences describing clip ``j`` of class ``c`` (retrieval layouts)."""
        ...


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its name, the task it serves, how to build its manifests and what it allows."""

    name: str
    task: str | None  # a task of tasks/registry.py; None: any (a manifest folder, synthetic data)
    description: str  # one line, shown by `stop-lightning manifest --help`
    # Official distribution -> manifests; None for datasets without an official layout.
    build: Callable[..., BuildReport] | None = None
    # A tiny copy of the official layout from synthetic clips; None: no synthetic layout.
    write_synthetic: Callable[[Path, SyntheticClips], None] | None = None
    # This layout is the one `data.dataset=synthetic` generates for its task.
    synthetic_default: bool = False
    # Videos and manifests are generated under paths.cache_dir (data.dataset=synthetic).
    generated: bool = False
    # What `--annotations` of `stop-lightning manifest <name>` points at.
    annotations_hint: str = "<folder with the official split files>"
    templates: tuple[str, ...] = ("a video of a person {name}.",)  # class-name prompt templates
    hflip: bool = True  # horizontal flip keeps the label (False: it would change the class)
    multi_caption: bool = False  # a video has several captions (one sampled per training visit)
    paragraph: bool = False  # a video's captions are joined into one paragraph query
    splits: tuple[int, ...] = ()  # official splits (data.split); (): one flat train/val/test

    @property
    def buildable(self) -> bool:
        return self.build is not None


_REGISTRY: dict[str, DatasetSpec] = {}
_discovered = False


class UnknownDatasetError(ConfigError):
    """A dataset name nobody registered; the message lists the registered ones."""


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (a dataset module calls this once, at import)."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"dataset {spec.name!r} is registered twice (by {known.build} and {spec.build})")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> None:
    """Remove a dataset (tests that register one of their own clean up with this)."""
    _REGISTRY.pop(name, None)


def discover() -> None:
    """Import every module of ``data/builders/`` once, so each registers its dataset."""
    global _discovered
    if _discovered:
        return
    from . import builders

    for info in pkgutil.iter_modules(builders.__path__):
        importlib.import_module(f"{builders.__name__}.{info.name}")
    _discovered = True


def dataset_names(buildable: bool = False) -> tuple[str, ...]:
    """Registered names in registration order; ``buildable``: only those with a manifest builder."""
    discover()
    return tuple(name for name, spec in _REGISTRY.items() if spec.buildable or not buildable)


def get_dataset(name: str) -> DatasetSpec:
    discover()
    if name not in _REGISTRY:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def synthetic_layout(task: str) -> DatasetSpec:
    """The dataset whose layout ``data.dataset=synthetic`` generates for ``task``."""
    discover()
    for spec in _REGISTRY.values():
        if spec.synthetic_default and spec.task == task and spec.write_synthetic is not None:
            return spec
    raise UnknownDatasetError(f"no dataset is registered as the synthetic layout for task {task!r}")


# Built-ins without an official layout.
register_dataset(
    DatasetSpec(
        name="manifest",
        task=TASKS_ANY,
        description="any folder of JSONL manifests (data_manifests/README.md)",
    )
)
register_dataset(
    DatasetSpec(
        name="synthetic",
        task=TASKS_ANY,
        description="moving squares generated on the fly under paths.cache_dir",
        generated=True,
        templates=("a square moving {name}.",),
        hflip=False,  # the class is the direction of motion: a flip turns "left" into "right"
    )
)
