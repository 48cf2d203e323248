"""VQGAN training (Esser et al. 2021): the autoencoder task with L1 / L2 / LPIPS reconstruction
losses and a PatchGAN discriminator whose loss is weighted adaptively (`vqlatent.vqgan.losses`).

Everything of `vqlatent.trainers.autoencoder` holds (any number of levels, any quantizer, the
same model config and evaluation: MSE, PSNR, SSIM, codebook usage, reconstruction grids, code
extraction); the train state holds two networks, `params = {'autoencoder', 'discriminator'}`
with one optimizer each (`config.optimizer` for the autoencoder, `config.optimizer.discriminator`
for D) and their model states (the quantizers' EMA codebooks; D's BatchNorm statistics or ActNorm
start; LeCam's logit averages; the LPIPS weights when the perceptual loss is on), so a resumed run
continues bit for bit.

One `train_step`, per batch x (both updates from the same (autoencoder, D); one autoencoder
forward and backward per step):

  1. x_hat = G(q(E(x))) with its pullback to the autoencoder's parameters;
  2. from step `loss.disc_start` on (before it, D is not updated and nothing of it reaches the
     autoencoder; its terms are still computed, then dropped, so every step costs the same):
     - L_GAN = the generator loss of D(x_hat) (D in train mode; its batch statistics not kept),
       its gradient at x_hat through D;
     - lambda of eq. (7) from the gradients of L_rec and L_GAN with respect to the decoder's last
       layer's kernel (`_last_layer_grad`: that layer's input is recorded in the forward pass, so
       the two gradients cost one small convolution gradient each, not a backward pass each);
     - D's update on D(x) and D(sg(x_hat)), its BatchNorm statistics kept;
  3. the autoencoder's update with the gradient of
       L_rec + L_VQ + disc_weight * lambda * f(t) * L_GAN,
     pulled back from x_hat in one backward pass.

Taming alternates instead (the generator step, then D on the updated generator's output); here
D sees the reconstructions of the autoencoder before this step's update, which saves a second
autoencoder forward per step.

Metrics: loss (the autoencoder's total), mse, l1, rec_loss, perceptual_loss (with LPIPS),
vq_loss, g_loss, d_loss, lambda (eq. 7, before disc_weight), disc_factor, logits_real and
logits_fake (D's mean patch logits; all these 0 before `disc_start`), lecam_loss (with LeCam),
and the autoencoder's per-level codebook metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vqlatent import quantizers
from vqlatent.nets import lpips as lpips_lib
from vqlatent.nets.discriminator import PatchDiscriminator, check_discriminator
from vqlatent.nets.levels import num_halvings
from vqlatent.trainers import autoencoder, base
from vqlatent.trainers.base import compute_dtype
from vqlatent.trainers.optim import make_optimizer
from vqlatent.vqgan import losses

NETS = ("autoencoder", "discriminator")
GAN_METRICS = ("g_loss", "d_loss", "lambda", "logits_real", "logits_fake")


class Task(autoencoder.Task):
    """A VQ-VAE / VQ-VAE-2 trained with VQGAN's losses; evaluation and codes as the autoencoder's."""

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        losses.check_loss_config(config.loss)
        d = config.model.discriminator
        check_discriminator(spec.image_shape, d.num_layers, d.norm)
        if "discriminator" not in config.optimizer:
            raise ValueError(
                "A VQGAN config needs config.optimizer.discriminator (D's optimizer, beside the "
                "autoencoder's fields of config.optimizer): start from configs/vqgan.py."
            )
        super().__init__(config, spec)
        loss = config.loss
        dtype = compute_dtype(config.dtype)
        self.discriminator = PatchDiscriminator(
            num_layers=d.num_layers,
            channels=d.channels,
            norm=d.norm,
            downsample=d.get("downsample", "auto"),
            dtype=dtype,
        )
        self.tx = {
            "autoencoder": make_optimizer(config.optimizer, config.num_train_steps),
            "discriminator": make_optimizer(config.optimizer.discriminator, config.num_train_steps),
        }
        self.gan = bool(loss.disc_weight > 0 and loss.disc_factor > 0)
        self.lecam = bool(self.gan and loss.lecam_weight > 0)
        self.lpips = None
        if loss.perceptual_weight > 0:
            if min(spec.image_shape[:2]) < 16:
                raise ValueError(
                    f"loss.perceptual_weight={loss.perceptual_weight} needs images of at least 16x16 "
                    f"(VGG16 pools four times), the data's are {spec.image_shape[0]}x{spec.image_shape[1]}: "
                    f"set --config.loss.perceptual_weight=0."
                )
            self.lpips = lpips_lib.LPIPS(dtype=dtype)
            self.lpips_params = lpips_lib.load_params(loss.get("perceptual_weights", ""))
        self.l2_scale = self.data_variance  # 1 unless loss.normalize_by_data_variance.
        # The decoder's last layer G_L of eq. (7): its last 4x4 stride-2 transposed convolution.
        num_upsamples = num_halvings(self.model.strides[0])
        self.last_layer = ("decoder", f"up_{num_upsamples - 1}")

    # -- variables ---------------------------------------------------------------
    def _variables(self, state: base.TrainState) -> dict[str, Any]:
        return {"params": state.params["autoencoder"], **state.model_state["autoencoder"]}

    def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> base.TrainState:
        ae_rng, d_rng, state_rng = jax.random.split(rng, 3)
        images = batch["image"]
        variables = {
            "autoencoder": self.init_variables(ae_rng, images),
            "discriminator": self.discriminator.init(d_rng, images, train=False),
        }
        params = {name: v["params"] for name, v in variables.items()}
        model_state = {name: {k: x for k, x in v.items() if k != "params"} for name, v in variables.items()}
        if self.lecam:
            model_state["lecam"] = {"real": jnp.zeros((), jnp.float32), "fake": jnp.zeros((), jnp.float32)}
        if self.lpips is not None:  # Constants, in the state so that the step takes them as an argument.
            model_state["lpips"] = jax.tree.map(jnp.asarray, self.lpips_params)
        return base.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={name: self.tx[name].init(params[name]) for name in NETS},
            model_state=model_state,
            rng=state_rng,
        )

    # -- losses ------------------------------------------------------------------
    def reconstruction_loss(self, reconstructions, images, lpips_params):
        """L_rec (float32 scalar) and its parts."""
        cfg = self.config.loss
        l1 = jnp.mean(jnp.abs(reconstructions - images))
        mse = jnp.mean(jnp.square(reconstructions - images))
        rec = losses.reconstruction_loss(images, reconstructions, cfg.l1_weight, cfg.l2_weight, self.l2_scale)
        parts = {"l1": l1, "mse": mse}
        if self.lpips is not None:
            perceptual = jnp.mean(self.lpips.apply({"params": lpips_params}, images, reconstructions))
            rec = rec + cfg.perceptual_weight * perceptual
            parts["perceptual_loss"] = perceptual
        return rec, parts

    def discriminator_loss(self, d_params, d_state, lecam_state, real, fake):
        """D's loss on real and (fixed) reconstructed images; returns (loss, (new D state, metrics))."""
        real_logits, d_state = base.apply_for_training(self.discriminator, d_params, d_state, real)
        fake_logits, d_state = base.apply_for_training(self.discriminator, d_params, d_state, fake)
        loss = losses.discriminator_loss(self.config.loss.gan_loss, real_logits, fake_logits)
        metrics = {"d_loss": loss, "logits_real": jnp.mean(real_logits), "logits_fake": jnp.mean(fake_logits)}
        if self.lecam:
            lecam = losses.lecam_regularizer(
                real_logits, fake_logits, lecam_state["real"], lecam_state["fake"]
            )
            metrics["lecam_loss"] = lecam
            loss = loss + self.config.loss.lecam_weight * lecam
        return loss, (d_state, metrics)

    def _last_layer_grad(self, layer: nn.Module, inputs: jax.Array, kernel_and_bias, cotangent):
        """d L / d(kernel of G_L) from d L / d x_hat: G_L's vector-Jacobian product at its input."""
        _, pullback = jax.vjp(lambda p: layer.apply({"params": p}, inputs), kernel_and_bias)
        return pullback(cotangent.astype(inputs.dtype))[0]["kernel"]

    def _forward(self, ae_params, ae_state, images, rng, recorded: dict[str, Any]):
        """The autoencoder's forward for `jax.vjp`: ((x_hat, L_VQ), (new state, vq outputs, G_L's input)).

        G_L itself (an unbound copy of the module) is left in `recorded['layer']`.
        """
        inputs = {}

        def record_last_layer(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and tuple(context.module.path) == self.last_layer:
                recorded["layer"] = context.module.clone(parent=None, name=None)
                inputs["last_layer"] = args[0]
            return next_fun(*args, **kwargs)

        rngs = {quantizers.QUANTIZER_RNG: rng}
        with nn.intercept_methods(record_last_layer):
            outputs, new_state = base.apply_for_training(self.model, ae_params, ae_state, images, rngs=rngs)
        vq = outputs["vq"]
        vq_loss = sum(vq[n]["loss"] for n in self.level_names)
        return (outputs["reconstruction"], vq_loss), (new_state, vq, inputs["last_layer"])

    # -- training ----------------------------------------------------------------
    def train_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        images = batch["image"]
        cfg = self.config.loss
        rng = jax.random.fold_in(state.rng, state.step)
        params, opt_state, model_state = dict(state.params), dict(state.opt_state), dict(state.model_state)

        # 1. The autoencoder's forward, and its pullback from (x_hat, L_VQ) to its parameters.
        recorded = {}
        (recon, vq_loss), pullback, (ae_state, vq, last_input) = jax.vjp(
            lambda p: self._forward(p, model_state["autoencoder"], images, rng, recorded),
            params["autoencoder"],
            has_aux=True,
        )
        (rec_loss, parts), rec_cotangent = jax.value_and_grad(
            lambda x: self.reconstruction_loss(x, images, model_state.get("lpips")), has_aux=True
        )(recon)
        metrics = {"loss": rec_loss + vq_loss, "mse": parts["mse"], **parts, "rec_loss": rec_loss}
        metrics["vq_loss"] = vq_loss
        cotangent = rec_cotangent

        # 2. The GAN terms and D's update, from step disc_start on.
        if self.gan:
            factor = losses.discriminator_factor(state.step, cfg.disc_start, cfg.disc_factor)
            last_params = params["autoencoder"]
            for name in self.last_layer:
                last_params = last_params[name]
            d_keys = ("discriminator", "lecam") if self.lecam else ("discriminator",)

            def gan_terms(_):
                d_params, d_state = params["discriminator"], model_state["discriminator"]

                def g_loss_fn(x):
                    logits, _ = base.apply_for_training(self.discriminator, d_params, d_state, x)
                    return losses.generator_loss(cfg.gan_loss, logits)

                g_loss, gan_cotangent = jax.value_and_grad(g_loss_fn)(recon)
                lam = losses.adaptive_weight(
                    self._last_layer_grad(recorded["layer"], last_input, last_params, rec_cotangent),
                    self._last_layer_grad(recorded["layer"], last_input, last_params, gan_cotangent),
                )
                weight = cfg.disc_weight * lam * factor
                d_grads, (new_d_state, d_metrics) = jax.grad(self.discriminator_loss, has_aux=True)(
                    d_params, d_state, model_state.get("lecam"), images, jax.lax.stop_gradient(recon)
                )
                updates, new_d_opt = self.tx["discriminator"].update(
                    d_grads, opt_state["discriminator"], d_params
                )
                new = {
                    "params": optax.apply_updates(d_params, updates),
                    "opt_state": new_d_opt,
                    "discriminator": new_d_state,
                }
                if self.lecam:
                    decay = cfg.lecam_ema_decay
                    old = model_state["lecam"]
                    new["lecam"] = {
                        "real": decay * old["real"] + (1 - decay) * d_metrics["logits_real"],
                        "fake": decay * old["fake"] + (1 - decay) * d_metrics["logits_fake"],
                    }
                terms = {"g_loss": g_loss, "lambda": lam, "weighted_g_loss": weight * g_loss, **d_metrics}
                return (weight * gan_cotangent).astype(recon.dtype), new, terms

            def skip(_):
                new = {
                    "params": params["discriminator"],
                    "opt_state": opt_state["discriminator"],
                    **{k: model_state[k] for k in d_keys},
                }
                terms = {k: jnp.zeros((), jnp.float32) for k in GAN_METRICS + ("weighted_g_loss",)}
                if self.lecam:
                    terms["lecam_loss"] = jnp.zeros((), jnp.float32)
                return jnp.zeros_like(recon), new, terms

            # Both computed, one kept: XLA:CPU runs the convolutions inside a `lax.cond` branch about
            # 40x slower than outside on the MNIST model (docs/lab/vqgan.md).
            active = state.step >= cfg.disc_start
            gan_cotangent, new, terms = jax.tree.map(
                lambda on, off: jnp.where(active, on, off), gan_terms(None), skip(None)
            )
            cotangent = cotangent + gan_cotangent
            params["discriminator"], opt_state["discriminator"] = new["params"], new["opt_state"]
            for k in d_keys:
                model_state[k] = new[k]
            metrics["loss"] = metrics["loss"] + terms.pop("weighted_g_loss")
            metrics.update(terms, disc_factor=factor)

        # 3. The autoencoder's update: one backward pass from x_hat (and L_VQ).
        (ae_grads,) = pullback((cotangent, jnp.ones_like(vq_loss)))
        updates, opt_state["autoencoder"] = self.tx["autoencoder"].update(
            ae_grads, opt_state["autoencoder"], params["autoencoder"]
        )
        params["autoencoder"] = optax.apply_updates(params["autoencoder"], updates)
        model_state["autoencoder"] = ae_state
        metrics.update(self.level_metrics(vq))
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
        )
        return new_state, metrics
