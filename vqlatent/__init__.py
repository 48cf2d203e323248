"""vqlatent: discrete-latent and information-maximising generative models in JAX/Flax.

Importing the package sets the XLA:CPU flags measured fastest (`vqlatent.backend`), unless the
user has set `XLA_FLAGS` or a JAX backend has already started.
"""

from vqlatent import backend as _backend

_backend.set_cpu_xla_flags()
