"""The code version recorded with what a run produces (model cards, results)."""

from __future__ import annotations

import functools
import os
import subprocess

PACKAGE_VERSION = "0.1.0"


@functools.cache
def code_version() -> str:
    """'vqlatent 0.1.0 (git 1a2b3c4)', '... (git 1a2b3c4, modified)', or without git just the version."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return f"vqlatent {PACKAGE_VERSION}"
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "vqlatent"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"vqlatent {PACKAGE_VERSION}"
    return f"vqlatent {PACKAGE_VERSION} (git {commit.stdout.strip()}{', modified' if dirty else ''})"
