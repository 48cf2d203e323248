"""InfoGAN (Chen et al. 2016) as pure functions: latents, objective, evaluation, traversals.

The networks are in `vqlatent.nets.infogan`, the training task for the shared
loop in `vqlatent.trainers.infogan`.
"""

from vqlatent.infogan.evaluation import confusion_matrix
from vqlatent.infogan.evaluation import matched_accuracy
from vqlatent.infogan.evaluation import purity
from vqlatent.infogan.latents import code_entropies
from vqlatent.infogan.latents import generator_input
from vqlatent.infogan.latents import latent_spec_from_config
from vqlatent.infogan.latents import LatentSpec
from vqlatent.infogan.latents import LatentSpecError
from vqlatent.infogan.latents import Latents
from vqlatent.infogan.latents import require_codes
from vqlatent.infogan.latents import sample_latents
from vqlatent.infogan.objectives import categorical_log_likelihood
from vqlatent.infogan.objectives import check_continuous_std
from vqlatent.infogan.objectives import code_log_likelihoods
from vqlatent.infogan.objectives import code_weights
from vqlatent.infogan.objectives import discriminator_gan_loss
from vqlatent.infogan.objectives import gaussian_log_likelihood
from vqlatent.infogan.objectives import generator_gan_loss
from vqlatent.infogan.objectives import info_loss
from vqlatent.infogan.objectives import mutual_information_lower_bounds
from vqlatent.infogan.objectives import Posterior
from vqlatent.infogan.objectives import q_output_dim
from vqlatent.infogan.objectives import split_q_outputs
from vqlatent.infogan.traversal import category_latents
from vqlatent.infogan.traversal import sweep_values
from vqlatent.infogan.traversal import traversal_latents

__all__ = [
    "categorical_log_likelihood",
    "category_latents",
    "check_continuous_std",
    "code_entropies",
    "code_log_likelihoods",
    "code_weights",
    "confusion_matrix",
    "discriminator_gan_loss",
    "gaussian_log_likelihood",
    "generator_gan_loss",
    "generator_input",
    "info_loss",
    "latent_spec_from_config",
    "LatentSpec",
    "LatentSpecError",
    "Latents",
    "matched_accuracy",
    "mutual_information_lower_bounds",
    "Posterior",
    "purity",
    "q_output_dim",
    "require_codes",
    "sample_latents",
    "split_q_outputs",
    "sweep_values",
    "traversal_latents",
]
