"""The command-line modes that use a trained model: export, encode, decode, reconstruct.

  python -m vqlatent.main --mode=export --workdir=W --config.export.dir=OUT
  python -m vqlatent.main --mode=encode --workdir=MODEL --config.encode.input=FOLDER --config.encode.output_dir=CODES
  python -m vqlatent.main --mode=decode --workdir=MODEL --config.decode.input=codes.npz --config.decode.output_dir=PNGS
  python -m vqlatent.main --mode=reconstruct --workdir=MODEL --config.reconstruct.input=FOLDER \
      --config.reconstruct.output_dir=OUT

MODEL is anything `vqlatent.load` takes: a training workdir, an export directory or pretrained:NAME.
`--config` is optional for these modes (`configs/model.py`'s options are the default).

- encode: every image of a folder (recursive) or glob -> a codes dataset in the format
  `--mode=extract_codes` writes (`vqlatent.codes.layout`), so a prior trains on it directly
  (`configs/pixelcnn.py:...,codes_dir=CODES`). Images are converted to the model's channels and
  centre-cropped and resized to its training size, as training data is (`encode.resize=False` keeps
  each image's size; they must then all have one size, a multiple of the model's stride). Labels come
  from class subfolders (sorted names -> 0, 1, ...); `train/` and `test/` subfolders give the splits,
  otherwise a fixed fraction (`encode.eval_fraction`, chosen by a hash of each file's path) is the
  eval split. Unreadable files are skipped and listed in `sources.json`.
  `encode.input=training_data` encodes instead both splits of the dataset the model was trained on
  (its recorded `data` config; `encode.manual_dir` / `encode.data_dir` say where its files are here),
  exactly as `--mode=extract_codes` does in the training workdir: a prior can be trained on the codes
  of an exported or pretrained model (`pretrained:mnist_vqvae2_chain`) without its workdir.
- decode: codes (an .npz of {level: maps}, e.g. `--mode=sample`'s samples/codes.npz, or a codes
  dataset's split) -> one PNG per image and a grid.
- reconstruct: a folder -> reconstructions (PNG, the files' relative paths) and `metrics.json` (MSE,
  PSNR, SSIM per image and their means; `vqlatent.models.evaluate`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from vqlatent import codes as codes_lib
from vqlatent.codes import dataset as codes_dataset
from vqlatent.codes import extract as extract_lib
from vqlatent.codes import layout
from vqlatent.data import sources as data_sources
from vqlatent.evaluation import images as image_lib
from vqlatent.models import evaluate, images_io, loading
from vqlatent.models import export as export_lib
from vqlatent.models.autoencoder import Autoencoder
from vqlatent.models.prior_chain import PriorChain
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.utils import errors

MODES = ("export", "encode", "decode", "reconstruct")
SPLIT_FOLDERS = {"train": "train", "test": "eval", "eval": "eval"}


class ModeOptionError(errors.UserError, ValueError):
    """A missing or bad option of a model mode."""


def default_configs() -> dict[str, ml_collections.ConfigDict]:
    """`config.export`, `config.encode`, `config.decode`, `config.reconstruct`."""
    placeholder = ml_collections.config_dict.placeholder
    return {
        "export": export_lib.default_config(),
        "encode": ml_collections.ConfigDict(
            dict(
                input=placeholder(str),
                output_dir=placeholder(str),
                eval_fraction=0.05,
                resize=True,
                batch_size=256,
                manual_dir=placeholder(str),
                data_dir=placeholder(str),
            )
        ),
        "decode": ml_collections.ConfigDict(
            dict(input=placeholder(str), output_dir=placeholder(str), split="eval", grid_columns=8)
        ),
        "reconstruct": ml_collections.ConfigDict(
            dict(input=placeholder(str), output_dir=placeholder(str), resize=True, batch_size=256)
        ),
    }


def _options(config: ml_collections.ConfigDict, mode: str, required: tuple[str, ...]) -> Any:
    options = config.get(mode) or default_configs()[mode]
    for field in required:
        if not options.get(field):
            raise ModeOptionError(f"--mode={mode} needs --config.{mode}.{field}=... (it is not set).")
    return options


def _autoencoder(model: Any, mode: str, where: str) -> Autoencoder:
    if isinstance(model, PriorChain):
        return model.autoencoder
    if not isinstance(model, Autoencoder):
        raise ModeOptionError(
            f"--mode={mode} needs an autoencoder (VQ-VAE / VQ-VAE-2); {where} holds a {model.family}."
        )
    return model


def run(mode: str, config: ml_collections.ConfigDict, model_path: str) -> Any:
    """Runs model mode `mode` with the model at `model_path` (the --workdir flag)."""
    if mode == "export":
        return export_mode(config, model_path)
    if mode == "encode":
        return encode_mode(config, model_path)
    if mode == "decode":
        return decode_mode(config, model_path)
    return reconstruct_mode(config, model_path)


# -- export -------------------------------------------------------------------------------
def export_mode(config: ml_collections.ConfigDict, model_path: str) -> dict[str, Any]:
    options = _options(config, "export", ("dir",))
    model = loading.load(model_path, options.get("step"), options.get("lower_priors"))
    evaluation = {}
    if options.get("evaluate", True):
        try:
            batch_size = int(options.get("eval_batch_size", 256))
            evaluation = export_lib.evaluation_record(model, options.get("eval_examples"), batch_size)
            evaluation = export_lib.with_spot_check(model, evaluation, batch_size)
        except (OSError, ValueError) as e:  # Data not readable here: the card says so.
            logging.warning("Not evaluated: the training data could not be read (%s).", e)
    return export_lib.export(model, options.dir, evaluation, portable=bool(options.get("portable", False)))


# -- encode -------------------------------------------------------------------------------
def split_and_class(relpath: str, eval_fraction: float, by_folder: bool) -> tuple[str, str | None]:
    """('train' | 'eval', class folder or None) of a file from its path relative to the input."""
    parts = relpath.split(os.sep)
    if by_folder:
        split, parts = SPLIT_FOLDERS[parts[0]], parts[1:]
    else:
        digest = hashlib.sha1(relpath.encode()).digest()
        split = "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"
    return split, (parts[0] if len(parts) > 1 else None)


def _check_same_size(arrays: list[np.ndarray], files: list[images_io.ImageFile], field: str) -> None:
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        first = {a.shape: f.relpath for a, f in zip(arrays, files)}
        raise ModeOptionError(
            f"{field}=False keeps each image's size, but the images have {len(sizes)} sizes "
            f"({', '.join(f'{s[0]}x{s[1]} ({p})' for s, p in list(first.items())[:3])}): one batch needs "
            f"one size. Leave {field}=True (centre crop and resize to the model's size)."
        )


def _load_inputs(model: Autoencoder, source: str, resize: bool, field: str):
    files = images_io.list_images(source)
    size = model.image_shape[:2] if resize else None
    arrays, kept, skipped = [], [], []
    for start in tqdm.tqdm(range(0, len(files), 256), desc="read", unit="chunk", disable=len(files) <= 256):
        a, k, s = images_io.read_images(files[start : start + 256], model.image_shape[-1], size)
        arrays += a
        kept += k
        skipped += s
    if skipped:
        logging.warning("Skipped %d unreadable file(s): %s", len(skipped), [s["path"] for s in skipped][:10])
    if not arrays:
        raise ModeOptionError(f"None of the {len(files)} files in {source!r} could be read as an image.")
    if not resize:
        _check_same_size(arrays, kept, field)
    return np.stack(arrays), kept, skipped


def _in_batches(fn, images: np.ndarray, batch_size: int, desc: str):
    """fn over images in batches of batch_size, with a progress bar; outputs concatenated."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ModeOptionError(f"batch_size={batch_size!r}: must be an integer >= 1.")
    parts = [
        fn(images[start : start + batch_size])
        for start in tqdm.tqdm(range(0, len(images), batch_size), desc=desc, unit="batch")
    ]
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


TRAINING_DATA = "training_data"


def encode_mode(config: ml_collections.ConfigDict, model_path: str) -> dict[str, Any]:
    options = _options(config, "encode", ("input", "output_dir"))
    if options.input == TRAINING_DATA:
        return _encode_training_data(options, model_path)
    fraction = options.eval_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ModeOptionError(f"--config.encode.eval_fraction={fraction!r}: must be in [0, 1).")
    out_dir = os.path.abspath(options.output_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ModeOptionError(
            f"--config.encode.output_dir={out_dir} exists and is not an empty directory: give a new one "
            f"(codes are never written over other files)."
        )
    model = _autoencoder(loading.load(model_path), "encode", model_path)
    images, files, skipped = _load_inputs(model, options.input, bool(options.resize), "config.encode.resize")
    top = {f.relpath.split(os.sep)[0] for f in files}
    by_folder = len(files) > 1 and "train" in top and top <= set(SPLIT_FOLDERS) and len(top) > 1
    assigned = [split_and_class(f.relpath, float(fraction), by_folder) for f in files]
    classes = sorted({c for _, c in assigned if c is not None})
    if classes and any(c is None for _, c in assigned):
        raise ModeOptionError(
            f"{options.input!r} mixes images in class subfolders with images outside them: put every "
            f"image in a class folder, or none."
        )
    if len({s for s, _ in assigned}) == 1 and len(files) > 1 and not by_folder and fraction > 0:
        # Every file hashed into one split: the one with the smallest hash goes to the other.
        k = min(range(len(files)), key=lambda i: hashlib.sha1(files[i].relpath.encode()).digest())
        assigned[k] = ("eval" if assigned[k][0] == "train" else "train", assigned[k][1])
    codes = _in_batches(model.encode, images, int(options.batch_size), "encode")
    labels = np.array([classes.index(c) if c is not None else 0 for _, c in assigned], np.int32)
    shapes = model.code_shapes(*images.shape[1:3])
    levels = {n: layout.LevelSpec(shape=shapes[n], num_codes=model.num_codes[n]) for n in model.level_names}
    splits, sources = {}, {}
    for split in ("train", "eval"):
        idx = np.array([i for i, (s, _) in enumerate(assigned) if s == split], np.int64)
        splits[split] = ({n: codes[n][idx] for n in levels}, labels[idx])
        sources[split] = [files[i].relpath for i in idx]
    os.makedirs(out_dir, exist_ok=True)
    provenance = {
        "checkpoint": {"workdir": model.component.source, "step": int(model.component.step)},
        "model": model_path,
        "input": os.path.abspath(options.input),
        "preprocess": (
            f"converted to {'L' if model.image_shape[-1] == 1 else 'RGB'}, "
            + (
                f"centre-cropped and resized to {model.image_shape[0]}x{model.image_shape[1]} (PIL bicubic)"
                if options.resize
                else "native size"
            )
        ),
        "classes": classes,
        "levels": layout.levels_to_json(levels),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    layout.write_json_atomically(os.path.join(out_dir, layout.PROVENANCE), provenance)
    layout.write_json_atomically(os.path.join(out_dir, "sources.json"), {**sources, "skipped": skipped})
    codes_dataset.write_codes_dataset(out_dir, levels, splits)
    logging.info(
        "Encoded %d images (train %d, eval %d; %d skipped, %d classes) to %s (%s).",
        len(files),
        len(sources["train"]),
        len(sources["eval"]),
        len(skipped),
        len(classes),
        out_dir,
        layout.describe_levels(levels),
    )
    return {"output_dir": out_dir, "num_images": len(files), "skipped": skipped, "classes": classes}


def _encode_training_data(options: Any, model_path: str) -> dict[str, Any]:
    """Both splits of the model's training dataset -> a codes dataset (`extract.extract_codes`, which
    resumes an interrupted run and records the model's directory and step as the codes' provenance)."""
    model = _autoencoder(loading.load(model_path), "encode", model_path)
    component = model.component
    config = ml_collections.ConfigDict(component.config.to_dict())
    for field in ("manual_dir", "data_dir"):
        if options.get(field):
            config.data[field] = os.path.abspath(options[field])
    batch_size = int(options.batch_size)
    if batch_size < 1:
        raise ModeOptionError(f"--config.encode.batch_size={batch_size}: must be >= 1.")
    try:
        manifest = extract_lib.extract_codes(
            codes_lib.as_code_model(model.task),
            model.state,
            config,
            workdir=component.source,
            step=component.step,
            output_dir=options.output_dir,
            mesh=mesh_lib.make_mesh(data=1, devices=jax.devices()[:1]),
            batch_size=batch_size,
        )
    except (OSError, data_sources.DataError) as e:
        raise ModeOptionError(
            f"--config.encode.input={TRAINING_DATA}: the training data of {model_path} "
            f"({config.data.get('name')!r}, manual_dir={config.data.get('manual_dir')!r}) could not be "
            f"read ({e}). Point --config.encode.manual_dir (or data_dir) at its files on this machine."
        ) from e
    return {"output_dir": os.path.abspath(options.output_dir), "manifest": manifest}


# -- decode -------------------------------------------------------------------------------
def read_codes(
    source: str, split: str, levels: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """({level: maps}, labels or None) of an .npz file or a codes dataset directory's split."""
    if os.path.isdir(source):
        arrays = codes_lib.load_codes(source, split).arrays()
        return arrays["codes"], arrays["label"]
    if not os.path.isfile(source):
        raise ModeOptionError(
            f"--config.decode.input={source!r} does not exist: give an .npz of code maps (e.g. "
            f"--mode=sample's samples/codes.npz) or a codes dataset directory."
        )
    try:
        with np.load(source) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ModeOptionError(
            f"--config.decode.input={source!r} cannot be read as an .npz file ({e})."
        ) from e
    codes = {n: arrays.get(n, arrays.get(layout.code_key(n))) for n in levels}
    missing = [n for n, c in codes.items() if c is None]
    if missing:
        raise ModeOptionError(
            f"{source} has arrays {sorted(arrays)}, but the model needs code maps for levels {list(levels)} "
            f"(arrays named LEVEL or codes_LEVEL): missing {missing}."
        )
    return codes, arrays.get("labels", arrays.get("label"))


def decode_mode(config: ml_collections.ConfigDict, model_path: str) -> dict[str, Any]:
    options = _options(config, "decode", ("input", "output_dir"))
    model = _autoencoder(loading.load(model_path), "decode", model_path)
    codes, _ = read_codes(options.input, options.split, model.level_names)
    images = model.decode(codes)
    out_dir = os.path.abspath(options.output_dir)
    for i, image in enumerate(images):
        images_io.save_png(os.path.join(out_dir, f"{i:05d}.png"), image)
    columns = max(1, min(int(options.grid_columns), len(images)))
    grid = image_lib.make_grid(images, num_cols=columns, upscale=image_lib.auto_upscale(images.shape[1]))
    image_lib.save_png(os.path.join(out_dir, "grid.png"), grid)
    logging.info("Decoded %d code maps to %s (one PNG each, and grid.png).", len(images), out_dir)
    return {"output_dir": out_dir, "images": images}


# -- reconstruct --------------------------------------------------------------------------
def reconstruct_mode(config: ml_collections.ConfigDict, model_path: str) -> dict[str, Any]:
    options = _options(config, "reconstruct", ("input", "output_dir"))
    model = _autoencoder(loading.load(model_path), "reconstruct", model_path)
    images, files, skipped = _load_inputs(
        model, options.input, bool(options.resize), "config.reconstruct.resize"
    )
    per_image, recon = _reconstruct_all(model, images, int(options.batch_size))
    out_dir = os.path.abspath(options.output_dir)
    for f, image in zip(files, recon):
        images_io.save_png(os.path.join(out_dir, os.path.splitext(f.relpath)[0] + ".png"), image)
    n = min(len(images), 32)
    pairs = np.stack([images[:n].astype(np.float32) / 255.0, recon[:n]], axis=1).reshape(-1, *recon.shape[1:])
    grid = image_lib.make_grid(pairs, num_cols=2 * min(n, 4), upscale=image_lib.auto_upscale(recon.shape[1]))
    image_lib.save_png(os.path.join(out_dir, "grid.png"), grid)
    mean = evaluate.summarize(per_image)
    report = {
        "mean": mean,
        "per_image": {
            f.relpath: {k: float(per_image[k][i]) for k in ("mse", "psnr", "ssim")}
            for i, f in enumerate(files)
        },
        "skipped": skipped,
        "model": model_path,
        "input": os.path.abspath(options.input),
        "preprocess": "resized to the model's size" if options.resize else "native size",
    }
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2, allow_nan=True)
    logging.info("Reconstructed %d images into %s: %s", len(files), out_dir, mean)
    return report


def _reconstruct_all(model: Autoencoder, images: np.ndarray, batch_size: int):
    if batch_size < 1:
        raise ModeOptionError(f"--config.reconstruct.batch_size={batch_size}: must be an integer >= 1.")
    metrics, recons = [], []
    for start in tqdm.tqdm(range(0, len(images), batch_size), desc="reconstruct", unit="batch"):
        m, r = evaluate.reconstruction_metrics(model, images[start : start + batch_size])
        metrics.append(m)
        recons.append(r)
    return {k: np.concatenate([m[k] for m in metrics]) for k in metrics[0]}, np.concatenate(recons)
