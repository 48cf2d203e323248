"""`--mode=sample_eval`: class-conditional samples judged by the project's classifier.

Run with the top prior's config and workdir (as `--mode=sample`, `vqlatent.priors.generate`).
It draws `sample.eval_per_class` samples per class, classifies them with the checkpoint in
`sample.classifier_workdir` (`configs/classifier.py`) and reports the fraction classified as
their label and the Frechet distance of the classifier's features to the real eval split's
(`vqlatent.evaluation.sample_quality`), next to the same figures for as many held-out real
images: what perfect samples would score. Writes `<workdir>/eval/sample_eval.json` and
`<workdir>/images/sample_eval.png`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from vqlatent import data as data_lib
from vqlatent.data.device import images_to_float
from vqlatent.evaluation import images as image_lib
from vqlatent.evaluation import sample_quality
from vqlatent.priors import generate
from vqlatent.trainers import base
from vqlatent.trainers import workdir as workdir_lib


def _classify(
    classify: Any, state: base.TrainState, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of images, `batch_size` at a time (padded: one compiled shape)."""
    batch = min(batch_size, len(images))
    logits, features = [], []
    for _, start, stop in generate.padded_batches(len(images), batch):
        out = jax.device_get(classify(state, generate.pad_rows(images[start:stop], batch)))
        logits.append(np.asarray(out["logits"])[: stop - start])
        features.append(np.asarray(out["features"])[: stop - start])
    return np.concatenate(logits), np.concatenate(features)


def _classify_real_images(classify: Any, state: base.TrainState, data_config: Any, batch_size: int):
    """(logits, features, labels) of the whole real eval split of `data_config` (padding dropped)."""
    logits, features, labels = [], [], []
    for batch in data_lib.make_eval_batches(data_config, global_batch_size=batch_size):
        keep = np.asarray(batch["mask"]) > 0
        out = jax.device_get(classify(state, batch["image"]))
        logits.append(np.asarray(out["logits"])[keep])
        features.append(np.asarray(out["features"])[keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(logits), np.concatenate(features), np.concatenate(labels)


def check_classifier(
    classifier: workdir_lib.Workdir, where: str, num_classes: int, image_shape: Any, model: str
) -> None:
    """A classifier of the samples' image shape and classes, else a ValueError naming both."""
    image_shape = tuple(image_shape)
    if classifier.task.num_classes != num_classes or tuple(classifier.spec.image_shape) != image_shape:
        raise ValueError(
            f"The classifier in {where!r} takes {tuple(classifier.spec.image_shape)} images of "
            f"{classifier.task.num_classes} classes, but the samples are {image_shape} images of "
            f"{num_classes} classes (the autoencoder in {model}): train the classifier on the "
            f"autoencoder's dataset."
        )


def judge_samples(
    draw: Callable[[np.ndarray], np.ndarray],
    classifier: workdir_lib.Workdir,
    clf_state: base.TrainState,
    data_config: Any,
    num_classes: int,
    per_class: int,
    batch_size: int,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Draws `per_class` samples per class with `draw(labels) -> uint8 images` and judges them with
    the classifier against the real eval split of `data_config`; returns (metrics, images, labels).

    The real images are classified first, so a split too small for `per_class` fails before any
    sampling. Metrics: see `sample_eval_mode`.
    """
    # Images as the loop hands them to a model: uint8 batches become float32 in [0, 1] on the device.
    classify = jax.jit(lambda state, images: classifier.task.classify(state, images_to_float(images)))
    real_logits, real_features, real_labels = _classify_real_images(
        classify, clf_state, data_config, batch_size
    )
    reference, heldout = sample_quality.split_reference_and_heldout(real_labels, per_class, num_classes)
    reference_stats = sample_quality.gaussian_statistics(real_features[reference])

    labels = generate.class_labels(num_classes, per_class)
    images = draw(labels)
    sample_logits, sample_features = _classify(classify, clf_state, images, batch_size)
    sample_predictions = sample_quality.predicted_labels(sample_logits)
    real_predictions = sample_quality.predicted_labels(real_logits)
    metrics = {
        "sample_label_accuracy": sample_quality.label_accuracy(sample_predictions, labels),
        "sample_frechet_distance": sample_quality.frechet_distance(
            *sample_quality.gaussian_statistics(sample_features), *reference_stats
        ),
        "floor_label_accuracy": sample_quality.label_accuracy(
            real_predictions[heldout], real_labels[heldout]
        ),
        "floor_frechet_distance": sample_quality.frechet_distance(
            *sample_quality.gaussian_statistics(real_features[heldout]), *reference_stats
        ),
        "classifier_test_accuracy": sample_quality.label_accuracy(real_predictions, real_labels),
        "sample_per_class_accuracy": sample_quality.per_class_accuracy(
            sample_predictions, labels, num_classes
        ),
        "num_samples": len(labels),
        "eval_per_class": per_class,
        "num_reference": len(reference),
        "num_heldout": len(heldout),
        "feature_dim": int(sample_features.shape[1]),
        "batch_size": batch_size,
        "classifier_step": int(clf_state.step),
    }
    return metrics, images, labels


def sample_eval_mode(top: workdir_lib.Workdir) -> dict[str, Any]:
    """`--mode=sample_eval` of the top prior `top` (its config, task and workdir).

    Draws `sample.eval_per_class` hierarchies per class (as `--mode=sample`, with
    `sample.seed`), decodes them, and classifies them with the checkpoint in
    `sample.classifier_workdir`. The real eval split of the VQ-VAE's dataset is
    split (`sample_quality.split_reference_and_heldout`) into `eval_per_class`
    held-out images per class and a reference (all the others). Reports, in
    `<workdir>/eval/sample_eval.json`:

      sample_label_accuracy     samples classified as the class they were drawn for
      sample_frechet_distance   Frechet distance of the samples' classifier
                                features to the reference's
      floor_label_accuracy, floor_frechet_distance
                                the same for the held-out real images (as many,
                                same class balance): what perfect samples would score
      classifier_test_accuracy  the classifier on the whole real eval split

    and writes `<workdir>/images/sample_eval.png` (one row per class).
    Deterministic given the checkpoints and `sample.seed` (and `sample.batch_size`).
    """
    options = top.config.sample
    generate.check_sample_options(options, "sample_eval")
    num_classes = top.task.model.num_classes
    if not num_classes:
        raise ValueError(
            f"--mode=sample_eval judges class-conditional samples, but the prior in "
            f"{top.path} is unconditional (config.prior.class_conditional=False)."
        )
    start_time = time.time()
    classifier_workdir = options.get("classifier_workdir")
    classifier, clf_state = workdir_lib.load_classifier(
        classifier_workdir, "sample.classifier_workdir", "--mode=sample_eval"
    )
    hierarchy = generate.load_hierarchy(top)
    check_classifier(
        classifier, classifier_workdir, num_classes, hierarchy.vq.spec.image_shape, hierarchy.vq_workdir
    )

    per_class, batch_size = int(options.eval_per_class), int(options.batch_size)

    def draw(labels: np.ndarray) -> np.ndarray:
        key = jax.random.PRNGKey(options.seed)
        return generate.sample_images(hierarchy, labels, key, float(options.temperature), batch_size)[1]

    metrics, images, labels = judge_samples(
        draw, classifier, clf_state, hierarchy.vq.config.data, num_classes, per_class, batch_size
    )
    metrics.update(
        {
            "temperature": float(options.temperature),
            "seed": int(options.seed),
            "prior_workdirs": dict(zip([p["level"] for p in hierarchy.priors], hierarchy.prior_workdirs)),
            "prior_step": hierarchy.prior_step,
            "vqvae_workdir": hierarchy.vq_workdir,
            "vqvae_step": hierarchy.vq_step,
            "classifier_workdir": classifier_workdir,
            "seconds": time.time() - start_time,
        }
    )
    json_path = os.path.join(top.path, "eval", "sample_eval.json")
    image_path = os.path.join(top.path, "images", "sample_eval.png")
    if jax.process_index() == 0:
        num_cols = min(per_class, int(options.num_per_class))
        image_lib.save_png(image_path, image_lib.class_grid(images, num_classes, per_class, num_cols))
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
        with open(json_path + ".tmp", "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
        os.replace(json_path + ".tmp", json_path)
    logging.info(
        "sample_eval (%d samples, %d per class, temperature %g): samples classified as their "
        "label %.4f (held-out real images: %.4f), Frechet distance to the real reference %.4g "
        "(held-out real images: %.4g), classifier accuracy on the real eval split %.4f; "
        "written to %s and %s.",
        len(labels),
        per_class,
        float(options.temperature),
        metrics["sample_label_accuracy"],
        metrics["floor_label_accuracy"],
        metrics["sample_frechet_distance"],
        metrics["floor_frechet_distance"],
        metrics["classifier_test_accuracy"],
        json_path,
        image_path,
    )
    return {**metrics, "json": json_path, "images": image_path, "samples": images, "labels": labels}
