"""MSVD (several captions per video), in the CLIP4Clip layout: ``raw-captions.pkl`` (a pickled dict,
video id -> list of captions, each a list of word tokens), ``{train,val,test}_list.txt`` (one id per
line) and the videos ``YouTubeClips/<id>.avi``.

- The pickle is read by :class:`PlainDataUnpickler`: it builds dicts, lists and strings only and
  refuses anything that names a class or function (unpickling those can run code), so a tampered
  or foreign file is refused with a message, never executed.
- A caption is its tokens joined by single spaces.
- Ids listed without captions or without a file are left out and counted.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from ..registry import DatasetSpec, SyntheticClips, register_dataset
from . import VIDEO_SUFFIXES, BuildError, BuildReport, read_text_lines
from .captioned import CaptionReport, VideoFiles, caption_rows, clean_captions, finish, require, write_clip_as

NAME = "msvd"
CAPTION_FILE = "raw-captions.pkl"
LIST_FILE = "{stage}_list.txt"
STAGES = ("train", "val", "test")
VIDEO_DIR = "YouTubeClips"
HINT = "pass the folder with raw-captions.pkl and {train,val,test}_list.txt with --annotations"


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every class or function reference (``GLOBAL``/``STACK_GLOBAL``) and
    every persistent id is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refers to {module}.{name}; only dicts, lists and strings are accepted")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("holds a persistent id; only dicts, lists and strings are accepted")


def _check_plain(value, where: str) -> None:
    """Only dict (str keys), list and str, all the way down."""
    if isinstance(value, str):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(
                    f"key {key!r} in {where} is a {type(key).__name__}, not a string"
                )
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise pickle.UnpicklingError(
        f"{where} is a {type(value).__name__}; only dicts, lists and strings are accepted"
    )


def read_captions(path: Path) -> dict[str, list[list[str]]]:
    """``raw-captions.pkl`` -> ``{id: [[token, ...], ...]}``, read without running any code."""
    try:
        data = PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
        _check_plain(data, "the pickle")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise BuildError(
            f"{path}: refused ({err}); expected {{video_id: [[token, ...], ...]}} as CLIP4Clip ships it"
        ) from err
    if not isinstance(data, dict):
        raise BuildError(
            f"{path}: refused: holds a {type(data).__name__}, expected {{video_id: [[token, ...], ...]}}"
        )
    for vid, caps in data.items():
        if not isinstance(caps, list) or not all(isinstance(c, list) for c in caps):
            raise BuildError(f"{path}: refused: {vid!r} is not a list of token lists")
    return data


def build(root: Path, annotations: Path | None, out_dir: Path, probe: bool, progress: bool) -> BuildReport:
    report = CaptionReport(NAME, root, out_dir)
    tokens = read_captions(require(CAPTION_FILE, root, annotations, HINT))
    captions = {vid: clean_captions(report, (" ".join(t) for t in caps)) for vid, caps in tokens.items()}
    files = VideoFiles(root)

    def locate(video_id: str) -> str | None:
        hits = files.stem(video_id, VIDEO_SUFFIXES)
        return hits[0] if hits else None

    stages = {
        stage: caption_rows(
            report,
            read_text_lines(require(LIST_FILE.format(stage=stage), root, annotations, HINT)),
            captions,
            locate,
        )
        for stage in STAGES
    }
    return finish(report, stages, probe, progress)


# ---------------------------------------------------------------------------------------------
# Synthetic layout
# ---------------------------------------------------------------------------------------------

UNCAPTIONED_ID = "noCaption00_1_5"  # in train_list.txt, not in the pickle
FILELESS_ID = "noVideoFile_0_9"  # in test_list.txt and the pickle, no file
NON_ASCII = ["un", "carré", "rouge", "glisse", "—", "ça", "va"]


def video_id(idx: int) -> str:
    """``<youtube id>_<start>_<end>`` like ``-4wsuPCjDBc_5_15``."""
    return f"{'-_a'[idx % 3]}{idx:05d}Msvd_{idx}_{idx + 7}"


def stage_of(j: int) -> str:
    return STAGES[(j + 2) % 3]  # j = 0: test, 1: train, 2: val, ...


def write_synthetic(root: Path, clips: SyntheticClips) -> None:
    """``root/YouTubeClips/<id>.avi``, ``root/raw-captions.pkl`` and the three lists in ``root``."""
    n = len(clips.class_names)
    pickled: dict[str, list[list[str]]] = {}
    lists: dict[str, list[str]] = {s: [] for s in STAGES}
    for j in range(clips.clips_per_class):
        for c in range(n):
            idx = j * n + c
            vid = video_id(idx)
            write_clip_as(clips, root / VIDEO_DIR / f"{vid}.avi", c, j)
            caps = [s.split() for s in clips.captions(c, j)]
            if idx % 3 == 1:
                caps.append(list(caps[1]))  # the same caption twice
            if idx % 3 == 2:
                caps.append(NON_ASCII)
            pickled[vid] = caps
            lists[stage_of(j)].append(vid)
    lists["train"].append(UNCAPTIONED_ID)
    lists["test"].append(FILELESS_ID)
    pickled[FILELESS_ID] = [["a", "square"]]
    (root / CAPTION_FILE).write_bytes(pickle.dumps(pickled, protocol=4))
    for stage, ids in lists.items():
        (root / LIST_FILE.format(stage=stage)).write_text("".join(f"{v}\n" for v in ids), encoding="utf-8")


register_dataset(
    DatasetSpec(
        name=NAME,
        task="retrieval",
        description=(
            "MSVD: ~40 captions per video, CLIP4Clip layout (YouTubeClips/, raw-captions.pkl, *_list.txt)"
        ),
        build=build,
        write_synthetic=write_synthetic,
        annotations_hint="<folder with raw-captions.pkl and {train,val,test}_list.txt>",
        multi_caption=True,
    )
)
