r"""Prepares a dataset as array_record for the vqlatent input pipeline, ahead of training.

Usage:
  python -m vqlatent.data.prepare --dataset=NAME [--data_dir=DIR] \
      [--manual_dir=DIR]
  python -m vqlatent.data.prepare --config=configs/vqvae2.py:ffhq1024 \
      --config.data.folder=DIR     # config.data of a run, with the run's flags

The second form prepares exactly what the run will read (for an image folder:
the same size, channels and held-out fraction, so the same prepared directory).

Project builders (sklearn_digits, mnist_idx) need only tensorflow-datasets
(mnist_idx needs the four MNIST idx files in --manual_dir). TFDS catalog
datasets (mnist, cifar10, celeb_a, imagenet2012, ...) need TensorFlow to be
prepared: pip install 'vqlatent[prepare]'. Reading them back at training time
does not.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import app, flags
from ml_collections import config_flags

from vqlatent.data import builders as project_builders
from vqlatent.data import sources, tfds_sources
from vqlatent.data.sources import DataError, base_name

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run as a command, so importing `prepare` defines none)."""
    flags.DEFINE_string("dataset", None, "TFDS name, e.g. sklearn_digits, mnist_idx, cifar10.")
    config_flags.DEFINE_config_file("config", None, "A run's config file: prepares its config.data.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS_DATA_DIR or ~/tensorflow_datasets).")
    flags.DEFINE_string(
        "manual_dir", None, "Directory with manually downloaded files (mnist_idx, imagenet2012, ...)."
    )


TF_HINT = "Preparing TFDS catalog datasets needs TensorFlow: pip install 'vqlatent[prepare]'"


def prepare(
    name: str, data_dir: str | None = None, manual_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """Prepares `name` in `data_dir` as array_record; returns the builder.

    Args:
      name: TFDS dataset name (project builder or catalog).
      data_dir: TFDS data dir, None for the TFDS default.
      manual_dir: manual download dir, if the dataset needs one.

    Raises:
      vqlatent.data.UnknownDatasetError: unknown name.
      vqlatent.data.ManualDirError: mnist_idx without its files in manual_dir.
      vqlatent.data.DataError: catalog dataset without TensorFlow installed.
    """
    if base_name(name) in project_builders.PROJECT_BUILDERS:
        return tfds_sources.prepare_project_builder(name, data_dir, manual_dir)
    builder = tfds_sources.make_builder(name, data_dir)
    if tfds_sources.is_prepared(builder):
        return builder
    if importlib.util.find_spec("tensorflow") is None:
        raise DataError(f"Cannot prepare {name!r}: TensorFlow is not installed. {TF_HINT}.")
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    return tfds_sources.make_builder(name, data_dir)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if (FLAGS.dataset is None) == (FLAGS.config is None):
        raise app.UsageError("Give either --dataset=NAME or --config=FILE[:VARIANT].")
    try:
        if FLAGS.config is not None:
            data_cfg = FLAGS.config.data
            if base_name(data_cfg.name) in ("image_folder", "codes"):
                print(f"{data_cfg.name}: {sources.get_spec(data_cfg)}")
                return
            builder = prepare(data_cfg.name, data_cfg.get("data_dir"), data_cfg.get("manual_dir"))
        else:
            builder = prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir)
    except DataError as e:
        raise SystemExit(f"Error: {e}") from e
    info = builder.info
    print(f"Prepared {info.full_name} ({info.file_format.value}) in {os.fspath(builder.data_dir)}")
    for split_name, split in info.splits.items():
        print(f"  {split_name}: {split.num_examples} examples")


if __name__ == "__main__":
    define_flags()
    app.run(main)
