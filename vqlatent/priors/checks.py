"""Host-side checks of what any prior's sampler is given, values too (not just shapes): the
temperature, the map shape, the batch size, the labels and the conditioning codes. The PixelCNN and
MaskGIT samplers raise their own error class (both `ValueError`s)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def check_sampler_inputs(
    model: Any,
    shape: tuple[int, int],
    batch_size: int,
    labels: Any,
    cond_codes: Any,
    temperature: float,
    error: type[ValueError] = ValueError,
) -> None:
    """Raises `error` naming the first bad input. `model` has `check_inputs(shape, labels, cond_codes)`,
    `num_classes` and `cond_num_codes` (a GatedPixelCNN or a MaskGITTransformer)."""
    # numbers.Real covers Python and numpy scalars (np.float32 is not a float); a bool is not a temperature.
    if (
        isinstance(temperature, (bool, np.bool_))
        or not isinstance(temperature, numbers.Real)
        or not np.isfinite(temperature)
        or temperature <= 0
    ):
        raise error(
            f"temperature={temperature!r}: must be a finite number > 0 "
            f"(1 samples the model's distribution, smaller values sharpen it)."
        )
    if len(shape) != 2 or min(shape) < 1:
        raise error(f"shape={tuple(shape)}: must be (height, width) of the code map.")
    if (
        isinstance(batch_size, (bool, np.bool_))
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise error(f"batch_size={batch_size!r}: must be an integer >= 1.")
    model.check_inputs((batch_size, *shape), labels, cond_codes)
    if labels is not None:
        values = np.asarray(labels)
        if (
            not np.issubdtype(values.dtype, np.integer)
            or values.min() < 0
            or values.max() >= model.num_classes
        ):
            raise error(
                f"labels {values.tolist()[:16]}: must be integers in [0, num_classes={model.num_classes})."
            )
    if cond_codes is not None:
        values = np.asarray(cond_codes)
        if (
            not np.issubdtype(values.dtype, np.integer)
            or values.min() < 0
            or values.max() >= model.cond_num_codes
        ):
            raise error(
                f"Conditioning codes must be integers in [0, {model.cond_num_codes}); got "
                f"values in [{values.min()}, {values.max()}]."
            )
