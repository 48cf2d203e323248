"""PyTorch references of our architectures, for side-by-side speed comparisons.

Written by us to be the same networks as vqlatent's (same layers, channels,
kernel sizes, strides and quantizer maths), in the idiom of the PyTorch
codebases researchers use (nn.ConvTranspose2d upsampling, in-place EMA buffers).
Only the benchmarks import this file; torch is in the `bench` extra.

`build(model_name, config, image_shape)` returns a `TorchStep`: a module, its
optimizer and a `step(images)` doing one Adam update.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


class ResidualStack(nn.Module):
  """ReLU, 3x3 conv, ReLU, 1x1 conv, add; a final ReLU (as vqlatent.nets.layers)."""

  def __init__(self, hiddens: int, layers: int, residual_hiddens: int):
    super().__init__()
    self.blocks = nn.ModuleList([
        nn.Sequential(nn.ReLU(), nn.Conv2d(hiddens, residual_hiddens, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(residual_hiddens, hiddens, 1)) for _ in range(layers)])

  def forward(self, h):
    for block in self.blocks:
      h = h + block(h)
    return F.relu(h)


class VectorQuantizerEMA(nn.Module):
  """Sonnet's VectorQuantizerEMA: straight-through, commitment loss, debiased EMA."""

  def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25,
               decay: float = 0.99, epsilon: float = 1e-5):
    super().__init__()
    limit = (3.0 / embedding_dim) ** 0.5
    self.register_buffer("codebook", torch.empty(num_embeddings, embedding_dim).uniform_(-limit, limit))
    self.register_buffer("cluster_size_hidden", torch.zeros(num_embeddings))
    self.register_buffer("dw_hidden", torch.zeros(num_embeddings, embedding_dim))
    self.register_buffer("counter", torch.zeros((), dtype=torch.long))
    self.k, self.beta, self.decay, self.eps = num_embeddings, commitment_cost, decay, epsilon

  def forward(self, z):  # z: (B, D, H, W)
    x = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    distances = (x.pow(2).sum(1, keepdim=True) - 2 * x @ self.codebook.t()
                 + self.codebook.pow(2).sum(1)[None])
    indices = distances.argmin(1)
    onehot = F.one_hot(indices, self.k).type(x.dtype)
    q = self.codebook[indices]
    if self.training:
      with torch.no_grad():
        self.counter += 1
        g = self.decay
        self.cluster_size_hidden.mul_(g).add_(onehot.sum(0), alpha=1 - g)
        self.dw_hidden.mul_(g).add_(onehot.t() @ x, alpha=1 - g)
        debias = 1 - g ** self.counter.item()
        n_hat = self.cluster_size_hidden / debias
        m_hat = self.dw_hidden / debias
        total = n_hat.sum()
        n_smooth = (n_hat + self.eps) / (total + self.k * self.eps) * total
        self.codebook.copy_(m_hat / n_smooth[:, None])
    loss = self.beta * F.mse_loss(x, q.detach())
    q = x + (q - x).detach()
    return q.reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2), loss


class VQVAE(nn.Module):
  """vqlatent.nets.vqvae.VQVAE in PyTorch (NCHW)."""

  def __init__(self, channels: int, hiddens: int, residual_layers: int, residual_hiddens: int,
               downsamples: int, embedding_dim: int, num_embeddings: int):
    super().__init__()
    enc, c = [], channels
    for i in range(downsamples):
      out = hiddens if i == downsamples - 1 else hiddens // 2
      enc += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.ReLU()]
      c = out
    enc += [nn.Conv2d(hiddens, hiddens, 3, padding=1), ResidualStack(hiddens, residual_layers, residual_hiddens)]
    self.encoder = nn.Sequential(*enc)
    self.pre_quantization = nn.Conv2d(hiddens, embedding_dim, 1)
    self.quantizer = VectorQuantizerEMA(num_embeddings, embedding_dim)
    dec = [nn.Conv2d(embedding_dim, hiddens, 3, padding=1), ResidualStack(hiddens, residual_layers, residual_hiddens)]
    c = hiddens
    for i in range(downsamples):
      last = i == downsamples - 1
      out = channels if last else hiddens // 2
      dec.append(nn.ConvTranspose2d(c, out, 4, stride=2, padding=1))
      if not last:
        dec.append(nn.ReLU())
      c = out
    self.decoder = nn.Sequential(*dec)

  def forward(self, images):
    q, vq_loss = self.quantizer(self.pre_quantization(self.encoder(images - 0.5)))
    return self.decoder(q) + 0.5, vq_loss


def _halvings(stride: int) -> int:
  return stride.bit_length() - 1


def _encoder(in_channels: int, hiddens: int, residual_layers: int, residual_hiddens: int, stride: int):
  """vqlatent.nets.vqvae2.LevelEncoder: k 4x4/2 convs (C/2 ... C/2, C), 3x3 conv, residual stack."""
  k, layers, c = _halvings(stride), [], in_channels
  for i in range(k):
    out = hiddens if (k > 1 and i == k - 1) else hiddens // 2
    layers += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.ReLU()]
    c = out
  layers += [nn.Conv2d(c, hiddens, 3, padding=1), ResidualStack(hiddens, residual_layers, residual_hiddens)]
  return nn.Sequential(*layers)


def _decoder(in_channels: int, hiddens: int, residual_layers: int, residual_hiddens: int,
             stride: int, out_channels: int):
  """vqlatent.nets.vqvae.Decoder: 3x3 conv, residual stack, k transposed 4x4/2 convs."""
  k = _halvings(stride)
  layers = [nn.Conv2d(in_channels, hiddens, 3, padding=1), ResidualStack(hiddens, residual_layers, residual_hiddens)]
  c = hiddens
  for i in range(k):
    last = i == k - 1
    out = out_channels if last else hiddens // 2
    layers.append(nn.ConvTranspose2d(c, out, 4, stride=2, padding=1))
    if not last:
      layers.append(nn.ReLU())
    c = out
  return nn.Sequential(*layers)


class VQVAE2(nn.Module):
  """vqlatent.nets.vqvae2.VQVAE2 with two levels (rosinality's vq-vae-2-pytorch layout)."""

  def __init__(self, channels: int, hiddens: int, residual_layers: int, residual_hiddens: int,
               strides: tuple[int, int], embedding_dim: int, num_embeddings: int):
    super().__init__()
    res = (residual_layers, residual_hiddens)
    d = embedding_dim
    self.enc_b = _encoder(channels, hiddens, *res, strides[0])
    self.enc_t = _encoder(hiddens, hiddens, *res, strides[1])
    self.quantize_conv_t = nn.Conv2d(hiddens, d, 1)
    self.quantize_t = VectorQuantizerEMA(num_embeddings, d)
    self.dec_t = _decoder(d, hiddens, *res, strides[1], d)
    self.quantize_conv_b = nn.Conv2d(d + hiddens, d, 1)
    self.quantize_b = VectorQuantizerEMA(num_embeddings, d)
    self.upsample_t = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)
    self.dec = _decoder(2 * d, hiddens, *res, strides[0], channels)

  def forward(self, images):
    enc_b = self.enc_b(images - 0.5)
    enc_t = self.enc_t(enc_b)
    quant_t, loss_t = self.quantize_t(self.quantize_conv_t(enc_t))
    cond = self.dec_t(quant_t)
    quant_b, loss_b = self.quantize_b(self.quantize_conv_b(torch.cat([cond, enc_b], 1)))
    recon = self.dec(torch.cat([quant_b, self.upsample_t(quant_t)], 1))
    return recon + 0.5, loss_t + loss_b


@dataclasses.dataclass
class TorchStep:
  module: nn.Module
  step: Callable[[torch.Tensor], float]

  def num_params(self) -> int:
    return sum(p.numel() for p in self.module.parameters())


def _vqvae(config, image_shape) -> TorchStep:
  m, qc = config.model, config.quantizer
  model = VQVAE(image_shape[-1], m.num_hiddens, m.num_residual_layers, m.num_residual_hiddens,
                m.num_downsamples, m.embedding_dim, qc.num_embeddings)
  return TorchStep(model, _adam_step(model, config.optimizer.learning_rate))


def _adam_step(model: nn.Module, learning_rate: float) -> Callable[[torch.Tensor], float]:
  """One Adam step on loss = MSE / variance + VQ loss (the same objective as ours)."""
  opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
  variance = 0.1  # A constant: the data variance only scales the loss.

  def step(images):
    opt.zero_grad(set_to_none=True)
    recon, vq_loss = model(images)
    loss = F.mse_loss(recon, images) / variance + vq_loss
    loss.backward()
    opt.step()
    return loss.item()

  return step


def _vqvae2(config, image_shape) -> TorchStep:
  m, qc = config.model, config.quantizer
  if len(m.strides) != 2:
    raise ValueError(f"The PyTorch VQ-VAE-2 reference has two levels; model.strides={m.strides}.")
  if "embedding_dim" not in qc:  # One quantizer config per level: the reference shares one.
    qc = qc[list(qc.keys())[0]]
  model = VQVAE2(image_shape[-1], m.num_hiddens, m.num_residual_layers, m.num_residual_hiddens,
                 tuple(m.strides), qc.embedding_dim, qc.num_embeddings)
  return TorchStep(model, _adam_step(model, config.optimizer.learning_rate))


BUILDERS = {"vqvae": _vqvae, "vqvae2": _vqvae2}


def build(model_name: str, config, image_shape) -> TorchStep:
  if model_name not in BUILDERS:
    raise ValueError(f"No PyTorch reference for model_name={model_name!r}; have {sorted(BUILDERS)}.")
  return BUILDERS[model_name](config, image_shape)
