r"""Throughput of a loaded model (`vqlatent.load`): images/s of encode, decode, reconstruct, sample and
generate, beside the jitted eval step of its task on the same batch (the speed they should match).

  taskset -c 1 python benchmarks/model_bench.py --model=pretrained:mnist_vqvae2_chain [--batch=256]
  python benchmarks/model_bench.py --model=pretrained:digits_vqvae2_chain --quick    # a smoke run

Autoencoders: `encode`, `decode`, `reconstruct` against the task's jitted `eval_step` (which encodes,
decodes and sums the errors) on a batch of `--batch` random images of the training size. Prior
chains: the same for their autoencoder, and `sample` (`--sample_batch` images, the chain's cached
samplers and the decoder). InfoGAN: `generate` and `infer` against the jitted generator. Prints one
markdown table; the medians of `--repeats` calls after a warm-up call (which compiles).
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import numpy as np

import vqlatent
from benchmarks.bench_timing import median_seconds
from vqlatent import backend
from vqlatent.data.device import to_model_input
from vqlatent.models.autoencoder import Autoencoder
from vqlatent.models.prior_chain import PriorChain

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.


def _rows(model, batch: int, sample_batch: int, repeats: int) -> list[tuple[str, int, float]]:
    """(what, images per call, seconds per call)."""
    rows = []
    ae = model.autoencoder if isinstance(model, PriorChain) else model
    if isinstance(ae, Autoencoder):
        h, w, c = ae.image_shape
        images = (np.random.default_rng(0).random((batch, h, w, c)) * 255).astype(np.uint8)
        codes = ae.encode(images)
        task, state = ae.task, ae.state
        eval_step = jax.jit(lambda s, b: task.eval_step(s, to_model_input(b)))
        eval_batch = {
            "image": images,
            "label": np.zeros((batch,), np.int32),
            "mask": np.ones((batch,), np.float32),
        }
        rows += [
            (
                "eval step (jitted, the reference)",
                batch,
                median_seconds(eval_step, state, eval_batch, repeats=repeats),
            ),
            ("encode", batch, median_seconds(ae.encode, images, repeats=repeats)),
            ("decode", batch, median_seconds(ae.decode, codes, repeats=repeats)),
            ("reconstruct", batch, median_seconds(ae.reconstruct, images, repeats=repeats)),
        ]
    if isinstance(model, PriorChain):
        n = sample_batch

        def sample():
            return model.sample(n, seed=0, batch_size=n).images

        rows.append(
            (f"sample (class -> codes -> pixels, batch {n})", n, median_seconds(sample, repeats=repeats))
        )
    if not isinstance(ae, Autoencoder):  # InfoGAN.
        gan = model
        h, w, c = gan.image_shape
        images = (np.random.default_rng(0).random((batch, h, w, c)) * 255).astype(np.uint8)
        latents = gan.latents(batch, seed=0)
        generator = jax.jit(gan.task.generate)
        rows += [
            (
                "generator (jitted, the reference)",
                batch,
                median_seconds(generator, gan.state, latents, repeats=repeats),
            ),
            ("generate", batch, median_seconds(lambda: gan.generate(n=batch, seed=0), repeats=repeats)),
            ("infer", batch, median_seconds(gan.infer, images, repeats=repeats)),
        ]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="pretrained:digits_vqvae2_chain", help="anything vqlatent.load takes"
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sample_batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="batch 8, sample batch 4, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.sample_batch, args.repeats = 8, 4, 1
    model = vqlatent.load(args.model)
    print(f"{args.model}: {model!r}")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, jax {jax.__version__}"
    )
    print("\n| what | images per call | ms per call | images/s |\n|---|---|---|---|")
    for what, n, seconds in _rows(model, args.batch, args.sample_batch, args.repeats):
        print(f"| {what} | {n} | {seconds * 1e3:.1f} | {n / seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
