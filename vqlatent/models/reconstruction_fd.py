r"""Reconstruction Frechet distance (rFD): how far an autoencoder's reconstructions are from real
images, in the eyes of the project's classifier (in place of Inception: no downloads).

  python -m vqlatent.models.reconstruction_fd --workdir=W --classifier_workdir=C \
      [--step=N] [--batch_size=500] [--num_examples=N]

W is the workdir of a VQ-VAE, VQ-VAE-2 or VQGAN (any task with `encode_codes`/`decode_codes`),
C that of a classifier trained on the same data (`configs/classifier.py:mnist`). Every image x of
the eval split is reconstructed, x_hat = D(codes(x)) clipped to [0, 1], and both go through the
classifier; with F(S) its penultimate features of a set S and FD the Frechet distance of Gaussians
fitted to two feature sets (`sample_quality.frechet_distance`):

  rfd          FD(F(x_hat of all), F(x of all))       0 for perfect reconstructions
  rfd_halves   FD(F(x_hat of half A), F(x of half B))  perfect reconstructions: rfd_floor
  rfd_floor    FD(F(x of half A), F(x of half B))      two real halves: the sampling floor

with A, B the even- and odd-numbered images of the split. Also: the classifier's accuracy on the
reconstructions (`recon_accuracy`) and on the real images, and the reconstructions' MSE and PSNR.
Writes W/eval/rfd_<step>.json and prints it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from vqlatent import data as data_lib
from vqlatent.data.device import images_to_float
from vqlatent.evaluation import metrics as metric_lib
from vqlatent.evaluation import sample_quality
from vqlatent.trainers import workdir as workdir_lib

CLASSIFIER_HINT = (
    "python -m vqlatent.main --config=configs/classifier.py:mnist --config.data.manual_dir=... "
    "--workdir=CLASSIFIER_WORKDIR"
)


def frechet_distances(real_features: np.ndarray, recon_features: np.ndarray) -> dict[str, float]:
    """rfd, rfd_halves and rfd_floor (module docstring) of paired feature sets (N, D), N >= 4."""
    real_features, recon_features = np.asarray(real_features), np.asarray(recon_features)
    if real_features.shape != recon_features.shape:
        raise ValueError(
            f"Real and reconstructed features must pair up: shapes {real_features.shape} and "
            f"{recon_features.shape}."
        )

    def fd(a: np.ndarray, b: np.ndarray) -> float:
        return sample_quality.frechet_distance(
            *sample_quality.gaussian_statistics(a), *sample_quality.gaussian_statistics(b)
        )

    return {
        "rfd": fd(recon_features, real_features),
        "rfd_halves": fd(recon_features[0::2], real_features[1::2]),
        "rfd_floor": fd(real_features[0::2], real_features[1::2]),
    }


def _load_classifier(path: str):
    try:
        model_name = workdir_lib.load_config(path).get("model_name")
    except FileNotFoundError:
        raise ValueError(
            f"--classifier_workdir={path!r} has no config.json: not a trained classifier ({CLASSIFIER_HINT})."
        ) from None
    if model_name != "classifier":
        raise ValueError(
            f"--classifier_workdir={path!r} holds a model_name={model_name!r} run, not a classifier "
            f"({CLASSIFIER_HINT})."
        )
    classifier = workdir_lib.load(path)
    state, _ = classifier.restore()
    return classifier, state


def reconstruction_fd(
    workdir: str,
    classifier_workdir: str,
    step: int | None = None,
    batch_size: int = 500,
    num_examples: int | None = None,
) -> dict[str, Any]:
    """The rFD figures of the autoencoder in `workdir` (checkpoint `step`, default the newest);
    writes `workdir/eval/rfd_<step>.json` and returns its contents."""
    start = time.time()
    run = workdir_lib.load(workdir)
    task = run.task
    if not hasattr(task, "encode_codes") or not hasattr(task, "decode_codes"):
        raise ValueError(
            f"--workdir={workdir!r} holds a {run.config.model_name!r} model, not an autoencoder."
        )
    classifier, clf_state = _load_classifier(classifier_workdir)
    if tuple(classifier.spec.image_shape) != tuple(run.spec.image_shape):
        raise ValueError(
            f"The classifier in {classifier_workdir} takes {tuple(classifier.spec.image_shape)} images, the "
            f"autoencoder's are {tuple(run.spec.image_shape)}: train the classifier on the same data."
        )
    state, step = run.restore(step)

    def reconstruct_and_classify(state, clf_state, images):
        images = images_to_float(images)
        recon = jnp.clip(task.decode_codes(state, task.encode_codes(state, images)), 0.0, 1.0)
        real_out = classifier.task.classify(clf_state, images)
        recon_out = classifier.task.classify(clf_state, recon)
        sq_err = jnp.sum(jnp.square(recon - images), axis=(1, 2, 3))
        return real_out, recon_out, sq_err

    compute = jax.jit(reconstruct_and_classify)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("real_f", "recon_f", "real_l", "recon_l", "labels", "sq")
    }
    batches = data_lib.make_eval_batches(
        run.config.data, global_batch_size=batch_size, num_examples=num_examples
    )
    for batch in batches:
        keep = np.asarray(batch["mask"]) > 0
        real_out, recon_out, sq_err = jax.device_get(compute(state, clf_state, batch["image"]))
        parts["real_f"].append(np.asarray(real_out["features"])[keep])
        parts["recon_f"].append(np.asarray(recon_out["features"])[keep])
        parts["real_l"].append(np.asarray(real_out["logits"])[keep])
        parts["recon_l"].append(np.asarray(recon_out["logits"])[keep])
        parts["labels"].append(np.asarray(batch["label"])[keep])
        parts["sq"].append(np.asarray(sq_err)[keep])
    data = {k: np.concatenate(v) for k, v in parts.items()}
    mse = float(np.sum(data["sq"]) / (len(data["sq"]) * np.prod(run.spec.image_shape)))
    result = {
        **frechet_distances(data["real_f"], data["recon_f"]),
        "recon_accuracy": sample_quality.label_accuracy(
            sample_quality.predicted_labels(data["recon_l"]), data["labels"]
        ),
        "real_accuracy": sample_quality.label_accuracy(
            sample_quality.predicted_labels(data["real_l"]), data["labels"]
        ),
        "mse": mse,
        "psnr": metric_lib.psnr(mse),
        "num_examples": len(data["labels"]),
        "feature_dim": int(data["real_f"].shape[1]),
        "step": int(step),
        "workdir": os.path.abspath(workdir),
        "classifier_workdir": os.path.abspath(classifier_workdir),
        "classifier_step": int(clf_state.step),
        "seconds": time.time() - start,
    }
    path = os.path.join(workdir, "eval", f"rfd_{step:08d}.json")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    logging.info("rFD of %s at step %d: %s (written to %s)", workdir, step, result, path)
    return result


def _define_flags() -> dict[str, flags.FlagHolder]:
    """The command line's flags, defined only when this module runs as a program (so importing it
    beside `vqlatent.main`, which owns `--workdir`, defines nothing twice)."""
    return dict(
        workdir=flags.DEFINE_string("workdir", None, "The autoencoder's workdir."),
        classifier_workdir=flags.DEFINE_string("classifier_workdir", None, "The classifier's workdir."),
        step=flags.DEFINE_integer("step", None, "The checkpoint (default: the newest)."),
        batch_size=flags.DEFINE_integer("batch_size", 500, "Images per batch."),
        num_examples=flags.DEFINE_integer(
            "num_examples", None, "Only the first N eval images (default: all)."
        ),
    )


if __name__ == "__main__":
    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["workdir", "classifier_workdir"])
    app.run(
        lambda argv: print(
            json.dumps(reconstruction_fd(*(_FLAGS[name].value for name in _FLAGS)), indent=2, sort_keys=True)
        )
    )
