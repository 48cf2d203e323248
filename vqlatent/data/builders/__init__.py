"""Project TFDS builders; importing this module registers them with TFDS.

* `sklearn_digits`: scikit-learn's 8x8 digits (offline, embedded default).
* `mnist_idx`: MNIST from the canonical idx files in the manual dir.
"""

from vqlatent.data.builders.mnist_idx import MnistIdx
from vqlatent.data.builders.sklearn_digits import SklearnDigits

# Registered names of the builders defined in this package. They need neither
# network nor TensorFlow, so the pipeline prepares them on first use.
PROJECT_BUILDERS: frozenset[str] = frozenset({"sklearn_digits", "mnist_idx"})

__all__ = ["MnistIdx", "SklearnDigits", "PROJECT_BUILDERS"]
