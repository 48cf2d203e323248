"""vqlatent: discrete-latent and information-maximising generative models in JAX/Flax.

Importing the package (or any part of it, such as the quantizers inside another model) changes no
environment variable. The command line (`python -m vqlatent.main`) and `vqlatent.load` add the
XLA:CPU flags measured fastest; a library user who wants them calls
`vqlatent.backend.set_cpu_xla_flags()` before JAX starts its backend (see `vqlatent.backend`).
"""


def load(path: str, step: int | None = None, lower_priors: str | None = None):
    """A trained model: `vqlatent.load("pretrained:NAME" | EXPORT_DIR | WORKDIR, step=None)`.

    Returns an `Autoencoder` (encode / decode / reconstruct), a `PriorChain` (sample) or an `InfoGAN`
    (generate / infer); see `vqlatent.models`. Nothing reads the training data. For a top prior's
    workdir, `lower_priors="bottom=PATH[,...]"` replaces its config's `sample.lower_priors` (PATH: a
    workdir, or a chain's export or pretrained:NAME whose prior of that level is taken).
    """
    from vqlatent import backend  # pylint: disable=g-import-not-at-top
    from vqlatent.models import loading  # pylint: disable=g-import-not-at-top  # Keeps `import vqlatent` light.

    backend.set_cpu_xla_flags()  # Only while no JAX backend has started (see vqlatent.backend).
    return loading.load(path, step, lower_priors)
