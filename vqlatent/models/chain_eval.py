r"""`--mode=sample_eval` for any class -> codes -> pixels chain `vqlatent.load` takes: a top prior's
workdir, an export or pretrained:NAME, with lower priors from workdirs or from another chain (in place
of an export's own with --lower_priors).

  python -m vqlatent.models.chain_eval --model=M --classifier_workdir=C --output_dir=OUT \
      [--lower_priors=bottom=pretrained:mnist_vqvae2_chain] [--num_steps=T] [--choice_temperature=C] \
      [--temperature=1.0] [--per_class=100] [--seed=0] [--batch_size=100] [--manual_dir=MNIST]

So a new prior is judged in the chain it will be used in, e.g. a MaskGIT top prior trained on the
codes of `pretrained:mnist_vqvae2_chain` (`--mode=encode --config.encode.input=training_data`) above
that chain's PixelCNN bottom prior, against the chain itself. It draws `per_class` samples per class
(`PriorChain.sample`; `num_steps` is the MaskGIT priors' decoding steps T, `choice_temperature` the
scale of their confidences' Gumbel noise), classifies them with the classifier checkpoint C and
reports what `--mode=sample_eval` reports
(`vqlatent.priors.sample_eval.judge_samples`: label accuracy and the Frechet distance of the
classifier's features, each next to its floor on as many held-out real images), against the real
eval split of the autoencoder's training data (its recorded data config; `--manual_dir` /
`--data_dir` say where its files are here). Writes OUT/sample_eval.json and OUT/sample_eval.png (one
row per class) and prints the metrics.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging

from vqlatent.evaluation import images as image_lib
from vqlatent.models import loading
from vqlatent.models.prior_chain import PriorChain
from vqlatent.priors import sample_eval
from vqlatent.trainers import workdir as workdir_lib
from vqlatent.utils import errors


class ChainEvalError(errors.UserError, ValueError):
    """A bad argument of the chain evaluation."""


def evaluate_chain(
    chain: PriorChain,
    classifier_workdir: str,
    *,
    per_class: int = 100,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 100,
    num_steps: int | None = None,
    choice_temperature: float | None = None,
    data_overrides: dict[str, str] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """(metrics, the samples float32 [num_classes * per_class, H, W, C] in [0, 1], class by class)
    of `chain`: what `--mode=sample_eval` reports for the same priors, seed and batch size."""
    if not isinstance(chain, PriorChain):
        raise ChainEvalError(
            f"The model is a {getattr(chain, 'family', type(chain).__name__)}, not a class -> codes -> "
            f"pixels chain: give a top prior's workdir, a chain's export or pretrained:NAME."
        )
    if not chain.num_classes:
        raise ChainEvalError("The chain's top prior is not class-conditional: there are no labels to judge.")
    for name, value in (("per_class", per_class), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ChainEvalError(f"{name}={value!r}: must be an integer >= 1.")
    classifier, clf_state = workdir_lib.load_classifier(
        classifier_workdir, "classifier_workdir", "python -m vqlatent.models.chain_eval"
    )
    autoencoder = chain.autoencoder.component
    sample_eval.check_classifier(
        classifier, classifier_workdir, chain.num_classes, autoencoder.spec.image_shape, autoencoder.source
    )
    data_config = ml_collections.ConfigDict(autoencoder.config.data.to_dict())
    for field, value in (data_overrides or {}).items():
        if value:
            data_config[field] = os.path.abspath(value)
    timing = {}

    def draw(labels: np.ndarray) -> np.ndarray:
        tic = time.time()
        out = chain.sample(
            len(labels), labels=labels, temperature=temperature, seed=seed, batch_size=batch_size,
            num_steps=num_steps, choice_temperature=choice_temperature,
        )  # fmt: skip
        timing["sample_seconds"] = time.time() - tic
        return out.images

    metrics, images, _ = sample_eval.judge_samples(
        draw, classifier, clf_state, data_config, chain.num_classes, int(per_class), int(batch_size)
    )
    metrics.update(
        {
            **timing,
            "temperature": float(temperature),
            "seed": int(seed),
            "num_steps": num_steps,
            "choice_temperature": choice_temperature,
            "priors": {p.task.level: f"{p.source} (step {p.step})" for p in chain.priors},
            "prior_kinds": {p.task.level: p.config.model_name for p in chain.priors},
            "autoencoder": f"{autoencoder.source} (step {autoencoder.step})",
            "classifier_workdir": classifier_workdir,
        }
    )
    return metrics, images


def main(_: Any) -> None:
    f = _FLAGS
    chain = loading.load(f["model"].value, lower_priors=f["lower_priors"].value)
    metrics, images = evaluate_chain(
        chain,
        f["classifier_workdir"].value,
        per_class=f["per_class"].value,
        temperature=f["temperature"].value,
        seed=f["seed"].value,
        batch_size=f["batch_size"].value,
        num_steps=f["num_steps"].value,
        choice_temperature=f["choice_temperature"].value,
        data_overrides={"manual_dir": f["manual_dir"].value, "data_dir": f["data_dir"].value},
    )
    out = os.path.abspath(f["output_dir"].value)
    os.makedirs(out, exist_ok=True)
    per_class = int(f["per_class"].value)
    image_lib.save_png(
        os.path.join(out, "sample_eval.png"),
        image_lib.class_grid(images, chain.num_classes, per_class, min(per_class, 10)),
    )
    with open(os.path.join(out, "sample_eval.json"), "w") as fh:
        json.dump(metrics, fh, indent=2, sort_keys=True)
    logging.info("Wrote %s/sample_eval.json and sample_eval.png.", out)
    print(json.dumps({k: v for k, v in metrics.items() if k != "sample_per_class_accuracy"}, indent=2))


def _main_printing_user_errors(argv: Any) -> None:
    """`main`, with a usage error printed as its one-paragraph message (as `vqlatent.main` does)."""
    try:
        main(argv)
    except Exception as e:  # pylint: disable=broad-except
        if not errors.is_user_error(e):
            raise
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.exit(1)


def _define_flags() -> dict[str, flags.FlagHolder]:
    return dict(
        model=flags.DEFINE_string(
            "model", None, "The chain: a top prior's workdir, an export or pretrained:NAME."
        ),
        lower_priors=flags.DEFINE_string(
            "lower_priors", None, "LEVEL=PATH[,...]: lower priors (workdirs, exports, pretrained:NAME)."
        ),
        classifier_workdir=flags.DEFINE_string("classifier_workdir", None, "The classifier's workdir."),
        output_dir=flags.DEFINE_string("output_dir", None, "Where sample_eval.json and .png go."),
        per_class=flags.DEFINE_integer("per_class", 100, "Samples per class."),
        temperature=flags.DEFINE_float("temperature", 1.0, "Sampling temperature."),
        seed=flags.DEFINE_integer("seed", 0, "Sampling seed."),
        batch_size=flags.DEFINE_integer("batch_size", 100, "Samples per batch."),
        num_steps=flags.DEFINE_integer("num_steps", None, "Decoding steps of the MaskGIT priors."),
        choice_temperature=flags.DEFINE_float(
            "choice_temperature", None, "Gumbel noise scale on the MaskGIT priors' confidences."
        ),
        manual_dir=flags.DEFINE_string(
            "manual_dir", None, "The training data's files here (data.manual_dir)."
        ),
        data_dir=flags.DEFINE_string("data_dir", None, "The training data's data_dir here."),
    )


if __name__ == "__main__":
    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["model", "classifier_workdir", "output_dir"])
    app.run(_main_printing_user_errors)
