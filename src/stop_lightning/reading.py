"""The one rule for every file the framework reads: a file that is missing, a folder, unreadable,
empty, cut short or another program's file ends in one line, ``<path>: <what is wrong> (<what to
do>)``, raised as the reading kind's own :class:`stop_lightning.errors.UserError` subclass.

This module checks what every kind shares (the file is there, is a file, can be read, is not empty,
is UTF-8 text where text is wanted); each kind's reader (checkpoints in ``checkpoint_io``, exports in
``model_io``, embeddings in ``search``, manifests and class lists in ``data.manifest``, YAML configs
in ``config``, annotation files in ``data.builders``, shards in ``data.shards``, the tiny CLIP in
``models.backbone``) stands on it and adds what its format must hold. docs/reliability.md ("Reading
files") lists them with the test of each case. Like the rest of the ground floor, it imports no torch.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def problem(path: str | Path, what: str, todo: str) -> str:
    """The one-line message: ``<path>: <what is wrong> (<what to do>)``; never more than one line."""
    return " ".join(f"{path}: {what} ({todo})".split())


def first_line(err: BaseException) -> str:
    """An exception from a library as a short clause: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def check_file(path: str | Path, kind: str, error: type[Exception], todo: str) -> Path:
    """``path`` if it is a readable, non-empty file; else ``error`` with one line naming it.

    ``kind`` names the file for the reader ("checkpoint", "manifest file"); ``todo`` says what to do
    ("write it with `stop-lightning embed`")."""
    path = Path(path)
    try:
        mode = path.stat()
    except FileNotFoundError as err:
        raise error(f"{kind} {path} does not exist ({todo})") from err
    except OSError as err:
        raise error(problem(path, f"cannot be read as a {kind}: {err.strerror or err}", todo)) from err
    if stat.S_ISDIR(mode.st_mode):
        raise error(problem(path, f"is a folder where the {kind} should be", todo))
    if not os.access(path, os.R_OK):
        raise error(problem(path, f"cannot be read as a {kind}: permission denied", todo))
    if stat.S_ISREG(mode.st_mode) and mode.st_size == 0:
        raise error(problem(path, "is empty (0 bytes)", todo))
    return path


def read_bytes(path: str | Path, kind: str, error: type[Exception], todo: str) -> bytes:
    """The bytes of a file :func:`check_file` accepts; an error while reading is the same one line."""
    path = check_file(path, kind, error, todo)
    try:
        return path.read_bytes()
    except OSError as err:
        raise error(problem(path, f"cannot be read as a {kind}: {err.strerror or err}", todo)) from err


def read_text(path: str | Path, kind: str, error: type[Exception], todo: str) -> str:
    """The UTF-8 text of a file :func:`check_file` accepts (a BOM is dropped); a file that is not UTF-8
    text (a binary file of another program, a Latin-1 export) names the first bad byte."""
    data = read_bytes(path, kind, error, todo)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(
            problem(
                path,
                f"not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}): not a readable {kind}",
                todo,
            )
        ) from err
    if not text.strip():
        raise error(problem(path, "holds only blank space", todo))
    return text
