"""The protocols' class and clip draws: base/novel halves of the classes, K-shot training lists.

Beside ``class_lists.py`` (which reads the published class-list files these draws can take instead):
the DataModules call these, and what they drew is written with the run (``write_protocol_files``).
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

from ..schema import ConfigError
from .class_lists import class_ids, read_class_list
from .manifest import ClipRecord, read_manifest, write_manifest

log = logging.getLogger(__name__)


def base_novel_split(
    class_names: list[str], rule: str = "alphabetical", seed: int = 0
) -> tuple[list[int], list[int]]:
    """(base ids, novel ids), each in class-list order. ``rule`` (``data.class_split``): alphabetical,
    the first ceil(n/2) names in sorted order are base; seeded, ceil(n/2) classes drawn with ``seed``;
    otherwise a class-list file of the base classes (data/class_lists.py), the rest being novel."""
    n_base = math.ceil(len(class_names) / 2)
    if rule == "alphabetical":
        base = sorted(range(len(class_names)), key=lambda i: class_names[i])[:n_base]
    elif rule == "seeded":
        base = random.Random(seed).sample(range(len(class_names)), n_base)
    elif Path(rule).suffix in (".csv", ".txt"):
        base = class_ids(read_class_list(rule), class_names, rule)
    else:
        raise ConfigError(
            f"data.class_split={rule!r} is not alphabetical, seeded or a class-list file "
            "(.csv or .txt) of the base classes"
        )
    return sorted(base), sorted(set(range(len(class_names))) - set(base))


def few_shot_records(
    records: list[ClipRecord],
    shots: int,
    seed: int,
    train_path: Path,
    class_names: list[str],
    tag: str = "train",
) -> list[ClipRecord]:
    """K clips per class drawn with ``seed``; kept as ``<tag>_fewshot_k<K>_seed<S>.jsonl`` next to the
    training manifest. An existing file of that name is used as is (e.g. a published few-shot list)."""
    out_path = train_path.with_name(f"{tag}_fewshot_k{shots}_seed{seed}.jsonl")
    if out_path.is_file():
        return read_manifest(out_path)
    by_class: dict[int, list[ClipRecord]] = {}
    for r in sorted(records, key=lambda r: r.path):
        by_class.setdefault(int(r.label), []).append(r)  # type: ignore[arg-type]
    rng = random.Random(seed)
    chosen: list[ClipRecord] = []
    for label in sorted(by_class):
        pool = by_class[label]
        if len(pool) < shots:
            raise ConfigError(
                f"data.shots={shots} but class {class_names[label]!r} has only {len(pool)} "
                f"training clips in {train_path}"
            )
        chosen.extend(rng.sample(pool, shots))
    try:
        write_manifest(out_path, chosen)
        log.info("few-shot training list (%d per class, seed %d) written to %s", shots, seed, out_path)
    except OSError as err:  # a read-only manifest folder: the list is still reproducible from the seed
        log.info("could not write %s (%s); the list is reproducible from data.protocol_seed", out_path, err)
    return chosen
