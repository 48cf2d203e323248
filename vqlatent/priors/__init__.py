"""Priors over VQ codes: sampling functions (pure; the networks are in `vqlatent.nets.pixelcnn`)."""

from vqlatent.priors.sampling import (
    check_sampling_inputs,
    sample_codes,
    sample_codes_cached,
    sample_hierarchy,
)

__all__ = ["check_sampling_inputs", "sample_codes", "sample_codes_cached", "sample_hierarchy"]
