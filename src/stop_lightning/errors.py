"""The errors a user can act on, as one family: the CLI prints their message on one line and exits 2.

Every error about the user's files, settings or machine derives from :class:`UserError` (a bad
config, manifest, video, checkpoint, export, CLIP source, embedding file or disk), beside the
built-in type it has always been (``ValueError``, ``RuntimeError``, ``OSError``), so old ``except``
clauses keep working. Anything else is a bug and keeps its traceback. This module imports nothing:
the CLI catches the family without loading torch, Lightning or PyAV.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the message explains and the user can fix (the message says how)."""


# What every command catches: the family, and a path that does not exist.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)
EXIT_USER_ERROR = 2
