"""InfoGAN (Chen et al. 2016) as pure functions: latents, objective, evaluation, traversals.

The networks are in `vqlatent.nets.infogan`, the training task for the shared
loop in `vqlatent.trainers.infogan`.
"""

from vqlatent.infogan.evaluation import confusion_matrix, matched_accuracy, purity
from vqlatent.infogan.latents import (
    Latents,
    LatentSpec,
    LatentSpecError,
    code_entropies,
    generator_input,
    latent_spec_from_config,
    require_codes,
    sample_latents,
)
from vqlatent.infogan.objectives import (
    Posterior,
    categorical_log_likelihood,
    check_continuous_std,
    code_log_likelihoods,
    code_weights,
    discriminator_gan_loss,
    gaussian_log_likelihood,
    generator_gan_loss,
    info_loss,
    mutual_information_lower_bounds,
    q_output_dim,
    split_q_outputs,
)
from vqlatent.infogan.traversal import (
    annotate_columns,
    category_latents,
    sweep_latents,
    sweep_values,
    traversal_latents,
)

__all__ = [
    "annotate_columns",
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
    "sweep_latents",
    "sweep_values",
    "traversal_latents",
]
