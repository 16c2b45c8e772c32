"""One way to write a file: to a temporary file beside it, flushed to disk, then renamed over it.

A reader (or a resumed run) sees the old file or the new one, never half of one; on an error or an
exception mid-write the temporary file is removed and the target is left as it was. A full disk or a
folder that refuses writes ends in one :class:`StorageError` line naming the file and the free space
or the permission (:func:`storage_error`), whichever writer met it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from stop_lightning.errors import UserError

# The errors of a write the user can fix: no room (disk, quota, file size limit) or no right to write.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})
REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
WRITE_ONLY_ERRNOS = FULL_ERRNOS | {errno.EROFS}  # never a read's: safe to name as a failed write


class StorageError(UserError, OSError):
    """A folder or file that must be written cannot be; the message names it and why."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]"
        return self.strerror or super().__str__()


def storage_error(err: OSError, path: Path | str | None) -> StorageError:
    """One line for a failed write of ``path``: the free space (disk full) or the permission.
    ``None``: a writer that did not say which file (its free space is then unknown)."""
    free = free_space(Path(path)) if path is not None else "unknown space"
    path = path if path is not None else "a file (the writer did not name it)"
    if err.errno in FULL_ERRNOS:
        return StorageError(
            err.errno,
            f"disk full writing {path}: {free} free; free space or write to another disk "
            "(a run: set paths.output_dir, or free space and resume with RESUME=auto)",
        )
    if err.errno in REFUSED_ERRNOS:
        return StorageError(
            err.errno,
            f"cannot write {path}: permission denied ({err.strerror}); "
            "make it writable or write to a folder you can write (a run: set paths.output_dir)",
        )
    return StorageError(err.errno, f"cannot write {path}: {err.strerror or err}")


def is_storage_failure(err: BaseException) -> bool:
    """An ``OSError`` of a full disk or a refused write not yet turned into a :class:`StorageError`."""
    return (
        isinstance(err, OSError)
        and not isinstance(err, StorageError)
        and err.errno in FULL_ERRNOS | REFUSED_ERRNOS
    )


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A full or refused write inside the block ends in :func:`storage_error`'s line naming ``path``
    (the target, not a temporary file); other errors pass unchanged. Writers remove their temporary
    files inside the block, so the free space reported counts the room those took."""
    try:
        yield
    except OSError as err:
        if is_storage_failure(err):
            raise storage_error(err, path) from err
        raise


def free_space(path: Path) -> str:
    for folder in (path, *path.parents):
        if folder.exists():
            return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
    return "unknown"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on a clean exit it replaces ``path``.

    The temporary file is ``.<name>.<pid>.tmp`` in the same folder (a rename within one file system
    is atomic; the dot keeps it out of globs such as ``*.ckpt``). Writers that add their own suffix
    to a name (``np.savez``) must be given an open file instead of the path.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class _KeepsWriteError:
    """A binary file that remembers the first ``OSError`` a write met, for writers that report a failed
    write as their own exception without its errno (``torch.save``'s RuntimeError "unexpected pos")."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:  # seek, tell, flush... as the file has them
        return getattr(self._file, name)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Any]:
    """An open binary file whose content replaces ``path`` on a clean exit (:func:`atomic_path`).

    A writer that wraps a failed write in its own exception ends in the same :class:`StorageError`
    as any other: the write's ``OSError`` is raised in its place. Also for writers that would add
    their own suffix to a name (``np.savez``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        file = _KeepsWriteError(raw)
        try:
            yield file
        except Exception as err:
            if file.error is not None and file.error is not err:
                raise file.error from err
            raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on a clean exit it becomes ``path`` (absent
    or an empty folder), with the modes a plain ``mkdir`` would give. On any error the temporary
    folder is removed and a full or refused disk ends in one :class:`StorageError` line."""
    path = Path(path)
    tmp: Path | None = None
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            yield tmp
            share_as_umask_allows(tmp)  # mkdtemp made it private (0700)
            if path.exists():
                path.rmdir()  # empty (the caller checks); os.replace cannot replace a folder on every OS
            os.replace(tmp, path)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


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
