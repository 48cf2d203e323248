"""TFDS builder for MNIST read from the canonical idx files (no TensorFlow).

The catalog `mnist` builder needs TensorFlow to be prepared. This builder
prepares the same data from the four original idx files placed in the TFDS
manual directory, so it works offline and with only `tensorflow-datasets`
installed:

  train-images-idx3-ubyte[.gz]  (60000, 28, 28) uint8
  train-labels-idx1-ubyte[.gz]  (60000,) uint8
  t10k-images-idx3-ubyte[.gz]   (10000, 28, 28) uint8
  t10k-labels-idx1-ubyte[.gz]   (10000,) uint8

Each file is parsed by its idx header (magic number, element type, number of
dimensions and their sizes), validated (shape, length, label range) and, by
default, checked against the md5 of the canonical uncompressed file.

Features: `image` uint8 (28, 28, 1), `label` ClassLabel(10).
Splits: `train` (60000) and `test` (10000). Record keys are the indices into
the idx files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

# Canonical (uncompressed) files: name -> (expected shape, md5).
FILES: dict[str, tuple[tuple[int, ...], str]] = {
    "train-images-idx3-ubyte": ((60000, 28, 28), "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ((60000,), "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ((10000, 28, 28), "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ((10000,), "27ae3e4e09519cfbb04c329615203637"),
}

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# idx element type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Place the four canonical MNIST idx files (gzipped or not) directly in the
manual directory:

  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

They are available from https://yann.lecun.com/exdb/mnist/ or the mirror
https://ossci-datasets.s3.amazonaws.com/mnist/ . Then either run
  python -m vqlatent.data.prepare --dataset=mnist_idx --manual_dir=DIR
or train with --config.data.manual_dir=DIR (the dataset is prepared on first
use).
"""


class IdxFormatError(ValueError):
    """An idx file is malformed, truncated or not the expected MNIST file."""


def find_file(directory: str | os.PathLike[str], name: str) -> str | None:
    """Returns the path of `name` (or `name.gz`) in `directory`, if present."""
    for candidate in (name + ".gz", name):
        path = os.path.join(os.fspath(directory), candidate)
        if os.path.isfile(path):
            return path
    return None


def missing_files(directory: str | os.PathLike[str] | None) -> list[str]:
    """Returns the canonical file names not found in `directory`."""
    if directory is None or not os.path.isdir(os.fspath(directory)):
        return list(FILES)
    return [name for name in FILES if find_file(directory, name) is None]


def read_bytes(path: str) -> bytes:
    """Reads a file, transparently decompressing it if it is gzipped."""
    with open(path, "rb") as f:
        magic = f.read(2)
    try:
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise IdxFormatError(f"{path}: cannot decompress ({e}); is the file truncated or corrupt?") from e


def parse_idx(data: bytes, name: str = "<idx>") -> np.ndarray:
    """Parses the bytes of an idx file into a native-endian numpy array.

    Args:
      data: the uncompressed file contents.
      name: file name used in error messages.

    Returns:
      The array, with the shape given by the header.

    Raises:
      IdxFormatError: if the header is invalid or the payload size does not
        match the header.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{name}: file too short ({len(data)} bytes) to hold an idx header.")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IdxFormatError(
            f"{name}: bad idx magic number 0x{data[:4].hex()} (expected "
            "0x0000TTNN with type TT in {08,09,0B,0C,0D,0E}); not an idx file?"
        )
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_len:
        raise IdxFormatError(f"{name}: truncated or invalid idx header (ndim={ndim}, {len(data)} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    expected = header_len + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{name}: file {kind}: header says shape {shape} of {dtype.name} "
            f"({expected} bytes in total) but it has {len(data)} bytes."
        )
    array = np.frombuffer(data, dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def load_file(directory: str | os.PathLike[str], name: str, verify_md5: bool = True) -> np.ndarray:
    """Loads and validates canonical MNIST file `name` from `directory`."""
    path = find_file(directory, name)
    if path is None:
        raise FileNotFoundError(
            f"MNIST file {name}[.gz] not found in {os.fspath(directory)}.\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
        )
    data = read_bytes(path)
    array = parse_idx(data, path)
    want_shape, want_md5 = FILES[name]
    if array.shape != want_shape or array.dtype != np.uint8:
        raise IdxFormatError(
            f"{path}: expected uint8 array of shape {want_shape} for {name}, got {array.dtype} {array.shape}."
        )
    if verify_md5:
        md5 = hashlib.md5(data).hexdigest()
        if md5 != want_md5:
            raise IdxFormatError(
                f"{path}: md5 of the uncompressed data is {md5}, expected "
                f"{want_md5}; this is not the canonical MNIST {name} file."
            )
    if name.endswith("labels-idx1-ubyte") and array.max(initial=0) > 9:
        raise IdxFormatError(f"{path}: labels outside 0..9.")
    return array


class MnistIdx(tfds.core.GeneratorBasedBuilder):
    """MNIST from the canonical idx files in the manual directory."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # Set to False to accept idx files that differ from the canonical ones.
    VERIFY_MD5 = True

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "MNIST handwritten digits (28x28 grey-scale) read from the "
                "original idx files: 60000 train, 10000 test."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = dl_manager.manual_dir
        missing = missing_files(manual_dir)
        if missing:
            raise FileNotFoundError(
                f"mnist_idx: missing {', '.join(m + '[.gz]' for m in missing)} in "
                f"manual dir {manual_dir}.\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        return {split: self._generate_examples(manual_dir, files) for split, files in SPLIT_FILES.items()}

    def _generate_examples(
        self, manual_dir: Any, files: Sequence[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        images_name, labels_name = files
        images = load_file(manual_dir, images_name, self.VERIFY_MD5)
        labels = load_file(manual_dir, labels_name, self.VERIFY_MD5)
        if len(images) != len(labels):
            raise IdxFormatError(
                f"{images_name} has {len(images)} images but {labels_name} has {len(labels)} labels."
            )
        for i in range(len(images)):
            yield i, {"image": images[i][..., None], "label": int(labels[i])}
