"""PyTorch ports of vqlatent's networks: the references of the speed comparisons.

`torch_models` (VQ-VAE, VQ-VAE-2, Gated PixelCNN; `build(model_name, config, input_shape)` for every
model of the train-step benchmark) and `torch_infogan` (InfoGAN). Each is tested to compute our
functions from our parameters (tests/test_torch_reference.py, tests/test_torch_infogan.py). They import
torch (the `bench` extra), so this package imports neither module itself.
"""
