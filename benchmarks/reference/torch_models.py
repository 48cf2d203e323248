"""PyTorch references of our architectures, for side-by-side speed comparisons.

Written by us to be the same networks as vqlatent's (same layers, channels,
kernel sizes, strides and quantizer maths), in the idiom of the PyTorch
codebases researchers use (nn.ConvTranspose2d upsampling, in-place EMA buffers).
Only the benchmarks and their tests import this module; torch is in the `bench` extra.

`build(model_name, config, input_shape)` returns a `TorchStep`: a module, its
optimizer and a `step(batch)` doing one Adam update on a batch of torch tensors
(`torch_batch` converts our numpy batches: images NHWC -> NCHW, codes and
labels -> int64). `load_flax_variables(model_name, module, params, model_state)`
copies our Flax variables into a module, for the equivalence tests
(tests/test_torch_reference.py: same parameters, same outputs).

  from benchmarks.reference import torch_models   # from the repository root
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ResidualStack(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, add; a final ReLU (as vqlatent.nets.layers)."""

    def __init__(self, hiddens: int, layers: int, residual_hiddens: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ReLU(),
                    nn.Conv2d(hiddens, residual_hiddens, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(residual_hiddens, hiddens, 1),
                )
                for _ in range(layers)
            ]
        )

    def forward(self, h):
        for block in self.blocks:
            h = h + block(h)
        return F.relu(h)


class VectorQuantizerEMA(nn.Module):
    """Sonnet's VectorQuantizerEMA: straight-through, commitment loss, debiased EMA."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        epsilon: float = 1e-5,
    ):
        super().__init__()
        limit = (3.0 / embedding_dim) ** 0.5
        self.register_buffer("codebook", torch.empty(num_embeddings, embedding_dim).uniform_(-limit, limit))
        self.register_buffer("cluster_size_hidden", torch.zeros(num_embeddings))
        self.register_buffer("dw_hidden", torch.zeros(num_embeddings, embedding_dim))
        self.register_buffer("counter", torch.zeros((), dtype=torch.long))
        self.k, self.beta, self.decay, self.eps = num_embeddings, commitment_cost, decay, epsilon

    def forward(self, z):  # z: (B, D, H, W)
        x = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        distances = (
            x.pow(2).sum(1, keepdim=True) - 2 * x @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        )
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
    """vqlatent.nets.autoencoder's one-level VQ-VAE (architecture='vqvae') in PyTorch (NCHW)."""

    def __init__(
        self,
        channels: int,
        hiddens: int,
        residual_layers: int,
        residual_hiddens: int,
        downsamples: int,
        embedding_dim: int,
        num_embeddings: int,
    ):
        super().__init__()
        enc, c = [], channels
        for i in range(downsamples):
            out = hiddens if i == downsamples - 1 else hiddens // 2
            enc += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.ReLU()]
            c = out
        enc += [
            nn.Conv2d(hiddens, hiddens, 3, padding=1),
            ResidualStack(hiddens, residual_layers, residual_hiddens),
        ]
        self.encoder = nn.Sequential(*enc)
        self.pre_quantization = nn.Conv2d(hiddens, embedding_dim, 1)
        self.quantizer = VectorQuantizerEMA(num_embeddings, embedding_dim)
        dec = [
            nn.Conv2d(embedding_dim, hiddens, 3, padding=1),
            ResidualStack(hiddens, residual_layers, residual_hiddens),
        ]
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
    """VQ-VAE-2 level encoder (`Encoder`, half_width_single=True): k 4x4/2 convs (C/2 ... C/2, C), 3x3, residual stack."""
    k, layers, c = _halvings(stride), [], in_channels
    for i in range(k):
        out = hiddens if (k > 1 and i == k - 1) else hiddens // 2
        layers += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.ReLU()]
        c = out
    layers += [nn.Conv2d(c, hiddens, 3, padding=1), ResidualStack(hiddens, residual_layers, residual_hiddens)]
    return nn.Sequential(*layers)


def _decoder(
    in_channels: int,
    hiddens: int,
    residual_layers: int,
    residual_hiddens: int,
    stride: int,
    out_channels: int,
):
    """vqlatent.nets.autoencoder.Decoder: 3x3 conv, residual stack, k transposed 4x4/2 convs."""
    k = _halvings(stride)
    layers = [
        nn.Conv2d(in_channels, hiddens, 3, padding=1),
        ResidualStack(hiddens, residual_layers, residual_hiddens),
    ]
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
    """vqlatent.nets.autoencoder's two-level VQ-VAE-2 (rosinality's vq-vae-2-pytorch layout)."""

    def __init__(
        self,
        channels: int,
        hiddens: int,
        residual_layers: int,
        residual_hiddens: int,
        strides: tuple[int, int],
        embedding_dim: int,
        num_embeddings: int,
    ):
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


def _gate(x):
    """tanh(a) * sigmoid(b) with [a, b] = x split on channels (vqlatent.nets.pixelcnn.gate)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """vqlatent.nets.pixelcnn.GatedLayer (NCHW): vertical and horizontal stacks, shifted convolutions.

    The vertical kernel is (k//2 + 1, k) over the input padded with k//2 rows on
    top; the horizontal one (1, k//2 + 1) over the input padded with k//2 columns
    on the left, or (1, k//2) over the input shifted right by one on the first
    layer (mask A); the vertical stack feeds the horizontal one shifted down by a row.
    """

    def __init__(
        self, channels: int, kernel_size: int, first: bool, num_classes: int | None, cond_channels: int | None
    ):
        super().__init__()
        c2, self.half, self.first = 2 * channels, kernel_size // 2, first
        self.vertical_conv = nn.Conv2d(channels, c2, (self.half + 1, kernel_size))
        self.horizontal_conv = nn.Conv2d(channels, c2, (1, self.half if first else self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(c2, c2, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.num_classes, self.cond_channels = num_classes, cond_channels
        if num_classes:
            self.class_bias_vertical = nn.Embedding(num_classes, c2)
            self.class_bias_horizontal = nn.Embedding(num_classes, c2)
        if cond_channels:
            self.cond_vertical = nn.Conv2d(cond_channels, c2, 1)
            self.cond_horizontal = nn.Conv2d(cond_channels, c2, 1)

    def _bias(self, which: str, label, cond):
        bias = 0.0
        if self.num_classes:
            bias = bias + getattr(self, f"class_bias_{which}")(label)[:, :, None, None]
        if self.cond_channels:
            bias = bias + getattr(self, f"cond_{which}")(cond)
        return bias

    def forward(self, v, h, label, cond):
        width, half = h.shape[3], self.half
        vertical_pre = self.vertical_conv(F.pad(v, (half, half, half, 0)))
        v_out = _gate(vertical_pre + self._bias("vertical", label, cond))
        h_window = F.pad(h, (half, 0, 0, 0))
        if self.first:
            h_window = h_window[..., : width + half - 1]
        above = F.pad(vertical_pre, (0, 0, 1, 0))[:, :, :-1]
        pre = self.horizontal_conv(h_window) + self.vertical_to_horizontal(above)
        out = self.horizontal_out(_gate(pre + self._bias("horizontal", label, cond)))
        return v_out, (out if self.first else out + h)


class CausalSelfAttention(nn.Module):
    """Multi-head attention in raster order (position p sees q <= p), residual; one SDPA call."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query, self.key, self.value, self.out = (nn.Linear(channels, channels) for _ in range(4))

    def forward(self, h):  # (B, C, H, W)
        b, c, height, width = h.shape
        flat = h.flatten(2).transpose(1, 2)  # (B, N, C)

        def heads(x):
            return x.reshape(b, height * width, self.num_heads, c // self.num_heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query(flat)), heads(self.key(flat)), heads(self.value(flat)), is_causal=True
        )
        flat = flat + self.out(attended.transpose(1, 2).reshape(b, height * width, c))
        return flat.transpose(1, 2).reshape(b, c, height, width)


class ConditioningStack(nn.Module):
    """Codes of the level above -> features at this level's size (embed, conv, ReLU, upsample, conv, ReLU)."""

    def __init__(self, num_codes: int, channels: int):
        super().__init__()
        self.embed = nn.Embedding(num_codes, channels)
        self.conv_in = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, cond_codes, factor: int):
        x = F.relu(self.conv_in(self.embed(cond_codes).permute(0, 3, 1, 2)))
        x = x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        return F.relu(self.conv_out(x))


class GatedPixelCNN(nn.Module):
    """vqlatent.nets.pixelcnn.GatedPixelCNN: codes (B, H, W) [, labels] [, codes above] -> logits (B, K, H, W)."""

    def __init__(
        self,
        num_codes: int,
        channels: int,
        num_layers: int,
        kernel_size: int,
        num_classes: int | None,
        cond_num_codes: int | None,
        cond_channels: int,
        attention_layers: tuple[int, ...],
        num_heads: int,
        head_channels: int,
    ):
        super().__init__()
        conditioned = cond_num_codes is not None
        self.embed = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(
            [
                GatedLayer(channels, kernel_size, l == 0, num_classes, cond_channels if conditioned else None)
                for l in range(num_layers)
            ]
        )
        self.attention = nn.ModuleDict(
            {str(l): CausalSelfAttention(channels, num_heads) for l in attention_layers}
        )
        self.cond_stack = ConditioningStack(cond_num_codes, cond_channels) if conditioned else None
        self.head_hidden = nn.Conv2d(channels, head_channels, 1)
        self.head_logits = nn.Conv2d(head_channels, num_codes, 1)

    def forward(self, codes, label=None, cond_codes=None):
        cond = None
        if self.cond_stack is not None:
            cond = self.cond_stack(cond_codes, codes.shape[1] // cond_codes.shape[1])
        v = h = self.embed(codes).permute(0, 3, 1, 2)
        for l, layer in enumerate(self.layers):
            v, h = layer(v, h, label, cond)
            if str(l) in self.attention:
                h = self.attention[str(l)](h)
        return self.head_logits(F.relu(self.head_hidden(F.relu(h))))


@dataclasses.dataclass
class TorchStep:
    """A module and `step(batch) -> loss`, one Adam update on a dict of torch tensors."""

    module: nn.Module
    step: Callable[[Mapping[str, torch.Tensor]], float]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def torch_batch(batch: Mapping[str, np.ndarray], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Our numpy batch -> torch on `device`: `image` NHWC -> NCHW float32 (uint8 images / 255, as ours);
    integer arrays (codes, labels) -> int64."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if key == "image":
            if np.issubdtype(value.dtype, np.integer):
                value = value.astype(np.float32) * np.float32(1.0 / 255.0)
            out[key] = torch.from_numpy(value).permute(0, 3, 1, 2).contiguous()
        elif np.issubdtype(value.dtype, np.integer):
            out[key] = torch.from_numpy(value.astype(np.int64))
        else:
            out[key] = torch.from_numpy(value)
    return {k: v.to(device) for k, v in out.items()}


# Set by `build`: mixed precision for the forward passes (torch.autocast), the PyTorch counterpart of
# our `config.dtype='bfloat16'` (bf16 activations, float32 parameters and optimizer).
_AUTOCAST: dict[str, Any] = {"device_type": "cpu", "dtype": None}


def _autocast():
    if _AUTOCAST["dtype"] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_AUTOCAST["device_type"], dtype=_AUTOCAST["dtype"])


def _adam_step(
    model: nn.Module, learning_rate: float, loss_fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
) -> Callable[..., torch.Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def step(batch):
        """One update; returns the loss as a tensor (no host sync: `synchronize` after a round)."""
        opt.zero_grad(set_to_none=True)
        with _autocast():
            loss = loss_fn(batch)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def synchronize(device: str) -> None:
    """Waits for the device's queued work (a no-op on the CPU, where torch runs eagerly)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autoencoder_step(model: nn.Module, learning_rate: float) -> Callable[..., float]:
    """One Adam step on loss = MSE / variance + VQ loss (the same objective as ours)."""
    variance = 0.1  # A constant: the data variance only scales the loss.

    def loss_fn(batch):
        images = batch["image"]
        recon, vq_loss = model(images)
        return F.mse_loss(recon, images) / variance + vq_loss

    return _adam_step(model, learning_rate, loss_fn)


def _vqvae(config, input_shape) -> TorchStep:
    m, qc = config.model, config.quantizer
    model = VQVAE(
        input_shape[-1],
        m.num_hiddens,
        m.num_residual_layers,
        m.num_residual_hiddens,
        m.num_downsamples,
        m.embedding_dim,
        qc.num_embeddings,
    )
    return TorchStep(model, _autoencoder_step(model, config.optimizer.learning_rate))


def _vqvae2(config, input_shape) -> TorchStep:
    m, qc = config.model, config.quantizer
    if len(m.strides) != 2:
        raise ValueError(f"The PyTorch VQ-VAE-2 reference has two levels; model.strides={m.strides}.")
    if "embedding_dim" not in qc:  # One quantizer config per level: the reference shares one.
        qc = qc[list(qc.keys())[0]]
    model = VQVAE2(
        input_shape[-1],
        m.num_hiddens,
        m.num_residual_layers,
        m.num_residual_hiddens,
        tuple(m.strides),
        qc.embedding_dim,
        qc.num_embeddings,
    )
    return TorchStep(model, _autoencoder_step(model, config.optimizer.learning_rate))


def _pixelcnn(config, levels) -> TorchStep:
    """The prior of `config.prior.level`; `levels` is {level: LevelSpec(shape, num_codes)}."""
    prior, m = config.prior, config.model
    level, cond_level = prior.level, prior.conditioning_level
    num_classes = int(config.data.num_classes) if prior.class_conditional else None
    model = GatedPixelCNN(
        levels[level].num_codes,
        m.channels,
        m.num_layers,
        m.kernel_size,
        num_classes,
        levels[cond_level].num_codes if cond_level else None,
        m.cond_channels,
        tuple(m.attention_layers),
        m.num_heads,
        m.head_channels,
    )
    code_key, cond_key = f"codes_{level}", f"codes_{cond_level}"

    def loss_fn(batch):
        """Mean over positions and examples of -log p(x_ij | x_<ij, y, c) (cross-entropy, nats)."""
        codes = batch[code_key]
        logits = model(
            codes, batch["label"] if num_classes else None, batch[cond_key] if cond_level else None
        )
        return F.cross_entropy(logits, codes)

    return TorchStep(model, _adam_step(model, config.optimizer.learning_rate, loss_fn))


def _infogan(config, input_shape):
    """The InfoGAN port (`torch_infogan.py`): `step` is one full update, D/Q then G."""
    from benchmarks.reference import torch_infogan  # pylint: disable=g-import-not-at-top

    port = torch_infogan.build(config, input_shape)
    port.autocast = _autocast
    return port


class PatchDiscriminator(nn.Module):
    """vqlatent.nets.discriminator.PatchDiscriminator (taming's NLayerDiscriminator, BatchNorm) in PyTorch."""

    def __init__(self, channels: int, width: int, num_layers: int):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for k in range(1, num_layers + 1):
            out = width * min(2**k, 8)
            stride = 2 if k < num_layers else 1
            layers += [nn.Conv2d(c, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            c = out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images):
        return self.net(2.0 * images - 1.0)


def _vqgan(config, input_shape) -> TorchStep:
    """The VQGAN step as taming-transformers trains it (one-level VQ-VAE; the discriminator on):
    the autoencoder's update with L1 + VQ + lambda * disc_weight * (-E D(x_hat)), lambda of eq. (7)
    from `torch.autograd.grad` at the decoder's last kernel, then D's hinge update on x and x_hat."""
    m, qc, loss = config.model, config.quantizer, config.loss
    if "num_downsamples" not in m:
        raise ValueError("The PyTorch VQGAN reference has one level (configs/vqgan.py).")
    ae = VQVAE(
        input_shape[-1],
        m.num_hiddens,
        m.num_residual_layers,
        m.num_residual_hiddens,
        m.num_downsamples,
        m.embedding_dim,
        qc.num_embeddings,
    )
    d = m.discriminator
    disc = PatchDiscriminator(input_shape[-1], d.channels, d.num_layers)
    opt_ae = torch.optim.Adam(ae.parameters(), lr=config.optimizer.learning_rate)
    dopt = config.optimizer.discriminator
    opt_d = torch.optim.Adam(disc.parameters(), lr=dopt.learning_rate, betas=(dopt.b1, dopt.b2))
    last = ae.decoder[-1].weight

    def step(batch):
        x = batch["image"]
        with _autocast():
            recon, vq_loss = ae(x)
            rec = loss.l1_weight * (x - recon).abs().mean() + loss.l2_weight * F.mse_loss(recon, x)
            g_loss = -disc(recon).mean()
        rec_grad = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        lam = torch.clamp(rec_grad.norm() / (g_grad.norm() + 1e-4), 0.0, 1e4).detach()
        opt_ae.zero_grad(set_to_none=True)
        (rec + vq_loss + loss.disc_weight * lam * g_loss).backward()
        opt_ae.step()
        opt_d.zero_grad(set_to_none=True)
        with _autocast():
            fake = recon.detach()
            d_loss = 0.5 * (F.relu(1.0 - disc(x)).mean() + F.relu(1.0 + disc(fake)).mean())
        d_loss.backward()
        opt_d.step()
        return d_loss.detach()

    return TorchStep(nn.ModuleDict({"autoencoder": ae, "discriminator": disc}), step)


BUILDERS = {"vqvae": _vqvae, "vqvae2": _vqvae2, "pixelcnn": _pixelcnn, "infogan": _infogan, "vqgan": _vqgan}


def build(model_name: str, config, input_shape, device: str = "cpu", amp: bool = False) -> TorchStep:
    """`input_shape`: the image shape (H, W, C) of an autoencoder, or the code levels of a prior.

    `device`: 'cpu' or 'cuda'; `amp`: bfloat16 autocast for the forward passes (the counterpart of our
    bf16 compute dtype; parameters, gradients and Adam stay float32).
    """
    if model_name not in BUILDERS:
        raise ValueError(f"No PyTorch reference for model_name={model_name!r}; have {sorted(BUILDERS)}.")
    _AUTOCAST.update(device_type=device.split(":")[0], dtype=torch.bfloat16 if amp else None)
    torch_step = BUILDERS[model_name](config, input_shape)
    torch_step.module.to(device)
    return torch_step


# -- copying our Flax variables in (the equivalence tests) --------------------------------
def _copy(module: nn.Module, name: str, value: np.ndarray) -> None:
    """One Flax leaf into the torch layer that computes the same function."""
    value = torch.from_numpy(np.array(value, dtype=np.float32))
    if name == "bias":
        target = value
    elif name == "embedding":
        target = value
    elif name == "kernel" and isinstance(module, nn.ConvTranspose2d):
        # Flax transposes without flipping the kernel; PyTorch's transposed conv flips it.
        target = value.flip(0, 1).permute(2, 3, 0, 1)
    elif name == "kernel" and isinstance(module, nn.Conv2d):
        target = value.permute(3, 2, 0, 1) if value.ndim == 4 else value.t()[:, :, None, None]
    elif name == "kernel" and isinstance(module, nn.Linear):
        target = value.t()
    else:
        raise ValueError(f"Cannot copy Flax leaf {name!r} {tuple(value.shape)} into {module}.")
    param = module.bias if name == "bias" else module.weight
    if param.shape != target.shape:
        raise ValueError(
            f"Shape mismatch for {name!r} into {module}: {tuple(target.shape)} vs {tuple(param.shape)}."
        )
    with torch.no_grad():
        param.copy_(target)


def _encoder_layer(seq: nn.Sequential, path: tuple[str, ...]) -> nn.Module:
    """Our Encoder names -> the layers of `_encoder` / VQVAE.encoder."""
    num_down = sum(isinstance(layer, nn.Conv2d) and layer.stride == (2, 2) for layer in seq)
    head, rest = path[0], path[1:]
    if head.startswith("down_"):
        return seq[2 * int(head[5:])]
    if head == "conv3x3":
        return seq[2 * num_down]
    return _residual_layer(seq[2 * num_down + 1], rest)


def _decoder_layer(seq: nn.Sequential, path: tuple[str, ...]) -> nn.Module:
    """Our Decoder names -> the layers of `_decoder` / VQVAE.decoder."""
    head, rest = path[0], path[1:]
    if head == "conv3x3":
        return seq[0]
    if head == "residual_stack":
        return _residual_layer(seq[1], rest)
    return seq[2 + 2 * int(head[3:])]  # up_i


def _residual_layer(stack: ResidualStack, path: tuple[str, ...]) -> nn.Module:
    kind, index = path[0].rsplit("_", 1)
    return stack.blocks[int(index)][1 if kind == "res3x3" else 3]


def _vqvae_layer(model: VQVAE, path):
    if path[0] == "encoder":
        return _encoder_layer(model.encoder, path[1:])
    if path[0] == "decoder":
        return _decoder_layer(model.decoder, path[1:])
    return getattr(model, path[0])


_VQVAE2_NAMES = {
    "encoders_bottom": "enc_b",
    "encoders_top": "enc_t",
    "pre_quantization_top": "quantize_conv_t",
    "pre_quantization_bottom": "quantize_conv_b",
    "condition_decoders_bottom": "dec_t",
    "decoder": "dec",
    "quantizers_bottom": "quantize_b",
    "quantizers_top": "quantize_t",
}


def _vqvae2_layer(model: VQVAE2, path):
    if path[0] == "upsamplers_top_to_bottom":
        return model.upsample_t
    target = getattr(model, _VQVAE2_NAMES[path[0]])
    if path[0].startswith("encoders_"):
        return _encoder_layer(target, path[1:])
    if path[0] in ("decoder", "condition_decoders_bottom"):
        return _decoder_layer(target, path[1:])
    return target


def _pixelcnn_layer(model: GatedPixelCNN, path):
    module = model
    for part in path:
        if part.startswith("gated_"):
            module = module.layers[int(part[6:])]
        elif part.startswith("attention_"):
            module = module.attention[part[10:]]
        else:
            module = getattr(module, part)
    return module


_LAYER_FINDERS = {"vqvae": _vqvae_layer, "vqvae2": _vqvae2_layer, "pixelcnn": _pixelcnn_layer}


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def load_flax_variables(
    model_name: str,
    module: nn.Module,
    params: Mapping[str, Any],
    model_state: Mapping[str, Any] | None = None,
) -> None:
    """Copies our Flax `params` (and the EMA codebooks of `model_state['vq_ema']`) into `module`.

    Every torch parameter must receive a value: a leaf left over on either side is an error.
    """
    find = _LAYER_FINDERS[model_name]
    filled = set()
    for path, value in _leaves(params):
        layer = find(module, path[:-1])
        _copy(layer, path[-1], value)
        filled.add(id(layer.bias if path[-1] == "bias" else layer.weight))
    for path, value in _leaves((model_state or {}).get("vq_ema", {})):
        if path[-1] == "codebook":
            quantizer = find(module, path[:-1])
            with torch.no_grad():
                quantizer.codebook.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
    missing = [name for name, p in module.named_parameters() if id(p) not in filled]
    if missing:
        raise ValueError(f"No Flax value for torch parameters {missing}.")
