"""Metrics to TensorBoard event files (tensorboardX: no TensorFlow needed) and JSON.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, jax.Array)):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricWriter:
    """Scalars and images to `workdir/tensorboard`, evaluation results to `workdir/eval`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.active = jax.process_index() == 0
        self._tb = None
        if self.active:
            from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if not self.active:
            return
        for name, value in scalars.items():
            value = float(np.asarray(value))
            self._tb.add_scalar(f"{prefix}{name}", value, global_step=step)
        self._tb.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image` as a (H, W, C) uint8 array."""
        if self.active:
            self._tb.add_image(name, np.asarray(image), global_step=step, dataformats="HWC")
            self._tb.flush()

    def eval_json_path(self, step: int) -> str:
        """Where the evaluation of `step` is (or will be) written."""
        return os.path.join(self.workdir, "eval", f"metrics_{step:08d}.json")

    def eval_json(self, step: int, metrics: Mapping[str, Any]) -> str | None:
        """Writes eval/metrics_<step>.json and eval/latest.json atomically; returns the path."""
        if not self.active:
            return None
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        path = self.eval_json_path(step)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        for target in (path, os.path.join(directory, "latest.json")):
            with open(target + ".tmp", "w") as f:
                json.dump(record, f, indent=2, sort_keys=True)
            os.replace(target + ".tmp", target)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
