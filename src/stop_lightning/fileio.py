"""One way to write a file: to a temporary file beside it, flushed to disk, then renamed over it.

A reader (or a resumed run) sees the old file or the new one, never half of one; on an error or an
exception mid-write the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on a clean exit it replaces ``path``.

    The temporary file is ``.<name>.<pid>.tmp`` in the same folder (a rename within one file system
    is atomic; the dot keeps it out of globs such as ``*.ckpt``). Writers that add their own suffix
    to a name (``np.savez``) must be given an open file instead of the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)
    return path


def share_as_umask_allows(folder: str | Path) -> None:
    """Give ``folder`` and the files in it the modes a plain ``mkdir``/``open`` would have (0777 and
    0666 less the umask): temporary folders and files start private (0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder = Path(folder)
    folder.chmod(0o777 & ~umask)
    for item in folder.iterdir():
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
