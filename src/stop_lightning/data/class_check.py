"""``stop-lightning manifest check-classes``: is a class-list file the one a protocol expects?

A published class list (ViFi-CLIP's base and novel halves, the Kinetics-600 novel classes, a
zero-shot subset) is checked against the manifests it will be used with, before any run reads it:
every name is a class of the manifests' ``classes.txt`` (matched as ``data.class_split`` and
``data.class_subset`` match them, :func:`class_lists.class_ids`), the file lists the published
number of classes (``--count``), and none of its classes is in another list (``--disjoint-from``: the
other half of a base/novel split, or Kinetics-400's ``classes.txt`` for the K600 novel classes).
Any failure is one line naming the file and what differs (exit 2); a pass prints one line (exit 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .class_lists import class_ids, read_class_list
from .manifest import CLASSES_FILE, ManifestError, read_classes, readable_class_name

COMMAND = "check-classes"  # the word after `stop-lightning manifest`


def check_class_list(
    path: str | Path, manifests: str | Path, count: int | None = None, disjoint_from: str | Path | None = None
) -> str:
    """Check the class-list file ``path`` against ``<manifests>/classes.txt``; returns the line to print."""
    listed = read_class_list(path)
    classes_file = Path(manifests) / CLASSES_FILE
    class_ids(listed, read_classes(classes_file), path)  # raises on a name that is not a class
    if count is not None and len(listed) != count:
        raise ManifestError(
            f"{path}: lists {len(listed)} classes, the published list has {count} (--count); "
            "is it the complete file of the release the guide names?"
        )
    said = [f"{path}: {len(listed)} classes, each a class of {classes_file}"]
    if disjoint_from is not None:
        other = {readable_class_name(name) for name in read_class_list(disjoint_from)}
        shared = [name for name in listed if readable_class_name(name) in other]
        if shared:
            raise ManifestError(
                f"{path}: {len(shared)} of its classes are also in {disjoint_from} (--disjoint-from): "
                f"{', '.join(repr(n) for n in shared[:5])}{' ...' if len(shared) > 5 else ''}; "
                "the two lists must not share a class"
            )
        said.append(f"none in {disjoint_from}")
    return ", ".join(said)


def main(argv: list[str]) -> int:
    """``stop-lightning manifest check-classes LIST --manifests DIR [--count N] [--disjoint-from OTHER]``."""
    parser = argparse.ArgumentParser(
        prog=f"stop-lightning manifest {COMMAND}",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("class_list", type=Path, help="the class-list file ('id,name' csv, or a name a line)")
    parser.add_argument(
        "--manifests",
        required=True,
        type=Path,
        help=f"the manifest folder whose {CLASSES_FILE} the list must match, e.g. data_manifests/k600",
    )
    parser.add_argument("--count", type=int, default=None, help="the number of classes the list must hold")
    parser.add_argument(
        "--disjoint-from",
        type=Path,
        default=None,
        help="a class-list file or classes.txt that must share no class with the list",
    )
    args = parser.parse_args(argv)
    print(check_class_list(args.class_list, args.manifests, args.count, args.disjoint_from))
    return 0
