"""Models shipped with the package (`vqlatent/pretrained/<name>/`, model directories): `pretrained:NAME`.

Each was exported with the project's own commands (`scripts/pretrained.sh` rebuilds them), and its
model card (`README.md` in its directory) gives the training command, the code version, the data and
the numbers it reaches there (`tests/test_pretrained.py` reproduces them).
"""

from __future__ import annotations

import os

from vqlatent.utils import errors

DIRECTORY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")


class UnknownPretrainedError(errors.UserError, ValueError):
    """A `pretrained:NAME` that the package does not ship."""


def names() -> list[str]:
    """The names of the shipped models."""
    if not os.path.isdir(DIRECTORY):
        return []
    return sorted(
        n for n in os.listdir(DIRECTORY) if os.path.isfile(os.path.join(DIRECTORY, n, "config.json"))
    )


def path(name: str) -> str:
    """The directory of shipped model `name`, or an error that lists the shipped ones."""
    if name not in names():
        raise UnknownPretrainedError(
            f"No pretrained model {name!r}: vqlatent ships {names()} (load one as "
            f"vqlatent.load('pretrained:NAME')). For your own model, give its export directory or its "
            f"training workdir."
        )
    return os.path.join(DIRECTORY, name)
