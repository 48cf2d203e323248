"""Ancestral sampling from a `GatedPixelCNN` prior, position by position in raster order.

  x_p ~ Categorical(softmax(logits_p(x_<p, y, c) / T)),  p = 0 .. H W - 1   (eq. 1)

Two samplers with the same signature draw the same codes for the same key
(position p uses `fold_in(rng, p)` and `jax.random.categorical` in both):

  sample_codes         a `lax.scan` over positions that reruns the whole
                       network on the whole map at every step: H W forward
                       passes of H W positions each (the reference).
  sample_codes_cached  keeps every layer's activations in caches and computes,
                       per position, only that position through the horizontal
                       stack (one (1, k//2 + 1) window per layer), and per
                       completed row only that row through the vertical stack
                       (one (k//2 + 1, W + 2 (k//2)) window per layer): O(L k)
                       work per position instead of O(L k^2 H W). Attention
                       blocks keep their keys and values (O(p) per position, as
                       attention is). Same parameters, same arithmetic up to
                       float summation order.

`sample_hierarchy` chains them down the levels of a VQ-VAE-2 (top first).

Both are jit-compiled (the model and the map shape are static) and take
`labels` (B,) for a class-conditional prior and `cond_codes` (B, H/f, W/f) for
a prior conditioned on the level above.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.nets.pixelcnn import GatedPixelCNN, PixelCNNInputError
from vqlatent.priors import checks, maskgit_sampling

# Prior kinds other than the PixelCNN (a prior spec's `kind`) -> their one-level sampler
# fn(prior, rng, batch_size, labels, cond_codes, temperature, traced) -> (B, h, w) codes.
LEVEL_SAMPLERS = {"maskgit": maskgit_sampling.sample_level}


def check_sampling_inputs(
    model: GatedPixelCNN,
    shape: tuple[int, int],
    batch_size: int,
    labels: Any,
    cond_codes: Any,
    temperature: float,
) -> None:
    """Host-side checks of everything a sampler is given (`checks.check_sampler_inputs`)."""
    checks.check_sampler_inputs(model, shape, batch_size, labels, cond_codes, temperature, PixelCNNInputError)


def _prepare(
    model: GatedPixelCNN, shape: Any, batch_size: Any, labels: Any, cond_codes: Any, temperature: Any
) -> tuple[tuple[int, ...], int, jax.Array | None, jax.Array | None, jax.Array]:
    """Checks the inputs of a sampler (`check_sampling_inputs`) and puts them in the form both
    jitted samplers take: static (shape, batch_size), int32 labels and conditioning codes (or
    None) and a float32 temperature."""
    shape = tuple(int(s) for s in shape)
    check_sampling_inputs(model, shape, batch_size, labels, cond_codes, temperature)
    return (
        shape,
        int(batch_size),
        None if labels is None else jnp.asarray(labels, jnp.int32),
        None if cond_codes is None else jnp.asarray(cond_codes, jnp.int32),
        jnp.float32(temperature),
    )


def _categorical(rng: jax.Array, position: jax.Array, logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """The draw both samplers share: Gumbel-max on logits / T with key fold_in(rng, position)."""
    return jax.random.categorical(jax.random.fold_in(rng, position), logits / temperature, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "shape", "batch_size"))
def _sample_plain(model, shape, batch_size, variables, rng, labels, cond_codes, temperature):
    height, width = shape

    def step(codes, position):
        logits = model.apply(variables, codes, labels, cond_codes)
        i, j = position // width, position % width
        draw = _categorical(rng, position, logits[:, i, j], temperature)
        return codes.at[:, i, j].set(draw.astype(codes.dtype)), None

    codes = jnp.zeros((batch_size, height, width), jnp.int32)
    codes, _ = jax.lax.scan(step, codes, jnp.arange(height * width))
    return codes


def sample_codes(
    model: GatedPixelCNN,
    variables: Any,
    rng: jax.Array,
    shape: tuple[int, int],
    batch_size: int,
    labels: Any = None,
    cond_codes: Any = None,
    temperature: float = 1.0,
) -> jax.Array:
    """Reference sampler: (B, H, W) int32 codes, rerunning the full network per position."""
    shape, batch_size, labels, cond_codes, temperature = _prepare(
        model, shape, batch_size, labels, cond_codes, temperature
    )
    return _sample_plain(model, shape, batch_size, variables, rng, labels, cond_codes, temperature)


@functools.partial(jax.jit, static_argnames=("model", "shape", "batch_size"))
def _sample_cached(model, shape, batch_size, variables, rng, labels, cond_codes, temperature):
    height, width = shape
    half = model.kernel_size // 2
    channels, num_layers = model.channels, model.num_layers
    attention_layers = tuple(sorted(set(model.attention_layers)))
    num_positions = height * width
    b = batch_size

    def call(method, *args):
        return model.apply(variables, *args, method=method)

    def put(buffer, update, index):  # Caches are float32 whatever the compute dtype.
        return jax.lax.dynamic_update_slice(buffer, update.astype(buffer.dtype), index)

    cond_features = None
    if cond_codes is not None:
        cond_features = call(lambda m, c: m.condition(c, (height, width)), cond_codes)

    # Vertical stack inputs of every layer, padded as in the full pass (k//2 rows
    # on top, k//2 columns on each side); layer 0's is the embedded codes.
    vertical_in = [
        jnp.zeros((b, height + half, width + 2 * half, channels), jnp.float32) for _ in range(num_layers)
    ]
    # Pre-gate vertical features of the previous row (the down-shifted link).
    vertical_pre_above = [jnp.zeros((b, width, 2 * channels), jnp.float32) for _ in range(num_layers)]
    head_dim = channels // model.num_heads
    kv_cache = {
        l: (
            jnp.zeros((b, num_positions, model.num_heads, head_dim), jnp.float32),
            jnp.zeros((b, num_positions, model.num_heads, head_dim), jnp.float32),
        )
        for l in attention_layers
    }
    codes = jnp.zeros((b, height, width), jnp.int32)

    def position_step(carry, j, i, vertical_pre_above):
        horizontal_in, kv_cache, codes = carry
        position = i * width + j
        cond_here = None
        if cond_features is not None:
            cond_here = jax.lax.dynamic_slice(cond_features, (0, i, j, 0), (b, 1, 1, cond_features.shape[-1]))
        h = None
        kv_cache = dict(kv_cache)
        horizontal_in = list(horizontal_in)
        for l in range(num_layers):
            window_width = half if l == 0 else half + 1
            window = jax.lax.dynamic_slice(horizontal_in[l], (0, 0, j, 0), (b, 1, window_width, channels))
            h_in = jax.lax.dynamic_slice(horizontal_in[l], (0, 0, j + half, 0), (b, 1, 1, channels))
            above = jax.lax.dynamic_slice(vertical_pre_above[l], (0, j, 0), (b, 1, 2 * channels))[:, None]
            h = call(lambda m, *a, l=l: m.horizontal_position(l, *a), window, h_in, above, labels, cond_here)
            if l in kv_cache:
                flat = h.reshape(b, 1, channels)
                k_new, v_new = call(lambda m, x, l=l: m.attention_keys_values(l, x), flat)
                keys = put(kv_cache[l][0], k_new, (0, position, 0, 0))
                values = put(kv_cache[l][1], v_new, (0, position, 0, 0))
                kv_cache[l] = (keys, values)
                allowed = (jnp.arange(num_positions) <= position)[None, :]
                h = call(lambda m, *a, l=l: m.attention_attend(l, *a), flat, keys, values, allowed)
                h = h.reshape(b, 1, 1, channels)
            if l + 1 < num_layers:
                horizontal_in[l + 1] = put(horizontal_in[l + 1], h, (0, 0, j + half, 0))
        logits = call(lambda m, x: m.head(x), h)[:, 0, 0]
        draw = _categorical(rng, position, logits, temperature).astype(jnp.int32)
        codes = jax.lax.dynamic_update_slice(codes, draw[:, None, None], (0, i, j))
        embedded = call(lambda m, x: m.embed_codes(x), draw[:, None, None])
        horizontal_in[0] = put(horizontal_in[0], embedded, (0, 0, j + half, 0))
        return (horizontal_in, kv_cache, codes), None

    def row_step(carry, i):
        vertical_in, vertical_pre_above, kv_cache, codes = carry
        horizontal_in = [jnp.zeros((b, 1, width + half, channels), jnp.float32) for _ in range(num_layers)]
        (_, kv_cache, codes), _ = jax.lax.scan(
            functools.partial(position_step, i=i, vertical_pre_above=vertical_pre_above),
            (horizontal_in, kv_cache, codes),
            jnp.arange(width),
        )
        # Row i is complete: run it through the vertical stack, layer by layer.
        vertical_in, vertical_pre_above = list(vertical_in), list(vertical_pre_above)
        row_codes = jax.lax.dynamic_slice(codes, (0, i, 0), (b, 1, width))
        vertical_in[0] = put(
            vertical_in[0], call(lambda m, x: m.embed_codes(x), row_codes), (0, i + half, half, 0)
        )
        cond_row = None
        if cond_features is not None:
            cond_row = jax.lax.dynamic_slice(
                cond_features, (0, i, 0, 0), (b, 1, width, cond_features.shape[-1])
            )
        for l in range(num_layers):
            window = jax.lax.dynamic_slice(
                vertical_in[l], (0, i, 0, 0), (b, half + 1, width + 2 * half, channels)
            )
            pre, out = call(lambda m, *a, l=l: m.vertical_row(l, *a), window, labels, cond_row)
            vertical_pre_above[l] = pre[:, 0].astype(jnp.float32)
            if l + 1 < num_layers:
                vertical_in[l + 1] = put(vertical_in[l + 1], out, (0, i + half, half, 0))
        return (vertical_in, vertical_pre_above, kv_cache, codes), None

    (_, _, _, codes), _ = jax.lax.scan(
        row_step, (vertical_in, vertical_pre_above, kv_cache, codes), jnp.arange(height)
    )
    return codes


def sample_codes_cached(
    model: GatedPixelCNN,
    variables: Any,
    rng: jax.Array,
    shape: tuple[int, int],
    batch_size: int,
    labels: Any = None,
    cond_codes: Any = None,
    temperature: float = 1.0,
) -> jax.Array:
    """Incremental sampler: the same codes as `sample_codes` for the same key, O(1) layers of
    work per position (plus attention over the cached keys)."""
    shape, batch_size, labels, cond_codes, temperature = _prepare(
        model, shape, batch_size, labels, cond_codes, temperature
    )
    return _sample_cached(model, shape, batch_size, variables, rng, labels, cond_codes, temperature)


def sample_hierarchy(
    priors: Sequence[Mapping[str, Any]],
    rng: jax.Array,
    batch_size: int,
    labels: Any = None,
    temperature: float = 1.0,
    cached: bool = True,
    traced: bool = False,
) -> dict[str, jax.Array]:
    """Ancestral sampling down a hierarchy of priors (VQ-VAE-2 section 3.3): top codes first,
    then each level conditioned on the level above it.

    Args:
      priors: top first; each a mapping with `level`, `model` (GatedPixelCNN),
        `variables`, `shape` (h, w) and `conditioning_level` (None for the top,
        otherwise a level sampled by an earlier prior); a `kind` other than
        'pixelcnn' (e.g. 'maskgit') is drawn by its `LEVEL_SAMPLERS` entry.
      rng: level i draws with `fold_in(rng, i)`.
      batch_size: code maps per level.
      labels: (B,) class labels for the class-conditional priors (ignored by the others).
      temperature: > 0, shared by every level.
      cached: use `sample_codes_cached` (else the plain reference sampler).
      traced: called under a trace (jit, `jax.export`): the cached sampler without the host-side
        checks of labels and codes, which need concrete values (the caller checks them).

    Returns:
      {level: (B, h, w) int32 codes}.
    """
    sampler = sample_codes_cached if cached else sample_codes
    codes: dict[str, jax.Array] = {}
    for i, prior in enumerate(priors):
        cond_level = prior["conditioning_level"]
        if cond_level is not None and cond_level not in codes:
            raise PixelCNNInputError(
                f"The prior of level {prior['level']!r} is conditioned on {cond_level!r}, which no earlier "
                f"prior samples (levels sampled so far: {list(codes)}): order the priors top first."
            )
        model = prior["model"]
        level_labels = labels if model.num_classes else None
        kind = prior.get("kind", "pixelcnn")
        if kind != "pixelcnn":
            if kind not in LEVEL_SAMPLERS:
                raise ValueError(
                    f"The prior of level {prior['level']!r} is of kind {kind!r}; known kinds: "
                    f"{['pixelcnn', *LEVEL_SAMPLERS]}."
                )
            cond = None if cond_level is None else codes[cond_level]
            codes[prior["level"]] = LEVEL_SAMPLERS[kind](
                prior, jax.random.fold_in(rng, i), batch_size, level_labels, cond, temperature, traced=traced
            )
            continue
        if traced:  # Inside jit / jax.export: no host-side checks of the (traced) values.
            codes[prior["level"]] = _sample_cached(
                model,
                tuple(int(s) for s in prior["shape"]),
                int(batch_size),
                prior["variables"],
                jax.random.fold_in(rng, i),
                None if level_labels is None else jnp.asarray(level_labels, jnp.int32),
                None if cond_level is None else codes[cond_level],
                jnp.float32(temperature),
            )
            continue
        codes[prior["level"]] = sampler(
            model,
            prior["variables"],
            jax.random.fold_in(rng, i),
            tuple(prior["shape"]),
            batch_size,
            labels=level_labels,
            cond_codes=None if cond_level is None else np.asarray(codes[cond_level]),
            temperature=temperature,
        )
    return codes
