"""Latent traversals: the grids of the paper's Figure 2.

A traversal grid varies one code while holding everything else fixed:

  * `traversal_latents`: rows = the K values of a categorical code (or random
    rows when the spec has no categorical code), columns = one continuous code
    swept over `sweep` (the paper sweeps -2..2, beyond the training range
    [-1, 1], to show that the factor extrapolates); within a row the noise and
    the other codes are one fixed draw.
  * `category_latents`: rows = the K values of a categorical code, columns =
    different draws of the noise and the other codes (Figure 2a).

The latents are laid out row-major, so a stack of the generated images written
with `num_values` (resp. `num_columns`) columns is the grid. `grid_latents` gives
the latents of all grids of a run, `save_grid` writes one as PNG (a traversal with
its measured slant and width under each column).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.evaluation import images as image_lib
from vqlatent.infogan.latents import Latents, LatentSpec, LatentSpecError, require_codes, sample_latents


def sweep_values(low: float = -2.0, high: float = 2.0, num_values: int = 10) -> np.ndarray:
    """`num_values` evenly spaced values from `low` to `high` (both included)."""
    if num_values < 2:
        raise LatentSpecError(f"A traversal needs at least 2 values, got num_values={num_values}.")
    if not low < high:
        raise LatentSpecError(f"The traversal range ({low}, {high}) is empty: need low < high.")
    return np.linspace(low, high, num_values, dtype=np.float32)


def _rows(rng: jax.Array, spec: LatentSpec, row_code: int, num_rows: int | None) -> tuple[Latents, int]:
    """One latent draw per row; row r gets category r of `row_code` if there is one."""
    if spec.num_categorical:
        if not 0 <= row_code < spec.num_categorical:
            raise LatentSpecError(
                f"traversal row code {row_code} does not exist: the spec has "
                f"{spec.num_categorical} categorical code(s)."
            )
        num_rows = spec.categorical_sizes[row_code]
    elif num_rows is None:
        num_rows = 8
    rows = sample_latents(rng, spec, num_rows)
    if spec.num_categorical:
        categories = jnp.arange(num_rows, dtype=jnp.int32)
        rows = rows.replace(categorical=rows.categorical.at[:, row_code].set(categories))
    return rows, num_rows


def _repeat_rows(latents: Latents, times: int) -> Latents:
    return jax.tree.map(lambda a: jnp.repeat(a, times, axis=0), latents)


def traversal_latents(
    rng: jax.Array,
    spec: LatentSpec,
    continuous_index: int,
    sweep: np.ndarray,
    row_code: int = 0,
    num_rows: int | None = None,
) -> Latents:
    """(rows * len(sweep)) latents: continuous code `continuous_index` swept along each row.

    Rows are the categories of categorical code `row_code` (or `num_rows` random
    draws, default 8, if the spec has no categorical code).
    """
    require_codes(spec, continuous=continuous_index + 1, purpose="A continuous-code traversal")
    rows, num_rows = _rows(rng, spec, row_code, num_rows)
    cols = len(sweep)
    grid = _repeat_rows(rows, cols)
    values = jnp.tile(jnp.asarray(sweep, jnp.float32), num_rows)
    return grid.replace(continuous=grid.continuous.at[:, continuous_index].set(values))


def category_latents(rng: jax.Array, spec: LatentSpec, num_columns: int, code: int = 0) -> Latents:
    """(K * num_columns) latents: row k has category k of code `code`, each column a new draw."""
    require_codes(spec, categorical=code + 1, purpose="A grid of samples per category")
    k = spec.categorical_sizes[code]
    latents = sample_latents(rng, spec, k * num_columns)
    categories = jnp.repeat(jnp.arange(k, dtype=jnp.int32), num_columns)
    return latents.replace(categorical=latents.categorical.at[:, code].set(categories))


def sweep_latents(
    rng: jax.Array, spec: LatentSpec, continuous_index: int, sweep: np.ndarray, num_rows: int
) -> Latents:
    """(num_rows * len(sweep)) latents: `num_rows` random draws of all latents (categories
    included), each repeated along a sweep of continuous code `continuous_index` (row-major).
    The rows of the continuous-code measures (`vqlatent.infogan.measures`)."""
    require_codes(spec, continuous=continuous_index + 1, purpose="A continuous-code sweep")
    grid = _repeat_rows(sample_latents(rng, spec, num_rows), len(sweep))
    values = jnp.tile(jnp.asarray(sweep, jnp.float32), num_rows)
    return grid.replace(continuous=grid.continuous.at[:, continuous_index].set(values))


def annotate_columns(
    grid: np.ndarray, lines: list[list[str]], column_width: int, padding: int = 1
) -> np.ndarray:
    """A (H, W, C) uint8 grid with a white band below holding `lines[i][col]` under each column
    (e.g. a traversal's mean slant and width per code value)."""
    from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

    line_height = 12
    h, w, c = grid.shape
    band = np.full((line_height * len(lines) + 2, w, c), 255, np.uint8)
    canvas = Image.fromarray(np.concatenate([grid, band])[..., 0] if c == 1 else np.concatenate([grid, band]))
    draw = ImageDraw.Draw(canvas)
    for i, texts in enumerate(lines):
        for col, text in enumerate(texts):
            draw.text((padding + col * column_width + 2, h + 1 + i * line_height), text, fill=0)
    out = np.asarray(canvas)
    return out[..., None] if c == 1 else out


def grid_latents(
    rng: jax.Array, spec: LatentSpec, num_columns: int, low: float, high: float
) -> dict[str, Latents]:
    """The latents of a run's grids: samples per category of the first categorical code
    ('samples_by_cat0'; 'samples' without one) and one traversal per continuous code
    ('traversal_cont<j>', swept from `low` to `high`), each with `num_columns` columns."""
    grids = {}
    if spec.num_categorical:
        grids["samples_by_cat0"] = category_latents(rng, spec, num_columns, code=0)
    else:
        grids["samples"] = sample_latents(rng, spec, 4 * num_columns)
    sweep = sweep_values(low, high, num_columns)
    for j in range(spec.num_continuous):  # Same rows in every traversal: one key.
        grids[f"traversal_cont{j}"] = traversal_latents(rng, spec, j, sweep, row_code=0)
    return grids


def save_grid(
    path: str,
    stack: np.ndarray,
    num_values: int,
    measure: Callable[[np.ndarray], Mapping[str, jax.Array]] | None = None,
) -> None:
    """Writes the (N, H, W, C) images `stack` as a PNG grid of `num_values` columns to `path`.

    With `measure` (`vqlatent.infogan.measures.measure_images`: images -> {'slant', 'width'}),
    also `<path>_measured.png`, the grid with each column's mean slant and width under it, and
    `<path>_measures.json`, the measures of every image as (rows, num_values) lists.
    """
    upscale = image_lib.auto_upscale(stack.shape[1])
    grid = image_lib.make_grid(stack, num_cols=num_values, upscale=upscale)
    if measure is not None:
        measured = {k: np.asarray(v).reshape(-1, num_values) for k, v in measure(stack).items()}
        means = {k: v.mean(axis=0) for k, v in measured.items()}
        lines = [[f"{s:+.0f}deg" for s in means["slant"]], [f"w {x:.1f}" for x in means["width"]]]
        annotated = annotate_columns(grid, lines, column_width=stack.shape[2] * upscale + 1)
        image_lib.save_png(path.removesuffix(".png") + "_measured.png", annotated)
        with open(path.removesuffix(".png") + "_measures.json", "w") as f:
            json.dump({k: v.tolist() for k, v in measured.items()}, f)
    image_lib.save_png(path, grid)
