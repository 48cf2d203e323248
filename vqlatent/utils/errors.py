"""Errors a user can fix (config, data, workdir, mode): `vqlatent.main` prints their message alone.

`is_user_error(e)` decides: a `UserError`, or a `ValueError` / missing-file error raised by a
`raise` statement in vqlatent's own code (the package raises these with messages that name the
bad value and what to do). Anything else (a bug, an error inside JAX) keeps its traceback.
"""

from __future__ import annotations

import os
import traceback

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_ERROR_TYPES = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


class UserError(Exception):
    """An error whose message says what to change; printed without a traceback."""


def raised_in_package(error: BaseException) -> bool:
    """Whether the innermost frame of `error`'s traceback is in the vqlatent package."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, UserError):
        return True
    return isinstance(error, USER_ERROR_TYPES) and raised_in_package(error)
