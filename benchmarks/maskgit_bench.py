r"""Sampling throughput of a two-level code chain: the cached PixelCNN sampler against MaskGIT decoding.

  nice taskset -c 0 python benchmarks/maskgit_bench.py [--variant=mnist] [--batch_size=100] \
      [--steps=4,8,12] [--repeats=3] [--json_out=FILE]

Builds the top and bottom priors of `configs/pixelcnn.py:VARIANT` and `configs/maskgit.py:VARIANT`
(class-conditional top, bottom conditioned on the top codes) for the code shapes of that variant's
VQ-VAE-2 (mnist: top 7x7 and bottom 14x14 codes of K=512; digits: 2x2 and 4x4 of K=64; or
`--top_size`, `--num_codes`), with random parameters (the cost of sampling does not depend on
what the network learned). Times, jitted, compile excluded (and reported separately),
`block_until_ready`, median of `--repeats`:

  pixelcnn        `vqlatent.priors.sample_codes_cached` for each level (H W sequential positions);
  maskgit T=...   `vqlatent.priors.maskgit_sampling.sample_codes` with T steps for each level
                  (T full-map network evaluations per level).

and prints, per sampler, the seconds per level, the chain's codes per second (`images/s`: both
levels of `--batch_size` hierarchies; the VQ-VAE decoder, the same for both, is left out) and the
speed-up over the PixelCNN. Run it on one core (`taskset -c 0`) for the figures docs/maskgit.md
asks for.
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

from vqlatent import backend
from vqlatent.codes import dataset as codes_dataset
from vqlatent.codes import layout
from vqlatent.priors import maskgit_sampling, sampling
from vqlatent.trainers import maskgit as maskgit_task
from vqlatent.trainers import pixelcnn

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

_VARIANT = flags.DEFINE_enum("variant", "mnist", ["digits", "mnist"], "Config variant of both priors.")
_TOP_SIZE = flags.DEFINE_integer(
    "top_size", None, "Top code map size (default: the variant's; bottom is 2x)."
)
_NUM_CODES = flags.DEFINE_integer("num_codes", None, "K of both levels (default: the variant's).")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Hierarchies drawn at once.")
_STEPS = flags.DEFINE_list("steps", ["4", "8", "12"], "MaskGIT decoding steps T to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (the median is reported).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the rows to this JSON file.")

SHAPES = {"mnist": (7, 512), "digits": (2, 64)}  # Top size, K (configs/vqvae2.py's variants).


def _load_config(name: str, arg: str):
    import importlib.util  # pylint: disable=g-import-not-at-top

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _timed(fn, *args) -> tuple[float, float]:
    """(compile seconds, median run seconds) of jitted `fn` on `args`."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # Warm-up run.
    runs = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs)


def main(argv):
    del argv
    variant = _VARIANT.value
    top_size, num_codes = SHAPES[variant]
    top_size, num_codes = _TOP_SIZE.value or top_size, _NUM_CODES.value or num_codes
    sizes = {"top": (top_size, top_size), "bottom": (2 * top_size, 2 * top_size)}
    spec = codes_dataset.CodesDatasetSpec(
        image_shape=(top_size, top_size, 1),
        num_classes=10,
        num_train=1,
        num_eval=1,
        levels={level: layout.LevelSpec(shape, num_codes) for level, shape in sizes.items()},
        codes_dir="",
    )
    batch = _BATCH.value
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    top_codes = jnp.asarray(rng.integers(0, num_codes, (batch, *sizes["top"])), jnp.int32)
    key, temperature = jax.random.PRNGKey(1), jnp.float32(1.0)
    print(
        f"{variant}: top {sizes['top']} / bottom {sizes['bottom']} codes, K={num_codes}, batch {batch}, "
        f"median of {_REPEATS.value}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{len(os.sched_getaffinity(0))} core(s) allowed"
    )
    rows = []
    samplers = [("pixelcnn", None)] + [("maskgit", int(t)) for t in _STEPS.value]
    for kind, steps in samplers:
        row = {
            "sampler": kind if steps is None else f"maskgit T={steps}",
            "params": {},
            "seconds": {},
            "compile": {},
        }
        for level in ("top", "bottom"):
            arg = f"{variant},level={level}"
            cond = None if level == "top" else top_codes
            if kind == "pixelcnn":
                model, _, _ = pixelcnn.build_model(_load_config("pixelcnn", arg), spec)
            else:
                model, _, _ = maskgit_task.build_model(_load_config("maskgit", arg), spec)
            dummy = jnp.zeros((batch, *sizes[level]), jnp.int32)
            variables = jax.jit(model.init)(jax.random.PRNGKey(0), dummy, labels, cond)
            row["params"][level] = int(sum(x.size for x in jax.tree.leaves(variables)))
            if kind == "pixelcnn":

                def fn(v, k, l, c, t, model=model, shape=sizes[level]):
                    return sampling._sample_cached(model, shape, batch, v, k, l, c, t)  # pylint: disable=protected-access

                args = (variables, key, labels, cond, temperature)
            else:

                def fn(v, k, l, c, t, ct, model=model, shape=sizes[level], steps=steps):
                    return maskgit_sampling._decode(model, shape, batch, steps, "cosine", v, k, l, c, t, ct)  # pylint: disable=protected-access

                args = (variables, key, labels, cond, temperature, jnp.float32(4.5))
            row["compile"][level], row["seconds"][level] = _timed(fn, *args)
        row["chain_seconds"] = sum(row["seconds"].values())
        row["images_per_second"] = batch / row["chain_seconds"]
        rows.append(row)
    base = rows[0]["images_per_second"]
    print()
    print(
        "| sampler | params top / bottom | top (s) | bottom (s) | images/s | vs PixelCNN | compile top / bottom (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["images_per_second"] / base
        print(
            f"| {r['sampler']} | {r['params']['top']:,} / {r['params']['bottom']:,} | {r['seconds']['top']:.3f} "
            f"| {r['seconds']['bottom']:.3f} | {r['images_per_second']:.1f} | {r['speedup']:.1f}x "
            f"| {r['compile']['top']:.1f} / {r['compile']['bottom']:.1f} |",
            flush=True,
        )
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
