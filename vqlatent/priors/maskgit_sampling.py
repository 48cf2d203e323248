"""MaskGIT's iterative decoding (Chang et al. 2022, section 3.2): a whole code map in T parallel steps.

Start with every position masked. At step t = 1 .. T, with the network's logits l for the current
map:

  1. predict: draw a code for every masked position, s_i ~ Categorical(softmax(l_i / tau));
  2. confidence: c_i = log p_tau(s_i) + lambda (1 - t/T) g_i,  g_i ~ Gumbel(0, 1), for masked i;
     c_i = +inf for codes fixed at an earlier step (they are never masked again);
  3. schedule: n_t = floor(N gamma(t/T)) positions stay masked, gamma the mask schedule
     (`vqlatent.nets.maskgit.mask_ratio`; cosine by default), clipped so that every step but the
     last fixes at least one code and leaves at least one masked (the last leaves none);
  4. mask: the n_t masked positions of lowest confidence are masked again, the others keep s_i.

tau is the sampling temperature (`temperature`), lambda the choice temperature
(`choice_temperature`, the paper's annealed noise that makes the choice of which codes to keep
less greedy early on). Step t (0-based here: t - 1) uses the key fold_in(rng, t - 1), split into the
sampling key and the Gumbel key, so a draw is determined by (rng, T, options, inputs).

`sample_codes` runs the T steps in one `lax.fori_loop` under `jax.jit`: one compile per (model, map
shape, batch size, T, schedule). `decode_step` is one step as a pure function of (codes, logits, key),
tested on its own. `sample_level` is the entry `vqlatent.priors.sampling.sample_hierarchy` calls
for a prior of kind 'maskgit'.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.nets.maskgit import SCHEDULES, MaskGITInputError, MaskGITTransformer, check_mask_id, mask_ratio
from vqlatent.priors import checks

DEFAULT_OPTIONS = {"num_steps": 8, "choice_temperature": 4.5, "schedule": "cosine"}


def check_decode_options(num_steps: Any, choice_temperature: Any, schedule: Any) -> None:
    """`MaskGITInputError` naming a bad decoding option."""
    if (
        isinstance(num_steps, (bool, np.bool_))
        or not isinstance(num_steps, numbers.Integral)
        or num_steps < 1
    ):
        raise MaskGITInputError(
            f"num_steps={num_steps!r}: MaskGIT decoding needs an integer number of steps >= 1 "
            f"(8 to 12 is typical; every step evaluates the network once on the whole map)."
        )
    if (
        isinstance(choice_temperature, (bool, np.bool_))
        or not isinstance(choice_temperature, numbers.Real)
        or not np.isfinite(choice_temperature)
        or choice_temperature < 0
    ):
        raise MaskGITInputError(
            f"choice_temperature={choice_temperature!r}: must be a finite number >= 0 (the scale of the "
            f"Gumbel noise on the confidences; 0 keeps the most confident codes greedily)."
        )
    if schedule not in SCHEDULES:
        raise MaskGITInputError(f"schedule={schedule!r}: choose one of {list(SCHEDULES)}.")


def masked_counts(num_positions: int, num_steps: int, schedule: str = "cosine") -> np.ndarray:
    """(T,) int32: how many of `num_positions` codes are still masked after each step (item 3 of the
    module docstring). Every sample starts fully masked, so the counts are the same for all."""
    counts, still_masked = [], int(num_positions)
    for t in range(num_steps):
        if t == num_steps - 1:
            target = 0
        else:
            # The small offset keeps floating error from flooring an exact integer one lower.
            target = int(np.floor(num_positions * mask_ratio((t + 1) / num_steps, schedule) + 1e-9))
            target = max(1, min(still_masked - 1, target)) if still_masked > 1 else still_masked
        counts.append(target)
        still_masked = target
    return np.asarray(counts, np.int32)


def decode_step(
    codes: jax.Array,
    logits: jax.Array,
    key: jax.Array,
    num_masked_after: Any,
    *,
    mask_id: int,
    temperature: Any,
    noise_scale: Any,
) -> jax.Array:
    """One decoding step (items 1, 2 and 4 of the module docstring).

    Args:
      codes: (B, N) int32, ids in [0, K] with `mask_id` at the masked positions.
      logits: (B, N, K) the network's logits for `codes`.
      key: this step's key (split into the sampling key and the Gumbel key).
      num_masked_after: how many positions stay masked (a scalar).
      mask_id: the mask token's id (K).
      temperature: tau > 0, divides the logits before sampling and before the confidence.
      noise_scale: lambda (1 - t/T), the Gumbel noise's scale on the confidences.

    Returns:
      (B, N) int32: the codes fixed before unchanged, `num_masked_after` masked positions (of the
      lowest confidence) still masked, every other masked position holding its draw.
    """
    masked = codes == mask_id
    sample_key, choice_key = jax.random.split(key)
    scaled = logits.astype(jnp.float32) / temperature
    drawn = jax.random.categorical(sample_key, scaled, axis=-1).astype(codes.dtype)
    drawn = jnp.where(masked, drawn, codes)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), drawn[..., None], axis=-1)[..., 0]
    confidence = log_prob + noise_scale * jax.random.gumbel(choice_key, log_prob.shape, jnp.float32)
    confidence = jnp.where(masked, confidence, jnp.inf)
    rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)  # 0: the least confident.
    # `& masked`: a fixed code is never masked again, whatever the count.
    remask = (rank < num_masked_after) & masked
    return jnp.where(remask, jnp.asarray(mask_id, codes.dtype), drawn)


@functools.partial(jax.jit, static_argnames=("model", "shape", "batch_size", "num_steps", "schedule"))
def _decode(
    model,
    shape,
    batch_size,
    num_steps,
    schedule,
    variables,
    rng,
    labels,
    cond_codes,
    temperature,
    choice_temperature,
):
    height, width = shape
    n = height * width
    counts = jnp.asarray(masked_counts(n, num_steps, schedule))
    mask_id = model.mask_id

    def step(t, codes):
        logits = model.apply(variables, codes.reshape(batch_size, height, width), labels, cond_codes)
        noise_scale = choice_temperature * (1.0 - (t + 1) / num_steps)
        return decode_step(
            codes,
            logits.reshape(batch_size, n, -1),
            jax.random.fold_in(rng, t),
            counts[t],
            mask_id=mask_id,
            temperature=temperature,
            noise_scale=noise_scale,
        )

    codes = jnp.full((batch_size, n), mask_id, jnp.int32)
    return jax.lax.fori_loop(0, num_steps, step, codes).reshape(batch_size, height, width)


def check_sampling_inputs(
    model: MaskGITTransformer, shape: Any, batch_size: Any, labels: Any, cond_codes: Any, temperature: Any
) -> None:
    """Host-side checks of what a sampler is given (`checks.check_sampler_inputs`)."""
    checks.check_sampler_inputs(model, shape, batch_size, labels, cond_codes, temperature, MaskGITInputError)


def sample_codes(
    model: MaskGITTransformer,
    variables: Any,
    rng: jax.Array,
    shape: tuple[int, int],
    batch_size: int,
    labels: Any = None,
    cond_codes: Any = None,
    temperature: float = 1.0,
    num_steps: int = DEFAULT_OPTIONS["num_steps"],
    choice_temperature: float = DEFAULT_OPTIONS["choice_temperature"],
    schedule: str = DEFAULT_OPTIONS["schedule"],
    mask_id: int | None = None,
) -> jax.Array:
    """(B, H, W) int32 codes in [0, K) drawn in `num_steps` parallel steps (module docstring).

    `mask_id`, if given, must be the network's mask token K (`MaskGITInputError` otherwise, e.g. for
    an id inside the codebook range)."""
    check_mask_id(model.mask_id if mask_id is None else mask_id, model.num_codes)
    check_decode_options(num_steps, choice_temperature, schedule)
    shape = tuple(int(s) for s in shape)
    check_sampling_inputs(model, shape, batch_size, labels, cond_codes, temperature)
    return _decode(
        model,
        shape,
        int(batch_size),
        int(num_steps),
        schedule,
        variables,
        rng,
        None if labels is None else jnp.asarray(labels, jnp.int32),
        None if cond_codes is None else jnp.asarray(cond_codes, jnp.int32),
        jnp.float32(temperature),
        jnp.float32(choice_temperature),
    )


def sample_level(
    prior: Mapping[str, Any],
    rng: jax.Array,
    batch_size: int,
    labels: Any,
    cond_codes: Any,
    temperature: float,
    traced: bool = False,
) -> jax.Array:
    """One level of `sampling.sample_hierarchy` for a prior spec of kind 'maskgit' (its `decode`
    entry holds num_steps, choice_temperature and schedule). `traced`: inside jit / `jax.export`,
    where the host-side checks of values cannot run (the caller checks them)."""
    options = {**DEFAULT_OPTIONS, **dict(prior.get("decode", {}))}
    model, shape = prior["model"], tuple(int(s) for s in prior["shape"])
    if not traced:
        return sample_codes(
            model,
            prior["variables"],
            rng,
            shape,
            batch_size,
            labels=labels,
            cond_codes=None if cond_codes is None else np.asarray(cond_codes),
            temperature=temperature,
            **options,
        )
    check_decode_options(options["num_steps"], options["choice_temperature"], options["schedule"])
    return _decode(
        model,
        shape,
        int(batch_size),
        int(options["num_steps"]),
        options["schedule"],
        prior["variables"],
        rng,
        None if labels is None else jnp.asarray(labels, jnp.int32),
        cond_codes,
        jnp.float32(temperature),
        jnp.float32(options["choice_temperature"]),
    )
