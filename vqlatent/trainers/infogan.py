"""InfoGAN training (Chen et al. 2016), as a Task of the shared loop.

Objective (eq. 6): min_{G,Q} max_D V(D, G) - lambda L_I(G, Q), with the
non-saturating GAN loss and the lower bound L_I of eq. (5) (see
`vqlatent.infogan.objectives`). One `train_step` makes both updates of the
paper's released code, in order, each on freshly sampled latents:

  1. D and Q: minimise  -E log D(x) - E log(1 - D(G(z, c))) - sum_i w_i E log Q(c_i | G(z, c)),
     generated images held fixed. w_i = lambda_i (the paper: Q is trained with
     lambda L_I, sharing D's trunk), or w_i = 1 with `info.detach_q` (below).
  2. G: minimise  -E log D(G(z, c)) - sum_i lambda_i E log Q(c_i | G(z, c)),
     through the updated D and Q: the information term's gradient reaches G
     through Q and the trunk.

`info.augment` (`configs/infogan.py:mnist_invariant`): the categorical codes'
log Q(c | .) in both updates is read from a randomly rotated, scaled and shifted copy of each
generated image (a second D/Q pass, whose BatchNorm statistics are not kept); the GAN loss and
the continuous codes' terms stay on the clean images. Still a lower bound on I(c; G(z, c)) by
the data-processing inequality: `vqlatent.infogan.invariance`.

Optimisers (section 7 and the released code): Adam, beta1 = 0.5, learning rate
2e-4 for D/Q and 1e-3 for G; batch 128.

BatchNorm (train mode) normalises each of D's three passes (real, generated for
D, generated for G) with its own batch statistics, as the released code does.
Under jit with the batch sharded over the mesh these are statistics of the
global batch. D's running averages (used at evaluation) follow the generated
batches that Q is trained on; G's follow the G step. Classifying the real test
digits with them or with each test batch's own statistics gives the same
accuracy (docs/lab/infogan.md, "Evaluation with D's running BatchNorm averages").

`info.detach_q` (the lambda = 0 control of `configs/infogan.py:mnist_gan`):
Q's gradient stops at the trunk and Q is fit by maximum likelihood (w_i = 1), so
D, and through D the generator, play a plain GAN while Q still measures
L_I(G, Q) on G's samples — the paper's Figure 1 comparison, where Q is trained
for a regular GAN without it affecting G. (Since Q reads features trained only
for D, its bound may be looser than with a Q network of its own.)

Evaluation (every `eval_every_steps` and `--mode=eval`): L_I per code on generated samples,
each categorical code's unsupervised accuracy on the real eval split, the continuous codes'
slant and width along sweeps, and PNG grids (Figure 2); what each figure is:
`vqlatent.infogan.evaluation`. `--mode=traverse` writes the grids with `traversal.num_values`
columns (WORKDIR/images/<grid>_<num_values>cols_<step>.png; `vqlatent.infogan.traversal.save_grid`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from vqlatent import infogan as ig
from vqlatent.infogan import evaluation, invariance, measures, traversal
from vqlatent.nets.infogan import (
    Discriminator,
    Generator,
    check_discriminator_shape,
    check_generator_shape,
    init_variables,
)
from vqlatent.trainers import base
from vqlatent.trainers import workdir as workdir_lib
from vqlatent.trainers.base import compute_dtype
from vqlatent.trainers.optim import make_optimizer

NETS = ("generator", "discriminator")
EVAL_SEED = 20160612  # Generated eval samples and grids use fixed keys: comparable across steps.


class Task(base.Task):
    """InfoGAN on images in [0, 1]: generator, discriminator trunk with D and Q heads."""

    def __init__(self, config: ml_collections.ConfigDict, spec: Any):
        super().__init__(config, spec)
        m = config.model
        self.latent_spec = ig.latent_spec_from_config(m.latent)
        ig.require_codes(self.latent_spec, any_code=True, purpose="InfoGAN (model_name='infogan')")
        ig.check_continuous_std(m.q.continuous_std, m.q.fixed_std)
        check_generator_shape(spec.image_shape, m.generator.base_shape, len(m.generator.upconv_features))
        check_discriminator_shape(spec.image_shape, len(m.discriminator.conv_features))
        dtype = compute_dtype(config.dtype)
        if not m.init_std > 0:
            raise ValueError(f"model.init_std={m.init_std!r} must be positive (kernels ~ N(0, init_std^2)).")
        kernel_init = nn.initializers.normal(m.init_std)
        self.generator = Generator(
            fc_features=tuple(m.generator.fc_features),
            base_shape=tuple(m.generator.base_shape),
            upconv_features=tuple(m.generator.upconv_features),
            out_channels=spec.image_shape[-1],
            kernel_init=kernel_init,
            dtype=dtype,
            upsample=m.generator.get("upsample", "auto"),
        )
        self.discriminator = Discriminator(
            conv_features=tuple(m.discriminator.conv_features),
            fc_features=tuple(m.discriminator.fc_features),
            q_hidden=m.q.hidden,
            q_output_dim=ig.q_output_dim(self.latent_spec, m.q.continuous_std),
            leaky_slope=m.discriminator.leaky_slope,
            kernel_init=kernel_init,
            dtype=dtype,
            downsample=m.discriminator.get("downsample", "auto"),
        )
        self.entropies = ig.code_entropies(self.latent_spec)
        info = config.info
        for field in ("lambda_categorical", "lambda_continuous"):
            if not info[field] >= 0:
                raise ValueError(f"info.{field}={info[field]!r} must be >= 0.")
        self.detach_q = bool(info.detach_q)
        self.g_weights = ig.code_weights(self.latent_spec, info.lambda_categorical, info.lambda_continuous)
        untrained = [name for name, w in self.g_weights.items() if w == 0]
        if untrained and not self.detach_q:
            raise ValueError(
                f"info.lambda_{'categorical' if untrained[0].startswith('cat') else 'continuous'}=0 with "
                f"info.detach_q=False leaves Q untrained for code(s) {untrained}: set info.detach_q=True "
                f"(a plain GAN with Q fit on the side, the paper's control) or a positive lambda."
            )
        self.q_weights = {name: 1.0 for name in self.g_weights} if self.detach_q else dict(self.g_weights)
        # info.augment: the categorical codes' term on randomly transformed fakes (None: off).
        self.augment = invariance.transform_ranges_from_config(info.get("augment"), self.latent_spec)
        self.tx = {name: make_optimizer(config.optimizer[name], config.num_train_steps) for name in NETS}
        self.num_classes = spec.num_classes
        self.classifier = self._load_classifier(config.traversal.get("classifier_workdir", ""))

    def _load_classifier(self, workdir: str):
        """images -> classes of `traversal.classifier_workdir`, or None without one (the
        class-keeping measure of the continuous codes is then skipped, and the log says so)."""
        if not self.latent_spec.num_continuous or not self.config.traversal.get("measure_rows_per_batch", 0):
            return None
        if not workdir:
            logging.info(
                "traversal.classifier_workdir is not set: the continuous-code measures skip the "
                "fraction of sweeps that keep the digit class (train configs/classifier.py:mnist)."
            )
            return None
        classifier, state = workdir_lib.load_classifier(
            workdir, "traversal.classifier_workdir", "The class-keeping measure of the continuous codes"
        )
        if tuple(classifier.spec.image_shape) != tuple(self.spec.image_shape):
            raise ValueError(
                f"config.traversal.classifier_workdir={workdir!r} classifies "
                f"{tuple(classifier.spec.image_shape)} images, but this InfoGAN makes "
                f"{tuple(self.spec.image_shape)} images: train the classifier on this dataset."
            )

        def classify(images: jax.Array) -> jax.Array:
            return jnp.argmax(classifier.task.classify(state, images)["logits"], axis=-1)

        return classify

    # -- helpers -----------------------------------------------------------------
    def q_posterior(self, q_outputs: jax.Array) -> ig.Posterior:
        """Q's flat outputs -> Q(c | x) per code."""
        q = self.config.model.q
        return ig.split_q_outputs(self.latent_spec, q_outputs, q.continuous_std, q.fixed_std)

    def fake_log_likelihoods(self, d_variables, fake, fake_out, latents, transform_rng, detach_q=False):
        """log Q(c_i | G(z, c)) per code; with `info.augment` the categorical codes' from a second
        pass of D/Q on T(G(z, c)) (`vqlatent.infogan.invariance`; its BatchNorm statistics are
        not kept). Returns (log-likelihoods, Q's posterior on the clean images)."""
        posterior = self.q_posterior(fake_out["q_outputs"])
        if self.augment is None:
            return ig.code_log_likelihoods(self.latent_spec, posterior, latents), posterior
        if transform_rng is None:
            raise ValueError("info.augment is on: the transformation needs a random key (transform_rng).")
        transformed = invariance.random_transform(transform_rng, fake, self.augment)
        out, _ = self.discriminator.apply(
            d_variables, transformed, train=True, detach_q=detach_q, mutable=["batch_stats"]
        )
        log_liks = invariance.invariant_log_likelihoods(
            self.latent_spec, posterior, self.q_posterior(out["q_outputs"]), latents
        )
        return log_liks, posterior

    def _variables(self, state: base.TrainState, net: str) -> dict[str, Any]:
        return {"params": state.params[net], **state.model_state[net]}

    def generate(self, state: base.TrainState, latents: ig.Latents) -> jax.Array:
        """G(z, c) in evaluation mode (BatchNorm running averages), images in [0, 1]."""
        return self.generator.apply(
            self._variables(state, "generator"), ig.generator_input(self.latent_spec, latents), train=False
        )

    # -- state -------------------------------------------------------------------
    def init_state(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> base.TrainState:
        g_rng, d_rng, state_rng = jax.random.split(rng, 3)
        images = batch["image"]
        inputs = jnp.zeros((images.shape[0], self.latent_spec.input_dim), jnp.float32)
        init_std = self.config.model.init_std
        variables = {
            "generator": init_variables(self.generator, g_rng, inputs, train=False, init_std=init_std),
            "discriminator": init_variables(
                self.discriminator, d_rng, images, train=False, init_std=init_std
            ),
        }
        params = {name: v["params"] for name, v in variables.items()}
        model_state = {name: {k: x for k, x in v.items() if k != "params"} for name, v in variables.items()}
        opt_state = {name: self.tx[name].init(params[name]) for name in NETS}
        return base.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            model_state=model_state,
            rng=state_rng,
        )

    # -- training ----------------------------------------------------------------
    def discriminator_loss(self, d_params, d_state, real, fake, latents, transform_rng=None):
        """Step 1's loss; returns (loss, (new D model state, metrics))."""
        real_out, _ = self.discriminator.apply(
            {"params": d_params, **d_state}, real, train=True, mutable=["batch_stats"]
        )
        fake_out, new_d_state = self.discriminator.apply(
            {"params": d_params, **d_state}, fake, train=True, detach_q=self.detach_q, mutable=["batch_stats"]
        )
        gan = ig.discriminator_gan_loss(real_out["d_logits"], fake_out["d_logits"])
        log_liks, _ = self.fake_log_likelihoods(
            {"params": d_params, **d_state}, fake, fake_out, latents, transform_rng, detach_q=self.detach_q
        )
        q_loss = ig.info_loss(log_liks, self.q_weights)
        metrics = {
            "d_loss": gan,
            "q_loss": q_loss,
            "d_real_prob": jnp.mean(jax.nn.sigmoid(real_out["d_logits"])),
            "d_fake_prob": jnp.mean(jax.nn.sigmoid(fake_out["d_logits"])),
        }
        return gan + q_loss, (new_d_state, metrics)

    def generator_loss(self, g_params, g_state, d_variables, latents, transform_rng=None):
        """Step 2's loss; returns (loss, (new G model state, metrics))."""
        inputs = ig.generator_input(self.latent_spec, latents)
        fake, new_g_state = self.generator.apply(
            {"params": g_params, **g_state}, inputs, train=True, mutable=["batch_stats"]
        )
        out, _ = self.discriminator.apply(d_variables, fake, train=True, mutable=["batch_stats"])
        gan = ig.generator_gan_loss(out["d_logits"])
        log_liks, posterior = self.fake_log_likelihoods(d_variables, fake, out, latents, transform_rng)
        info = ig.info_loss(log_liks, self.g_weights)
        bounds = ig.mutual_information_lower_bounds(log_liks, self.entropies)
        metrics = {"g_loss": gan, "info_loss": info, **{f"{k}_mi_lower_bound": v for k, v in bounds.items()}}
        if self.augment is not None:  # The plain bound of the categorical codes, beside the invariant one.
            clean = ig.code_log_likelihoods(self.latent_spec, posterior, latents)
            for i in range(self.latent_spec.num_categorical):
                metrics[f"cat{i}_clean_mi_lower_bound"] = (
                    jnp.mean(clean[f"cat{i}"]) + self.entropies[f"cat{i}"]
                )
        if self.latent_spec.num_continuous and self.config.model.q.continuous_std == "learned":
            stds = jnp.mean(jnp.exp(posterior.continuous_log_std), axis=0)
            metrics.update({f"cont{j}_q_std": stds[j] for j in range(self.latent_spec.num_continuous)})
        return gan + info, (new_g_state, metrics)

    def train_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        real = batch["image"]
        batch_size = real.shape[0]
        # The latents of both updates in one draw (one random kernel for XLA to compile).
        step_rng = jax.random.fold_in(state.rng, state.step)
        both = ig.sample_latents(step_rng, self.latent_spec, 2 * batch_size)
        d_transform_rng, g_transform_rng = (
            jax.random.split(jax.random.fold_in(step_rng, 1)) if self.augment is not None else (None, None)
        )
        d_latents, g_latents = (
            jax.tree.map(lambda a: a[:batch_size], both),
            jax.tree.map(lambda a: a[batch_size:], both),
        )
        params, opt_state, model_state = dict(state.params), dict(state.opt_state), dict(state.model_state)

        # 1. D and Q, on a generated batch held fixed (G in train mode; its statistics are not kept).
        fake, _ = self.generator.apply(
            self._variables(state, "generator"),
            ig.generator_input(self.latent_spec, d_latents),
            train=True,
            mutable=["batch_stats"],
        )
        d_grads, (d_state, d_metrics) = jax.grad(self.discriminator_loss, has_aux=True)(
            params["discriminator"],
            model_state["discriminator"],
            real,
            jax.lax.stop_gradient(fake),
            d_latents,
            d_transform_rng,
        )
        updates, opt_state["discriminator"] = self.tx["discriminator"].update(
            d_grads, opt_state["discriminator"], params["discriminator"]
        )
        params["discriminator"] = optax.apply_updates(params["discriminator"], updates)
        model_state["discriminator"] = d_state

        # 2. G, through the updated D and Q, on fresh latents.
        d_variables = {"params": params["discriminator"], **model_state["discriminator"]}
        g_grads, (g_state, g_metrics) = jax.grad(self.generator_loss, has_aux=True)(
            params["generator"], model_state["generator"], d_variables, g_latents, g_transform_rng
        )
        updates, opt_state["generator"] = self.tx["generator"].update(
            g_grads, opt_state["generator"], params["generator"]
        )
        params["generator"] = optax.apply_updates(params["generator"], updates)
        model_state["generator"] = g_state

        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
        )
        return new_state, {**d_metrics, **g_metrics}

    # -- evaluation --------------------------------------------------------------
    def eval_step(self, state: base.TrainState, batch: Mapping[str, jax.Array]):
        images, labels, mask = batch["image"], batch["label"], batch["mask"]
        spec = self.latent_spec
        d_variables = self._variables(state, "discriminator")
        real_out = self.discriminator.apply(d_variables, images, train=False)
        posterior = self.q_posterior(real_out["q_outputs"])
        sums = {
            "num_examples": jnp.sum(mask),
            "d_real_prob": jnp.sum(jax.nn.sigmoid(real_out["d_logits"]) * mask),
        }
        for i, k in enumerate(spec.categorical_sizes):
            predicted = jnp.argmax(posterior.categorical_logits[i], axis=-1)
            sums[f"cat{i}_counts"] = jnp.zeros((k,), jnp.float32).at[predicted].add(mask)
            if self.num_classes:
                sums[f"cat{i}_confusion"] = ig.confusion_matrix(predicted, labels, k, self.num_classes, mask)
        # As many generated samples as real ones; the batch's pixels seed them, so each
        # eval batch sees new latents and the evaluation is deterministic.
        rng = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), evaluation.images_checksum(images))
        latents = ig.sample_latents(rng, spec, images.shape[0])
        fake_out = self.discriminator.apply(d_variables, self.generate(state, latents), train=False)
        log_liks = ig.code_log_likelihoods(spec, self.q_posterior(fake_out["q_outputs"]), latents)
        sums.update({f"{name}_log_likelihood": jnp.sum(ll * mask) for name, ll in log_liks.items()})
        sums["d_fake_prob"] = jnp.sum(jax.nn.sigmoid(fake_out["d_logits"]) * mask)
        sums.update(self._code_measure_sums(state, jax.random.fold_in(rng, 1)))
        return sums

    def _code_measure_sums(self, state: base.TrainState, rng: jax.Array) -> dict[str, Any]:
        """Slant and width along random sweeps of each continuous code (and, with a classifier, how
        many sweeps keep the class): sums of `vqlatent.infogan.measures` over this batch's sweeps."""
        tcfg = self.config.traversal
        rows = int(tcfg.get("measure_rows_per_batch", 0))
        if not self.latent_spec.num_continuous or rows <= 0:
            return {}
        sweep = ig.sweep_values(tcfg.low, tcfg.high, int(tcfg.get("measure_values", 9)))
        generate = functools.partial(self.generate, state)
        return measures.code_measure_sums(generate, self.latent_spec, rng, sweep, rows, self.classifier)

    def eval_summary(self, totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return evaluation.summarize(totals, self.latent_spec, self.entropies, self.num_classes)

    def _grid_latents(self, num_columns: int) -> dict[str, ig.Latents]:
        """The latents of the grids: samples per category and one traversal per continuous code."""
        tcfg = self.config.traversal
        return traversal.grid_latents(
            jax.random.PRNGKey(EVAL_SEED), self.latent_spec, num_columns, tcfg.low, tcfg.high
        )

    def eval_images(self, state: base.TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Grids of `GRID_COLUMNS` columns (the traversals sweep that many values)."""
        del batch
        return {
            name: self.generate(state, latents)
            for name, latents in self._grid_latents(base.GRID_COLUMNS).items()
        }

    # -- extra modes -------------------------------------------------------------
    def modes(self) -> dict[str, Any]:
        return {"traverse": self.traverse}

    def traverse(self, runner) -> dict[str, str]:
        """`--mode=traverse`: the Figure 2 grids of the newest checkpoint with
        `traversal.num_values` columns, written to WORKDIR/images/<grid>_<N>cols_<step>.png."""
        ig.require_codes(self.latent_spec, continuous=1, purpose="--mode=traverse")
        num_values = self.config.traversal.num_values
        state, step = runner.restore_for_eval()
        grids = self._grid_latents(num_values)
        generate = jax.jit(self.generate)
        measure = jax.jit(measures.measure_images)
        paths = {}
        for name, latents in grids.items():
            stack = np.asarray(jax.device_get(generate(state, latents)))
            path = os.path.join(runner.workdir, "images", f"{name}_{num_values}cols_{step:08d}.png")
            # A traversal gets the mean slant and width under each column.
            traversal.save_grid(path, stack, num_values, measure if name.startswith("traversal_") else None)
            paths[name] = path
        logging.info(
            "traversal grids of step %d (%d values from %g to %g): %s",
            step,
            num_values,
            self.config.traversal.low,
            self.config.traversal.high,
            paths,
        )
        return paths
