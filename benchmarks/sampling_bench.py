r"""Sampling speed of a PixelCNN prior: the plain scan sampler, the cached one, and one forward pass.

  python benchmarks/sampling_bench.py [--config=configs/pixelcnn.py:mnist] [--sizes=8,16,32] \
      [--batch_size=64] [--num_codes=512] [--repeats=3] [--plain_max_positions=256] \
      [--config.model.attention_layers=()] [--config.prior.class_conditional=False]

For each code-map size S (`--sizes`), builds the prior of the config's
`model` / `prior` fields for S x S maps of K=`--num_codes` codes (no codes
dataset is read; a prior with `prior.conditioning_level` set gets random
conditioning codes of S/`--cond_factor`), with random parameters, and times, all
jitted, compile excluded (and reported separately), `block_until_ready`, median
of `--repeats`:

  forward  one forward pass of the network on a batch of `--batch_size` maps;
  cached   `vqlatent.priors.sample_codes_cached` drawing `--batch_size` maps;
  plain    `vqlatent.priors.sample_codes` (the reference `lax.scan` that reruns
           the whole network at each of the S^2 positions). Above
           `--plain_max_positions` positions it is not run; its time is
           estimated as S^2 forward passes (marked "est.").

Prints a markdown table with the ratios cached/forward (how many forward
passes one cached sampling costs) and plain/cached (the cache's speed-up).
Both samplers support every variant of the network (class and spatial
conditioning, attention blocks); choose them with the config overrides.
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
from ml_collections import config_flags

from vqlatent import backend
from vqlatent.codes import dataset as codes_data
from vqlatent.codes import layout
from vqlatent.priors import sampling
from vqlatent.trainers import pixelcnn

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

_DEFAULT_CONFIG = (
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "pixelcnn.py") + ":mnist"
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Prior config (model and prior fields).", lock_config=True
)
_SIZES = flags.DEFINE_list("sizes", ["8", "16", "32"], "Code-map sizes S (S x S maps).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Code maps drawn at once.")
_NUM_CODES = flags.DEFINE_integer("num_codes", 512, "K, the codebook size.")
_COND_FACTOR = flags.DEFINE_integer(
    "cond_factor", 2, "Conditioning maps are S / cond_factor (conditioned priors)."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (the median is reported).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the rows to this JSON file.")
_PLAIN_MAX = flags.DEFINE_integer(
    "plain_max_positions", 256, "Run the plain sampler only up to this many positions; estimate it above."
)


def _spec(config, size: int) -> codes_data.CodesDatasetSpec:
    """A codes-dataset spec with the modelled level (and its conditioning level) at `size`."""
    levels = {config.prior.level: layout.LevelSpec((size, size), _NUM_CODES.value)}
    cond_level = config.prior.conditioning_level
    if cond_level is not None:
        if size % _COND_FACTOR.value:
            raise ValueError(f"--sizes: {size} is not a multiple of --cond_factor={_COND_FACTOR.value}.")
        cond_size = size // _COND_FACTOR.value
        levels[cond_level] = layout.LevelSpec((cond_size, cond_size), _NUM_CODES.value)
    num_classes = config.data.num_classes if config.prior.class_conditional else None
    return codes_data.CodesDatasetSpec(
        image_shape=(size, size, 1),
        num_classes=num_classes,
        num_train=1,
        num_eval=1,
        levels=levels,
        codes_dir="",
    )


def _timed(fn, *args) -> tuple[float, list[float], object]:
    """(compile seconds, run seconds of each repeat, the output) of jitted `fn` on `args`."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    output = jax.block_until_ready(compiled(*args))  # Warm-up run.
    runs = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, runs, output


def _bench(config, size: int) -> dict[str, float | bool | int]:
    model, _, cond_level = pixelcnn.build_model(config, _spec(config, size))
    batch = _BATCH.value
    rng = np.random.default_rng(size)
    codes = jnp.asarray(rng.integers(0, model.num_codes, (batch, size, size)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, model.num_classes, batch), jnp.int32) if model.num_classes else None
    cond = None
    if cond_level is not None:
        cond_size = size // _COND_FACTOR.value
        cond = jnp.asarray(rng.integers(0, model.cond_num_codes, (batch, cond_size, cond_size)), jnp.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), codes, labels, cond)
    key, temperature = jax.random.PRNGKey(1), jnp.float32(1.0)
    sampling.check_sampling_inputs(model, (size, size), batch, labels, cond, 1.0)
    forward = jax.jit(lambda v, c, l, cc: model.apply(v, c, l, cc))
    out = {"positions": size * size, "params": sum(x.size for x in jax.tree.leaves(variables))}
    out["forward_compile"], runs, _ = _timed(forward, variables, codes, labels, cond)
    out["forward"] = statistics.median(runs)
    # The samplers' jitted cores (the public wrappers add only host-side input checks).
    cached = jax.jit(
        lambda v, k, l, cc, t: sampling._sample_cached(model, (size, size), batch, v, k, l, cc, t)
    )  # pylint: disable=protected-access
    out["cached_compile"], runs, cached_codes = _timed(cached, variables, key, labels, cond, temperature)
    out["cached"] = statistics.median(runs)
    out["plain_estimated"] = size * size > _PLAIN_MAX.value
    out["codes_equal"] = None  # Checked only where the plain sampler runs.
    if out["plain_estimated"]:
        out["plain"], out["plain_compile"] = size * size * out["forward"], float("nan")
    else:
        plain = jax.jit(
            lambda v, k, l, cc, t: sampling._sample_plain(model, (size, size), batch, v, k, l, cc, t)
        )  # pylint: disable=protected-access
        out["plain_compile"], runs, plain_codes = _timed(plain, variables, key, labels, cond, temperature)
        out["plain"] = statistics.median(runs)
        # The cache is an implementation detail: same key, same codes, position by position.
        out["codes_equal"] = bool(np.array_equal(np.asarray(cached_codes), np.asarray(plain_codes)))
    return out


def main(argv):
    del argv
    config = _CONFIG.value
    sizes = [int(s) for s in _SIZES.value]
    m = config.model
    print(
        f"prior level={config.prior.level} K={_NUM_CODES.value} channels={m.channels} layers={m.num_layers} "
        f"attention_layers={tuple(m.attention_layers)} class_conditional={config.prior.class_conditional} "
        f"conditioning_level={config.prior.conditioning_level} batch={_BATCH.value} "
        f"repeats={_REPEATS.value} (median) devices={jax.device_count()} ({jax.devices()[0].platform})"
    )
    print()
    print(
        "| codes | params | forward (s) | cached (s) | plain (s) | cached / forward | plain / cached "
        "| compile forward / cached / plain (s) | codes equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in sizes:
        r = _bench(config, size)
        rows.append({"size": size, "batch_size": _BATCH.value, **r})
        plain = f"{r['plain']:.3f}" + (" est." if r["plain_estimated"] else "")
        plain_compile = "-" if r["plain_estimated"] else f"{r['plain_compile']:.1f}"
        print(
            f"| {size}x{size} | {r['params']:,} | {r['forward']:.4f} | {r['cached']:.3f} | {plain} "
            f"| {r['cached'] / r['forward']:.1f} | {r['plain'] / r['cached']:.1f}"
            + (" est." if r["plain_estimated"] else "")
            + f" | {r['forward_compile']:.1f} / {r['cached_compile']:.1f} / {plain_compile} "
            + f"| {'-' if r['codes_equal'] is None else r['codes_equal']} |",
            flush=True,
        )
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    if any(r["codes_equal"] is False for r in rows):
        raise SystemExit("The cached sampler's codes differ from the plain sampler's (see the table).")


if __name__ == "__main__":
    app.run(main)
