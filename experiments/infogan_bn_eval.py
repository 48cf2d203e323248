r"""InfoGAN categorical accuracy with D's running BatchNorm averages against per-batch statistics.

  python experiments/infogan_bn_eval.py --workdir=/runs/infogan_mnist_seed0 [--batch_size=100]

The evaluation of `vqlatent.trainers.infogan` classifies the real test digits
with D's running averages, which follow the generated batches Q is trained on.
The paper's released code never runs D in test mode; this script asks whether
that matters: it restores the newest checkpoint of an InfoGAN workdir and prints
the matched test accuracy of the first categorical code both ways (running
averages; each test batch normalised with its own statistics, as in training).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from vqlatent import data as data_lib
from vqlatent import infogan as ig
from vqlatent.data.device import images_to_float
from vqlatent.trainers.loop import Runner

_WORKDIR = flags.DEFINE_string("workdir", None, "An InfoGAN workdir with a checkpoint.", required=True)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 100, "Test batch size (the statistics' batch; 100 divides the 10,000 MNIST test digits)."
)


def main(argv) -> None:
    del argv
    with open(os.path.join(_WORKDIR.value, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.model_name != "infogan":
        raise SystemExit(f"{_WORKDIR.value} holds a {config.model_name!r} model, not an InfoGAN.")
    runner = Runner(config, _WORKDIR.value)
    state, step = runner.restore_for_eval()
    task = runner.task
    variables = task._variables(state, "discriminator")  # pylint: disable=protected-access

    @functools.partial(jax.jit, static_argnums=1)
    def predict(images, batch_statistics: bool):
        images = images_to_float(images)
        if batch_statistics:
            out, _ = task.discriminator.apply(variables, images, train=True, mutable=["batch_stats"])
        else:
            out = task.discriminator.apply(variables, images, train=False)
        return jnp.argmax(task.q_posterior(out["q_outputs"]).categorical_logits[0], axis=-1)

    num_categories = task.latent_spec.categorical_sizes[0]
    for batch_statistics in (False, True):
        confusion = np.zeros((num_categories, task.num_classes))
        for batch in data_lib.make_eval_batches(config.data, global_batch_size=_BATCH_SIZE.value):
            predicted = predict(jnp.asarray(batch["image"]), batch_statistics)
            confusion += np.asarray(
                ig.confusion_matrix(
                    predicted,
                    jnp.asarray(batch["label"]),
                    num_categories,
                    task.num_classes,
                    jnp.asarray(batch["mask"]),
                )
            )
        accuracy, _ = ig.matched_accuracy(confusion)
        kind = "per-batch statistics" if batch_statistics else "running averages"
        print(
            f"step {step}, {kind}: categorical accuracy {accuracy:.4f} on {int(confusion.sum())} test images"
        )


if __name__ == "__main__":
    app.run(main)
