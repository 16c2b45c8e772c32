"""``stop-lightning manifest``: a registered dataset, as officially distributed, to JSONL manifests.

The dataset modules (``data/builders/<name>.py``) each register a ``build`` function in the dataset
registry; this module looks the name up and runs it, probing the written manifests when asked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import class_check
from .builders import BuildError, BuildReport, probe_manifests
from .manifest import ManifestError
from .registry import dataset_names, get_dataset


def build_manifests(
    dataset: str,
    root: str | Path,
    annotations: str | Path | None,
    out_dir: str | Path,
    probe: bool = False,
    progress: bool = True,
    drop_unreadable: bool = False,
) -> BuildReport:
    """Read ``dataset`` from ``root`` (+ ``annotations``) and write all splits' manifests to ``out_dir``.

    ``probe`` opens every video to record ``num_frames`` and ``fps`` in the rows (slower) and lists the
    unreadable ones in ``report.probe``; ``drop_unreadable`` also leaves them out (:func:`probe_manifests`).
    """
    choices = dataset_names(buildable=True)
    if dataset not in choices or (build := get_dataset(dataset).build) is None:
        raise BuildError(f"no manifest builder for dataset {dataset!r}; choose one of {', '.join(choices)}")
    root = Path(root)
    if not root.is_dir():
        raise BuildError(f"--root {root} is not a directory (expected the extracted {dataset} videos)")
    ann = Path(annotations) if annotations is not None else None
    if ann is not None and not ann.exists():
        raise BuildError(f"--annotations {ann} does not exist")
    # Probing reads the written manifests (probe_manifests), the same way for every dataset.
    report = build(root=root, annotations=ann, out_dir=Path(out_dir), probe=False, progress=progress)
    if probe:
        report.probe = probe_manifests(report, drop_unreadable, progress)
    return report


def main(argv: list[str] | None = None) -> int:
    """``stop-lightning manifest <dataset> --root R [--annotations A] --out O``, or
    ``stop-lightning manifest check-classes ...`` (:mod:`.class_check`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [class_check.COMMAND]:
        return class_check.main(argv[1:])
    choices = dataset_names(buildable=True)
    parser = argparse.ArgumentParser(
        prog="stop-lightning manifest",
        description="Build JSONL manifests from a dataset laid out as officially distributed.",
        epilog="datasets:\n"
        + "\n".join(f"  {n:<10} {get_dataset(n).description}" for n in choices)
        + f"\n\nstop-lightning manifest {class_check.COMMAND} --help: check a published class-list file "
        "against built manifests",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=choices)
    parser.add_argument(
        "--root", required=True, type=Path, help="folder with the videos (manifest paths are relative to it)"
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="folder with the split/annotation files (default: searched under --root)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. data_manifests/hmdb51")
    parser.add_argument(
        "--probe",
        action="store_true",
        help=(
            "open every video (header and last frame) to record num_frames and fps; "
            "exits 1 if any is unreadable"
        ),
    )
    parser.add_argument(
        "--drop-unreadable",
        action="store_true",
        help=(
            "with --probe: leave unreadable videos out of the manifests and list them in "
            "<out>/dropped_unreadable.txt"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.drop_unreadable and not args.probe:
        parser.error("--drop-unreadable needs --probe (the files are read to find the unreadable ones)")
    try:
        report = build_manifests(
            args.dataset,
            args.root,
            args.annotations,
            args.out,
            probe=args.probe,
            progress=not args.quiet,
            drop_unreadable=args.drop_unreadable,
        )
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    unreadable = report.probe is not None and report.probe.unreadable
    return 1 if unreadable and not args.drop_unreadable else 0
