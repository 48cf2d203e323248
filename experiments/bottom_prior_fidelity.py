r"""Does a bottom prior keep the digit its top codes show? Bottom codes resampled below real top codes.

  python experiments/bottom_prior_fidelity.py --classifier_workdir=C --manual_dir=MNIST \
      [--model=pretrained:mnist_vqvae2_chain] [--maskgit=bottom=WORKDIR[,...]] [--num_steps=8,12] \
      [--num_images=1000] [--output_dir=OUT]

In a class -> codes -> pixels chain the bottom prior sees both the class label and the top codes
(VQ-VAE-2 section 3.3). Sample label accuracy rewards a bottom prior that draws the class whatever
the top codes show, which hides an unfaithful one. This script encodes the first `num_images` real
test images, keeps their top codes, resamples the bottom codes with each bottom prior and decodes:

- with the true label: how often the image is still classified as its digit, the PSNR of the
  resampled image against the reconstruction from the true codes, and the fraction of bottom
  codes equal to the encoder's;
- with a wrong label ((y + 1) mod 10, the conflict case): how often the decoded image is
  classified as the top codes' digit y, and how often as the wrong label. A bottom prior faithful
  to its top codes keeps y; one that follows the label overrides them.

The PixelCNN bottom of `--model` is always measured; `--maskgit` names MaskGIT bottom priors
(workdirs, exports) trained on the same model's codes, judged at each of `--num_steps`. Prints a
markdown table; with --output_dir writes fidelity.json and, per prior, a grid of the first ten
images (rows: original, reconstruction, resampled with the true label, resampled with the wrong one).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from absl import app, flags

from vqlatent import data as data_lib
from vqlatent.data.device import images_to_float
from vqlatent.evaluation import images as image_lib
from vqlatent.evaluation import metrics, sample_quality
from vqlatent.models import loading
from vqlatent.priors import generate, maskgit_sampling, sample_eval, sampling
from vqlatent.trainers import workdir as workdir_lib

_MODEL = flags.DEFINE_string("model", "pretrained:mnist_vqvae2_chain", "The chain (autoencoder + priors).")
_MASKGIT = flags.DEFINE_string("maskgit", None, "bottom=PATH[,bottom=PATH...]: MaskGIT bottom priors.")
_NUM_STEPS = flags.DEFINE_list("num_steps", ["8"], "Decoding steps T of the MaskGIT priors.")
_CLASSIFIER = flags.DEFINE_string("classifier_workdir", None, "The classifier's workdir.", required=True)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The MNIST idx files (data.manual_dir).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Real test images (a multiple of --batch_size).")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Images per sampled batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (batch b uses fold_in(seed, b)).")
_OUT = flags.DEFINE_string("output_dir", None, "Where fidelity.json and the grids go.")


def _real_test_images(chain, n: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    config = ml_collections.ConfigDict(chain.autoencoder.component.config.data.to_dict())
    if _MANUAL_DIR.value:
        config.manual_dir = os.path.abspath(_MANUAL_DIR.value)
    images, labels = [], []
    for b in data_lib.make_eval_batches(config, global_batch_size=batch, num_examples=n):
        keep = np.asarray(b["mask"]) > 0
        images.append(np.asarray(b["image"])[keep])
        labels.append(np.asarray(b["label"])[keep])
    return np.concatenate(images)[:n], np.concatenate(labels)[:n].astype(np.int32)


def _resample_bottom(spec, top: np.ndarray, labels: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """Bottom codes drawn by the prior `spec` below the given top codes, `batch` at a time (batch b
    with fold_in(seed, b)), at temperature 1."""
    out = []
    for b, start, stop in generate.padded_batches(len(labels), batch):
        rng, n = jax.random.fold_in(jax.random.PRNGKey(seed), b), stop - start
        if spec["kind"] == "maskgit":
            codes = maskgit_sampling.sample_level(spec, rng, n, labels[start:stop], top[start:stop], 1.0)
        else:
            codes = sampling.sample_codes_cached(
                spec["model"], spec["variables"], rng, tuple(spec["shape"]), n,
                labels=labels[start:stop], cond_codes=top[start:stop], temperature=1.0,
            )  # fmt: skip
        out.append(np.asarray(jax.device_get(codes)))
    return np.concatenate(out)


def _mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of each image's PSNR (dB, [0, 1] scale)."""
    mse = np.mean((a.astype(np.float64) - b) ** 2, axis=(1, 2, 3))
    return float(np.mean([metrics.psnr(float(m)) for m in mse]))


def main(argv) -> None:
    del argv
    chain = loading.load(_MODEL.value)
    ae = chain.autoencoder
    top_name, bottom_name = chain.priors[0].task.level, chain.priors[1].task.level
    priors = {"PixelCNN (shipped)": (chain.priors[1], [None])}
    for item in filter(None, (_MASKGIT.value or "").split(",")):
        level, path = item.split("=", 1)
        other = loading.load(_MODEL.value, lower_priors=f"{level}={path}")
        steps = [int(t) for t in _NUM_STEPS.value]
        priors[f"MaskGIT {os.path.basename(path.rstrip('/'))}"] = (other.priors[1], steps)

    classifier, clf_state = workdir_lib.load_classifier(
        _CLASSIFIER.value, "classifier_workdir", "experiments/bottom_prior_fidelity.py"
    )
    classify = jax.jit(lambda s, x: classifier.task.classify(s, images_to_float(x)))

    def predict(images: np.ndarray) -> np.ndarray:
        logits, _ = sample_eval._classify(classify, clf_state, images, _BATCH.value)  # pylint: disable=protected-access
        return sample_quality.predicted_labels(logits)

    images, labels = _real_test_images(chain, _NUM_IMAGES.value, _BATCH.value)
    codes = ae.encode(images)
    recon = ae.decode(codes)
    real = np.asarray(images_to_float(images))
    wrong = ((labels + 1) % chain.num_classes).astype(np.int32)
    rows = {
        "reconstruction (true bottom codes)": {
            "accuracy": float(np.mean(predict(recon) == labels)),
        }
    }
    grids = {}
    for name, (prior, steps) in priors.items():
        for t in steps:
            spec = prior.task.prior_spec(prior.state)
            if t is not None:
                spec = {**spec, "decode": {**spec["decode"], "num_steps": t}}
            key = name if t is None else f"{name}, T = {t}"
            same = _resample_bottom(spec, codes[top_name], labels, _BATCH.value, _SEED.value)
            conflict = _resample_bottom(spec, codes[top_name], wrong, _BATCH.value, _SEED.value)
            same_img = ae.decode({top_name: codes[top_name], bottom_name: same})
            conflict_img = ae.decode({top_name: codes[top_name], bottom_name: conflict})
            pred_same, pred_conflict = predict(same_img), predict(conflict_img)
            rows[key] = {
                "accuracy": float(np.mean(pred_same == labels)),
                "psnr_to_reconstruction": _mean_psnr(same_img, recon),
                "bottom_codes_equal": float(np.mean(same == codes[bottom_name])),
                "conflict_top_digit": float(np.mean(pred_conflict == labels)),
                "conflict_wrong_label": float(np.mean(pred_conflict == wrong)),
            }
            grids[key] = np.concatenate([real[:10], recon[:10], same_img[:10], conflict_img[:10]])
            print(key, json.dumps(rows[key]), flush=True)

    print(f"\n{len(labels)} MNIST test images, top codes kept, bottom codes resampled (seed {_SEED.value}).")
    print(
        "| bottom prior | accuracy (true label) | PSNR to recon. | bottom codes kept | wrong label: top's digit | wrong label: label's digit |"
    )
    print("|---|---|---|---|---|---|")
    for key, r in rows.items():
        if "bottom_codes_equal" not in r:
            print(f"| {key} | {100 * r['accuracy']:.1f}% | - | 100% | - | - |")
            continue
        print(
            f"| {key} | {100 * r['accuracy']:.1f}% | {r['psnr_to_reconstruction']:.2f} dB | "
            f"{100 * r['bottom_codes_equal']:.1f}% | {100 * r['conflict_top_digit']:.1f}% | "
            f"{100 * r['conflict_wrong_label']:.1f}% |"
        )
    if _OUT.value:
        os.makedirs(_OUT.value, exist_ok=True)
        with open(os.path.join(_OUT.value, "fidelity.json"), "w") as f:
            json.dump({"num_images": int(len(labels)), "seed": _SEED.value, "rows": rows}, f, indent=2)
        for key, grid in grids.items():
            fname = "".join(c if c.isalnum() else "_" for c in key).strip("_") + ".png"
            image_lib.save_png(os.path.join(_OUT.value, fname), image_lib.class_grid(grid, 4, 10, 10))


if __name__ == "__main__":
    app.run(main)
