r"""Side-by-side reconstructions of several autoencoders on the same held-out images: one grid, the real
images in the first row and each model's reconstructions of them in the rows below (the order given).

  python scripts/compare_reconstructions.py --models=W_L2,W_VQGAN --manual_dir=MNIST \
      --num=16 --output=docs/images/vqgan_mnist_reconstructions.png

Each model is anything `vqlatent.load` takes (a workdir, an export, pretrained:NAME); the images are
the first `--num` of the first model's eval split (its recorded data config; `--manual_dir` /
`--data_dir` say where its files are here). Also prints each model's MSE and PSNR on those images.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import app, flags

import vqlatent
from vqlatent import data as data_lib
from vqlatent.evaluation import images as image_lib

_MODELS = flags.DEFINE_list("models", None, "Autoencoders, in row order.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The data's files here (data.manual_dir).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The data's data_dir here.")
_NUM = flags.DEFINE_integer("num", 16, "Images (columns).")
_OUTPUT = flags.DEFINE_string("output", None, "The PNG to write.")


def main(_):
    models = [vqlatent.load(path) for path in _MODELS.value]
    data_config = ml_collections.ConfigDict(models[0].component.config.data.to_dict())
    for field, value in (("manual_dir", _MANUAL_DIR.value), ("data_dir", _DATA_DIR.value)):
        if value:
            data_config[field] = os.path.abspath(value)
    batch = next(iter(data_lib.make_eval_batches(data_config, global_batch_size=_NUM.value)))
    real = np.asarray(batch["image"])[: _NUM.value]
    rows = [real]
    for path, model in zip(_MODELS.value, models):
        recon = model.reconstruct(real)
        mse = float(np.mean((recon - real.astype(np.float32) / 255) ** 2))
        print(f"{path}: MSE {mse:.5f}, PSNR {10 * np.log10(1 / mse):.2f} dB on these {len(real)} images")
        rows.append(recon)
    grid = image_lib.make_grid(
        np.concatenate([image_lib.to_uint8(r) if r.dtype != np.uint8 else r for r in rows]),
        num_cols=len(real),
        upscale=image_lib.auto_upscale(real.shape[1]),
    )
    image_lib.save_png(_OUTPUT.value, grid)
    print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["models", "output"])
    app.run(main)
