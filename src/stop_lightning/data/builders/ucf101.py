"""UCF101: ``root/UCF-101/<Class>/v_*.avi`` and ``ucfTrainTestlist/`` with ``classInd.txt``
("1 ApplyEyeMakeup"), ``trainlist0k.txt`` ("Class/v_X.avi 1") and ``testlist0k.txt`` ("Class/v_X.avi").

Class indices are ``classInd.txt``'s (1-based there, 0-based here). UCF101 has no validation list,
so ``val.jsonl`` is the official test list. Folder, list and file names disagree in letter case for
some classes (``HandstandPushups`` / ``v_HandStandPushups_*``); names are matched case-insensitively.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ..manifest import ClipRecord
from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import BuildError, BuildReport, FileIndex, find_file, finish_recognition, read_text_lines

NAME = "ucf101"  # the registered name: data.dataset, `stop-lightning manifest <name>`
LIST_DIR = "ucfTrainTestlist"  # the extracted split-list archive
VIDEO_DIR = "UCF-101"  # the extracted video archive
CLASS_FILE = "classInd.txt"
SPLITS = (1, 2, 3)


def _list_dir(root: Path, annotations: Path | None) -> Path:
    places = [annotations] if annotations is not None else [root / LIST_DIR, root.parent / LIST_DIR, root]
    hit = find_file(CLASS_FILE, places)
    if hit is None:
        where = annotations if annotations is not None else root
        raise BuildError(
            f"no UCF101 {CLASS_FILE} under {where}; pass the extracted {LIST_DIR} folder with --annotations"
        )
    return hit.parent


def _video_prefix(root: Path) -> str:
    """Manifest paths are relative to root: 'UCF-101/<Class>/...' or '<Class>/...' if root is UCF-101."""
    return f"{VIDEO_DIR}/" if (root / VIDEO_DIR).is_dir() else ""


def _read_classes(path: Path) -> list[str]:
    names = []
    for lineno, line in enumerate(read_text_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != lineno:
            raise BuildError(f"{path}:{lineno}: expected '{lineno} <ClassName>', got {line!r}")
        names.append(parts[1])
    return names


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    list_dir = _list_dir(root, annotations)
    classes = _read_classes(list_dir / CLASS_FILE)
    by_lower = {c.lower(): i for i, c in enumerate(classes)}
    prefix = _video_prefix(root)
    files = FileIndex(root)
    report = BuildReport(NAME, root, out_dir)
    missing: set[str] = set()

    def row(list_file: Path, lineno: int, rel: str, label: int | None) -> ClipRecord | None:
        folder = rel.replace("\\", "/").split("/")[0]
        from_folder = by_lower.get(folder.lower())
        if from_folder is None:
            raise BuildError(
                f"{list_file}:{lineno}: class folder {folder!r} is not in {list_dir / CLASS_FILE}"
            )
        if label is not None and label != from_folder:
            raise BuildError(
                f"{list_file}:{lineno}: label {label + 1} ({classes[label]}) "
                f"disagrees with the folder {folder!r}"
            )
        found = files.find(prefix + rel)
        if found is None:
            missing.add(prefix + rel)
            return None
        return ClipRecord(path=found, label=from_folder, label_name=classes[from_folder])

    splits: dict[str, dict[str, list[ClipRecord]]] = {}
    for split in SPLITS:
        train_file, test_file = list_dir / f"trainlist0{split}.txt", list_dir / f"testlist0{split}.txt"
        train, test = [], []
        for lineno, line in enumerate(
            tqdm(read_text_lines(train_file), desc=f"ucf101 split{split} train", disable=not progress), 1
        ):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                raise BuildError(
                    f"{train_file}:{lineno}: expected '<Class>/<video.avi> <1..{len(classes)}>', got {line!r}"
                )
            if (rec := row(train_file, lineno, parts[0], int(parts[1]) - 1)) is not None:
                train.append(rec)
        for lineno, line in enumerate(
            tqdm(read_text_lines(test_file), desc=f"ucf101 split{split} test", disable=not progress), 1
        ):
            parts = line.split()
            if len(parts) != 1:
                raise BuildError(f"{test_file}:{lineno}: expected '<Class>/<video.avi>', got {line!r}")
            if (rec := row(test_file, lineno, parts[0], None)) is not None:
                test.append(rec)
        splits[f"split{split}"] = {"train": train, "val": test, "test": test}
    no_videos = (
        f"none of the videos listed in {list_dir} exist under {root}; is --root the folder holding UCF-101/?"
    )
    return finish_recognition(report, classes, splits, sorted(missing), probe, progress, no_videos)


def _is_test(group: int, split: int) -> bool:
    return group % 3 == split - 1


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """``root/UCF-101/<Class>/v_<Class>_gGG_cCC.avi`` and ``root/ucfTrainTestlist/`` with CRLF lists."""
    list_dir = root / LIST_DIR
    list_dir.mkdir(parents=True, exist_ok=True)
    camel = ["".join(w.capitalize() for w in name.split()) for name in clips.class_names]
    # UCF101's own lists use Windows line endings; so do ours.
    (list_dir / CLASS_FILE).write_text("".join(f"{i + 1} {n}\r\n" for i, n in enumerate(camel)), newline="")
    train: dict[int, list[str]] = {split: [] for split in SPLITS}
    test: dict[int, list[str]] = {split: [] for split in SPLITS}
    for c, name in enumerate(camel):
        for j in range(clips.clips_per_class):
            group, clip = j + 1, 1
            rel = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"
            clips.write(root / VIDEO_DIR / rel, c, j)
            for split in SPLITS:
                if _is_test(group, split):
                    test[split].append(f"{rel}\r\n")
                else:
                    train[split].append(f"{rel} {c + 1}\r\n")
    for split in SPLITS:
        (list_dir / f"trainlist0{split}.txt").write_text("".join(train[split]), newline="")
        (list_dir / f"testlist0{split}.txt").write_text("".join(test[split]), newline="")


register_dataset(
    DatasetSpec(
        name=NAME,
        task="recognition",
        description="UCF101: 101 actions, 3 official splits (UCF-101/ + ucfTrainTestlist)",
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint=f"<the extracted {LIST_DIR} folder>",
        splits=SPLITS,
    )
)
