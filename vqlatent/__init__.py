"""vqlatent: discrete-latent and information-maximising generative models in JAX/Flax.

Importing the package sets the XLA:CPU flags measured fastest (`vqlatent.backend`), unless the
user has set `XLA_FLAGS` or a JAX backend has already started.
"""

from vqlatent import backend as _backend

_backend.set_cpu_xla_flags()


def load(path: str, step: int | None = None):
    """A trained model: `vqlatent.load("pretrained:NAME" | EXPORT_DIR | WORKDIR, step=None)`.

    Returns an `Autoencoder` (encode / decode / reconstruct), a `PriorChain` (sample) or an `InfoGAN`
    (generate / infer); see `vqlatent.models`. Nothing reads the training data.
    """
    from vqlatent.models import loading  # pylint: disable=g-import-not-at-top  # Keeps `import vqlatent` light.

    return loading.load(path, step)
