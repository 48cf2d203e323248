r"""A PyTorch port of our InfoGAN (vqlatent.nets.infogan, vqlatent.trainers.infogan), for speed tables.

The same networks as ours (Chen et al. 2016, Table 1 for MNIST; widths from the config), written
the way PyTorch InfoGAN code is written (nn.Linear / nn.Conv2d / nn.ConvTranspose2d / BatchNorm,
NCHW), the same losses (non-saturating GAN with logits; -lambda_i E log Q(c_i | x) with a softmax
per categorical code and a Gaussian per continuous code, std fixed or learned) and the same
update: one step is the D/Q Adam update on a real batch and a generated batch held fixed, then the
G Adam update through the updated D/Q on fresh latents (learning rates and betas from the config).
With `info.augment` on, the categorical codes' term reads a randomly thickened or thinned (3x3 max
pooling of x or -x), sheared, rotated, scaled and shifted copy of the fakes (`F.affine_grid` +
`F.grid_sample`, bilinear, zeros outside: the transformation of vqlatent.infogan.invariance) in
both updates.

Interface (for benchmarks/train_step_bench.py):

  step = torch_infogan.build(config, input_shape=(28, 28, 1))   # a TorchInfoGAN
  step.step({"image": images_nchw_float_in_0_1})                 # one full update; returns G's loss
  step.num_params(); step.module                                 # nn.ModuleDict(generator, discriminator)
  torch_infogan.torch_infogan_step(config, batch_size=128)       # (TorchInfoGAN, a random batch)

`load_flax_variables(module, params, model_state)` copies our Flax variables in, for the
equivalence tests (tests/test_torch_infogan.py). Only benchmarks and that test import torch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1  # PyTorch's convention: ours (Flax) keeps 0.9 of the running average.
BN_EPSILON = 1e-5


class Generator(nn.Module):
    """G(z, c) -> (B, C, H, W) in [0, 1]: FC layers with BN and ReLU, FC to base_shape, upconvs."""

    def __init__(
        self,
        input_dim: int,
        fc_features: Sequence[int],
        base_shape: Sequence[int],
        upconv_features: Sequence[int],
        out_channels: int,
    ):
        super().__init__()
        self.base_shape = tuple(base_shape)
        layers, width = {}, input_dim
        for i, features in enumerate(fc_features):
            layers[f"fc{i}"] = nn.Linear(width, features, bias=False)
            layers[f"fc{i}_bn"] = nn.BatchNorm1d(features, eps=BN_EPSILON, momentum=BN_MOMENTUM)
            width = features
        base = int(np.prod(base_shape))
        layers["fc_base"] = nn.Linear(width, base, bias=False)
        layers["fc_base_bn"] = nn.BatchNorm1d(base, eps=BN_EPSILON, momentum=BN_MOMENTUM)
        channels = base_shape[-1]
        for i, features in enumerate(upconv_features):
            layers[f"upconv{i}"] = nn.ConvTranspose2d(channels, features, 4, stride=2, padding=1, bias=False)
            layers[f"upconv{i}_bn"] = nn.BatchNorm2d(features, eps=BN_EPSILON, momentum=BN_MOMENTUM)
            channels = features
        layers["upconv_out"] = nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1)
        self.layers = nn.ModuleDict(layers)
        self.num_fc, self.num_upconv = len(fc_features), len(upconv_features)

    def forward(self, inputs):
        h = inputs
        for i in range(self.num_fc):
            h = F.relu(self.layers[f"fc{i}_bn"](self.layers[f"fc{i}"](h)))
        h = F.relu(self.layers["fc_base_bn"](self.layers["fc_base"](h)))
        h = h.view(h.shape[0], *self.base_shape).permute(0, 3, 1, 2)  # Ours reshapes to NHWC.
        for i in range(self.num_upconv):
            h = F.relu(self.layers[f"upconv{i}_bn"](self.layers[f"upconv{i}"](h)))
        return torch.sigmoid(self.layers["upconv_out"](h))


class Discriminator(nn.Module):
    """Shared trunk (4x4 stride-2 convs, BN after the first; FC layers with BN; leaky ReLU), then
    the D head (a logit) and the Q head (FC, BN, leaky ReLU, FC to Q's outputs)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        conv_features: Sequence[int],
        fc_features: Sequence[int],
        q_hidden: int,
        q_output_dim: int,
        leaky_slope: float,
    ):
        super().__init__()
        h, w, channels = image_shape
        layers = {}
        for i, features in enumerate(conv_features):
            layers[f"conv{i}"] = nn.Conv2d(channels, features, 4, stride=2, padding=1, bias=i == 0)
            if i > 0:
                layers[f"conv{i}_bn"] = nn.BatchNorm2d(features, eps=BN_EPSILON, momentum=BN_MOMENTUM)
            channels, h, w = features, h // 2, w // 2
        width = h * w * channels
        for i, features in enumerate(fc_features):
            layers[f"fc{i}"] = nn.Linear(width, features, bias=False)
            layers[f"fc{i}_bn"] = nn.BatchNorm1d(features, eps=BN_EPSILON, momentum=BN_MOMENTUM)
            width = features
        layers["d_out"] = nn.Linear(width, 1)
        layers["q_fc"] = nn.Linear(width, q_hidden, bias=False)
        layers["q_fc_bn"] = nn.BatchNorm1d(q_hidden, eps=BN_EPSILON, momentum=BN_MOMENTUM)
        layers["q_out"] = nn.Linear(q_hidden, q_output_dim)
        self.layers = nn.ModuleDict(layers)
        self.num_conv, self.num_fc, self.slope = len(conv_features), len(fc_features), leaky_slope

    def forward(self, images):
        lrelu = lambda x: F.leaky_relu(x, self.slope)  # noqa: E731
        h = images
        for i in range(self.num_conv):
            h = self.layers[f"conv{i}"](h)
            if i > 0:
                h = self.layers[f"conv{i}_bn"](h)
            h = lrelu(h)
        h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # Ours flattens NHWC.
        for i in range(self.num_fc):
            h = lrelu(self.layers[f"fc{i}_bn"](self.layers[f"fc{i}"](h)))
        d_logits = self.layers["d_out"](h)[:, 0]
        q = lrelu(self.layers["q_fc_bn"](self.layers["q_fc"](h)))
        return d_logits, self.layers["q_out"](q)


def random_transform(
    images,
    max_rotation_degrees: float,
    scale_range,
    max_shift_pixels: float,
    max_thickness: float = 0.0,
    max_shear: float = 0.0,
):
    """Per image a random stroke-thickness blend in [-m, m], shear in [-k, k], rotation in [-r, r]
    degrees, scale in scale_range and shift in [-d, d]^2 pixels about the centre; bilinear, zeros
    outside (vqlatent.infogan.invariance)."""
    b = images.shape[0]
    u = torch.rand(b, 4, device=images.device) * 2 - 1
    angle = u[:, 0] * math.radians(max_rotation_degrees)
    low, high = scale_range
    scale = (low + high) / 2 + u[:, 1] * (high - low) / 2
    if max_thickness > 0:
        images = change_thickness(images, (torch.rand(b, device=images.device) * 2 - 1) * max_thickness)
    shear = (torch.rand(b, device=images.device) * 2 - 1) * max_shear if max_shear > 0 else None
    return affine_transform(images, angle, scale, u[:, 2:] * max_shift_pixels, shear)


def change_thickness(images, amount):
    """Our `invariance.change_thickness` on NCHW images: a blend towards the 3x3 dilation or erosion."""
    dilated = F.max_pool2d(images, 3, stride=1, padding=1)  # Pads with -inf.
    eroded = -F.max_pool2d(-images, 3, stride=1, padding=1)
    a = amount[:, None, None, None]
    return images + a.clamp(min=0) * (dilated - images) + (-a).clamp(min=0) * (eroded - images)


def affine_transform(images, angle, scale, shift, shear=None):
    """Our `invariance.affine_transform` (shift = (rows, cols) in pixels) on NCHW images."""
    _, _, h, w = images.shape
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    k = torch.zeros_like(angle) if shear is None else shear
    # The inverse map in pixels, (x, y) = (column, row) from the centre: S(k)^-1 R(-angle) / scale.
    m = [[cos - k * sin, -sin - k * cos], [sin, cos]]
    # In normalised coordinates (align_corners=True: -1 and 1 are the outer pixels' centres), with
    # square pixels: theta = D^-1 m D, D = diag((w - 1) / 2, (h - 1) / 2), the shift likewise.
    ry, rx = (h - 1) / (w - 1), (w - 1) / (h - 1)
    a, b, c, d = m[0][0], m[0][1] * ry, m[1][0] * rx, m[1][1]
    tx, ty = shift[:, 1] / ((w - 1) / 2), shift[:, 0] / ((h - 1) / 2)
    theta = torch.stack(
        [torch.stack([a, b, -(a * tx + b * ty)], dim=1), torch.stack([c, d, -(c * tx + d * ty)], dim=1)],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class TorchInfoGAN:
    """G, D/Q, their Adam optimizers, and `step(batch)`: one full InfoGAN update (module docstring)."""

    def __init__(self, config, input_shape: Sequence[int] = (28, 28, 1)):
        m = config.model
        latent = m.latent
        self.noise_dim = int(latent.noise_dim)
        self.uniform_noise = latent.get("noise_distribution", "uniform") == "uniform"
        self.categorical_sizes = tuple(int(k) for k in latent.categorical_sizes)
        self.num_continuous = int(latent.num_continuous)
        self.continuous_range = tuple(float(v) for v in latent.continuous_range)
        self.learned_std = m.q.continuous_std == "learned"
        self.fixed_std = float(m.q.fixed_std)
        per_continuous = 2 if self.learned_std else 1
        q_dim = sum(self.categorical_sizes) + per_continuous * self.num_continuous
        input_dim = self.noise_dim + sum(self.categorical_sizes) + self.num_continuous
        self.generator = Generator(
            input_dim,
            m.generator.fc_features,
            m.generator.base_shape,
            m.generator.upconv_features,
            input_shape[-1],
        )
        self.discriminator = Discriminator(
            input_shape,
            m.discriminator.conv_features,
            m.discriminator.fc_features,
            m.q.hidden,
            q_dim,
            m.discriminator.leaky_slope,
        )
        self.module = nn.ModuleDict({"generator": self.generator, "discriminator": self.discriminator})
        info = config.info
        self.lambda_categorical, self.lambda_continuous = (
            float(info.lambda_categorical),
            float(info.lambda_continuous),
        )
        augment = info.get("augment", None)
        self.augment = dict(augment) if augment is not None and augment.get("enabled", False) else None
        self.optimizers = {
            name: torch.optim.Adam(
                net.parameters(),
                lr=config.optimizer[name].learning_rate,
                betas=(config.optimizer[name].b1, config.optimizer[name].b2),
                eps=config.optimizer[name].eps,
            )
            for name, net in (("discriminator", self.discriminator), ("generator", self.generator))
        }

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def sample_latents(self, batch_size: int) -> dict[str, torch.Tensor]:
        device = next(self.generator.parameters()).device  # Where `module.to(...)` put the networks.
        noise = (
            torch.rand(batch_size, self.noise_dim, device=device) * 2 - 1
            if self.uniform_noise
            else torch.randn(batch_size, self.noise_dim, device=device)
        )
        categorical = (
            torch.stack(
                [torch.randint(0, k, (batch_size,), device=device) for k in self.categorical_sizes], dim=1
            )
            if self.categorical_sizes
            else torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        )
        low, high = self.continuous_range
        continuous = low + (high - low) * torch.rand(batch_size, self.num_continuous, device=device)
        return {"noise": noise, "categorical": categorical, "continuous": continuous}

    def generator_input(self, latents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [latents["noise"]]
        parts += [
            F.one_hot(latents["categorical"][:, i], k).float() for i, k in enumerate(self.categorical_sizes)
        ]
        parts.append(latents["continuous"])
        return torch.cat(parts, dim=1)

    def code_log_likelihoods(self, q_outputs, latents) -> dict[str, torch.Tensor]:
        """log Q(c_i | x) per example for every code (our `code_log_likelihoods`)."""
        out, offset = {}, 0
        for i, k in enumerate(self.categorical_sizes):
            logits = q_outputs[:, offset : offset + k]
            out[f"cat{i}"] = -F.cross_entropy(logits, latents["categorical"][:, i], reduction="none")
            offset += k
        n = self.num_continuous
        if n:
            mean = q_outputs[:, offset : offset + n]
            if self.learned_std:
                log_std = q_outputs[:, offset + n : offset + 2 * n]
            else:
                log_std = torch.full_like(mean, math.log(self.fixed_std))
            ll = (
                -0.5 * math.log(2 * math.pi)
                - log_std
                - 0.5 * ((latents["continuous"] - mean) * torch.exp(-log_std)) ** 2
            )
            for j in range(n):
                out[f"cont{j}"] = ll[:, j]
        return out

    def info_loss(self, fake, q_outputs, latents) -> torch.Tensor:
        """-sum_i lambda_i E log Q(c_i | .): with augment, the categorical codes' from T(fake)."""
        log_liks = self.code_log_likelihoods(q_outputs, latents)
        if self.augment is not None:
            transformed = random_transform(
                fake,
                self.augment["max_rotation_degrees"],
                tuple(self.augment["scale_range"]),
                self.augment["max_shift_pixels"],
                self.augment.get("max_thickness", 0.0),
                self.augment.get("max_shear", 0.0),
            )
            _, q_transformed = self.discriminator(transformed)
            log_liks.update(
                {
                    k: v
                    for k, v in self.code_log_likelihoods(q_transformed, latents).items()
                    if k.startswith("cat")
                }
            )
        total = 0.0
        for name, ll in log_liks.items():
            weight = self.lambda_categorical if name.startswith("cat") else self.lambda_continuous
            total = total - weight * ll.mean()
        return total

    def discriminator_loss(self, real, fake, latents) -> torch.Tensor:
        real_logits, _ = self.discriminator(real)
        fake_logits, q_outputs = self.discriminator(fake)
        gan = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        return gan + self.info_loss(fake, q_outputs, latents)

    def generator_loss(self, latents) -> torch.Tensor:
        fake = self.generator(self.generator_input(latents))
        logits, q_outputs = self.discriminator(fake)
        return F.softplus(-logits).mean() + self.info_loss(fake, q_outputs, latents)

    # Mixed precision for the forward passes (set by torch_models.build for bf16 rows).
    autocast = staticmethod(contextlib.nullcontext)

    def step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One InfoGAN update (D/Q, then G through the updated D/Q); returns G's loss (a tensor: no
        host sync, so that GPU timings can queue steps as ours do)."""
        real = batch["image"]
        batch_size = real.shape[0]
        self.module.train()
        d_latents, g_latents = self.sample_latents(batch_size), self.sample_latents(batch_size)
        with torch.no_grad(), self.autocast():
            fake = self.generator(self.generator_input(d_latents))
        opt = self.optimizers["discriminator"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            d_loss = self.discriminator_loss(real, fake, d_latents)
        d_loss.backward()
        opt.step()
        opt = self.optimizers["generator"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.generator_loss(g_latents)
        loss.backward()  # D's gradients from this pass are cleared before D's next update.
        opt.step()
        return loss.detach()


def build(config, input_shape: Sequence[int] = (28, 28, 1)) -> TorchInfoGAN:
    """The PyTorch InfoGAN of `config` (model_name='infogan') for images of `input_shape` (H, W, C)."""
    if config.model_name != "infogan":
        raise ValueError(f"torch_infogan ports model_name='infogan', got {config.model_name!r}.")
    return TorchInfoGAN(config, input_shape)


def torch_infogan_step(config, batch_size: int | None = None, input_shape=(28, 28, 1), seed: int = 0):
    """(TorchInfoGAN, batch): a port of `config` and a random batch {'image': (B, C, H, W) in [0, 1]}
    of `batch_size` (default the config's); time `port.step(batch)` for one full update."""
    torch.manual_seed(seed)
    port = build(config, input_shape)
    batch_size = batch_size or config.batch_size
    h, w, c = input_shape
    return port, {"image": torch.rand(batch_size, c, h, w)}


# -- copying our Flax variables in (the equivalence tests) --------------------------------


def _copy_param(layer: nn.Module, name: str, value: np.ndarray) -> None:
    value = torch.from_numpy(np.array(value, dtype=np.float32))
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        target = {
            "scale": layer.weight,
            "bias": layer.bias,
            "mean": layer.running_mean,
            "var": layer.running_var,
        }[name]
    elif name == "bias":
        target = layer.bias
    elif isinstance(layer, nn.ConvTranspose2d):  # Flax transposes without flipping the kernel.
        target, value = layer.weight, value.flip(0, 1).permute(2, 3, 0, 1)
    elif isinstance(layer, nn.Conv2d):
        target, value = layer.weight, value.permute(3, 2, 0, 1)
    elif isinstance(layer, nn.Linear):
        target, value = layer.weight, value.t()
    else:
        raise ValueError(f"Cannot copy Flax leaf {name!r} into {layer}.")
    if target.shape != value.shape:
        raise ValueError(
            f"Shape mismatch for {name!r} into {layer}: {tuple(value.shape)} vs {tuple(target.shape)}."
        )
    with torch.no_grad():
        target.copy_(value)


def load_flax_variables(
    module: nn.ModuleDict, params: Mapping[str, Any], model_state: Mapping[str, Any] | None = None
) -> None:
    """Copies our Flax params (and BatchNorm running statistics) of both nets into `module`; a torch
    parameter left without a value is an error."""
    filled = set()
    for net in ("generator", "discriminator"):
        layers = module[net].layers
        sources = [params[net]] + ([model_state[net].get("batch_stats", {})] if model_state else [])
        for tree in sources:
            for layer_name, leaves in tree.items():
                if layer_name not in layers:
                    raise ValueError(f"Flax layer {net}/{layer_name} has no counterpart in the port.")
                for name, value in leaves.items():
                    _copy_param(layers[layer_name], name, value)
                    filled.add((net, layer_name, name))
    missing = [
        f"{net}.{name}"
        for net in ("generator", "discriminator")
        for name, _ in module[net].named_parameters()
        if not _filled_weight(filled, net, name)
    ]
    if missing:
        raise ValueError(f"No Flax value for torch parameters {missing}.")


def _filled_weight(filled, net: str, name: str) -> bool:
    _, layer, kind = name.split(".")
    if kind == "bias":
        return (net, layer, "bias") in filled
    return (net, layer, "kernel") in filled or (net, layer, "scale") in filled
