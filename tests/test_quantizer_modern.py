"""LFQ, BSQ, SimVQ, residual FSQ/LFQ, quantize dropout, stochastic codes, the entropy regulariser.

References are NumPy formulas written in this file; every new variant is also run sharded over the 8
CPU devices of tests/conftest.py and compared with one device.
"""

import chex
import helpers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vqlatent import configs as cfg_lib
from vqlatent import quantizers
from vqlatent.quantizers import (
    BSQ,
    LFQ,
    ResidualFSQ,
    ResidualLFQ,
    SimVQ,
    VectorQuantizer,
    VectorQuantizerEMA,
    lfq,
)

ATOL = 1e-5
STATE = ["vq_ema", "simvq"]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _np_entropies(z, codes, temperature, weights=None):
    """Per-sample and batch entropies of softmax(-|z - c|^2 / tau) in float64 NumPy."""
    z, codes = np.asarray(z, np.float64), np.asarray(codes, np.float64)
    logits = -np.sum((z[:, None] - codes[None]) ** 2, -1) / temperature
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    w = np.ones(len(z)) if weights is None else np.asarray(weights, np.float64)
    per_sample = np.sum(w * -np.sum(p * np.log(np.maximum(p, 1e-300)), -1)) / w.sum()
    average = np.sum(w[:, None] * p, 0) / w.sum()
    batch = -np.sum(average * np.log(np.maximum(average, 1e-300)))
    return per_sample, batch


def _all_codes(bits, scale):
    indices = np.arange(2**bits)
    signs = (indices[:, None] >> np.arange(bits - 1, -1, -1)) & 1
    return np.where(signs == 1, scale, -scale)


# -- LFQ / BSQ -------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_class", [LFQ, BSQ])
def test_lfq_indices_are_the_sign_bits_and_round_trip_through_lookup(module_class):
    bits = 6
    module = module_class(2**bits, bits)
    x = jnp.asarray(_rng(0).normal(size=(5, 7, bits)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=False)
    positive = np.asarray(x) > 0
    np.testing.assert_array_equal(out["encoding_indices"], positive @ (2 ** np.arange(bits - 1, -1, -1)))
    scale = 1 / np.sqrt(bits) if module_class is BSQ else 1.0
    np.testing.assert_allclose(out["quantize"], np.where(positive, scale, -scale), rtol=1e-6)
    np.testing.assert_array_equal(
        module.apply(variables, out["encoding_indices"], method=module.lookup), out["quantize"]
    )
    every = jnp.arange(2**bits)
    np.testing.assert_array_equal(lfq.bits_to_indices(lfq.indices_to_bits(every, bits)), every)


@pytest.mark.parametrize("module_class", [LFQ, BSQ])
def test_lfq_entropy_terms_and_loss_match_numpy(module_class):
    bits, temperature = 5, 0.5
    module = module_class(
        2**bits, bits, entropy_temperature=temperature, entropy_weight=0.3, diversity_weight=0.7
    )
    rng = _rng(1)
    x = jnp.asarray(rng.normal(size=(40, bits)), jnp.float32)
    mask = rng.integers(0, 2, size=(40,)).astype(np.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=True, mask=jnp.asarray(mask))
    z = np.asarray(x, np.float64)
    scale = 1.0
    if module_class is BSQ:
        z = z / np.linalg.norm(z, axis=-1, keepdims=True)
        scale = 1 / np.sqrt(bits)
    per_sample, batch = _np_entropies(z, _all_codes(bits, scale), temperature, mask)
    np.testing.assert_allclose(out["per_sample_entropy"], per_sample, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["batch_entropy"], batch, rtol=1e-4, atol=1e-5)
    q = np.where(z > 0, scale, -scale)
    commitment = np.sum(mask[:, None] * (z - q) ** 2) / (mask.sum() * bits)
    np.testing.assert_allclose(out["e_latent_loss"], commitment, rtol=1e-5)
    np.testing.assert_allclose(
        out["loss"], 0.25 * commitment + 0.3 * (per_sample - 0.7 * batch), rtol=1e-4, atol=1e-5
    )


def test_factorised_batch_entropy_is_exact_per_sample_and_an_upper_bound(monkeypatch):
    z = jnp.asarray(_rng(2).normal(size=(64, 6)), jnp.float32)
    exact = lfq.lfq_entropy(z, 1.0, 1.0)
    monkeypatch.setattr(lfq, "EXACT_ENTROPY_MAX_BITS", 0)
    factorised = lfq.lfq_entropy(z, 1.0, 1.0)
    np.testing.assert_allclose(factorised[0], exact[0], rtol=1e-5)
    assert float(factorised[1]) >= float(exact[1]) - 1e-5


def test_lfq_entropy_penalty_gradient_reaches_the_encoder():
    module = LFQ(16, 8)  # Projects 8 -> 4 bits.
    x = jnp.asarray(_rng(3).normal(size=(32, 8)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    grads = jax.grad(lambda p: module.apply({"params": p}, x, train=True)["loss"])(variables["params"])
    assert float(jnp.abs(grads["project_in"]["kernel"]).sum()) > 0


# -- SimVQ -----------------------------------------------------------------------------------------


def test_simvq_codebook_is_frozen_and_only_the_linear_map_learns():
    module = SimVQ(32, 6)
    x = jnp.asarray(_rng(4).normal(size=(64, 6)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    assert set(variables["params"]) == {"codebook_transform"}
    frozen = variables["simvq"]["codebook"]
    chex.assert_shape(frozen, (32, 6))
    tx = optax.adamw(1e-2, weight_decay=0.1)
    opt_state = tx.init(variables["params"])

    def loss(params):
        out, updates = module.apply({**variables, "params": params}, x, train=True, mutable=STATE)
        return out["loss"], updates

    params = variables["params"]
    for _ in range(3):
        (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(params)
        assert float(jnp.abs(grads["codebook_transform"]["kernel"]).sum()) > 0
        step, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, step)
        np.testing.assert_array_equal(updates["simvq"]["codebook"], frozen)  # Never written.
    out = module.apply({**variables, "params": params}, x, train=False)
    codes = np.asarray(frozen) @ np.asarray(params["codebook_transform"]["kernel"])
    distances = np.sum((np.asarray(x)[:, None] - codes[None]) ** 2, -1)
    np.testing.assert_array_equal(out["encoding_indices"], np.argmin(distances, -1))
    np.testing.assert_allclose(
        module.apply({**variables, "params": params}, out["encoding_indices"], method=module.lookup),
        codes[out["encoding_indices"]],
        rtol=1e-5,
        atol=1e-6,
    )


# -- residual FSQ / LFQ and quantize dropout ----------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [ResidualFSQ(3, (5, 4, 3), 3, quantize_dropout=True), ResidualLFQ(3, 16, 4, quantize_dropout=True)],
)
def test_quantize_dropout_uses_a_prefix_of_stages_and_all_stages_at_eval(module):
    x = jnp.asarray(_rng(5).normal(size=(6, 5, module.embedding_dim)) * 0.7, jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    evaluated = module.apply(variables, x, train=False)
    assert float(evaluated["stages_used"]) == module.num_stages
    all_stages = module.apply(variables, evaluated["encoding_indices"], method=module.lookup)
    np.testing.assert_allclose(evaluated["quantize"], all_stages, atol=1e-6)
    seen = set()
    for seed in range(12):
        out = module.apply(variables, x, train=True, rngs={"quantizer": jax.random.key(seed)})
        used = int(out["stages_used"])
        seen.add(used)
        np.testing.assert_array_equal(out["encoding_indices"], evaluated["encoding_indices"])
        prefix = module.apply(variables, out["encoding_indices"], used, method=module.lookup)
        np.testing.assert_allclose(out["quantize"], prefix, atol=1e-6)
    assert seen == set(range(1, module.num_stages + 1))
    # Each stage refines: the error of the first s stages shrinks with s.
    errors = [
        float(
            jnp.mean(
                (module.apply(variables, evaluated["encoding_indices"], s, method=module.lookup) - x) ** 2
            )
        )
        for s in range(1, module.num_stages + 1)
    ]
    assert errors == sorted(errors, reverse=True)


def test_residual_vq_quantize_dropout_uses_a_prefix_and_every_stage_at_eval():
    module = quantizers.ResidualVQ(3, 16, 4, quantize_dropout=True, decay=0.9)
    x = jnp.asarray(_rng(11).normal(size=(32, 4)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    evaluated = module.apply(variables, x, train=False)
    np.testing.assert_allclose(
        evaluated["quantize"],
        module.apply(variables, evaluated["encoding_indices"], method=module.lookup),
        atol=1e-6,
    )
    seen = set()
    for seed in range(10):
        out, _ = module.apply(
            variables, x, train=True, mutable=STATE, rngs={"quantizer": jax.random.key(seed)}
        )
        used = int(out["stages_used"])
        seen.add(used)
        prefix = module.apply(variables, out["encoding_indices"], used, method=module.lookup)
        np.testing.assert_allclose(out["quantize"], prefix, atol=1e-6)
    assert seen == {1, 2, 3}


# -- stochastic code selection, the entropy regulariser ----------------------------------------------------


@pytest.mark.parametrize("module_class", [VectorQuantizer, VectorQuantizerEMA])
def test_stochastic_selection_at_low_temperature_is_the_argmin(module_class):
    x = jnp.asarray(_rng(6).normal(size=(8, 4, 6)), jnp.float32)
    cold, hot = (
        module_class(32, 6, stochastic_temperature=1e-7),
        module_class(32, 6, stochastic_temperature=10.0),
    )
    variables = cold.init(jax.random.key(0), x, train=False)
    argmin = cold.apply(variables, x, train=False)["encoding_indices"]
    key = {"quantizer": jax.random.key(1)}
    cold_out = cold.apply(variables, x, train=True, rngs=key, mutable=STATE)[0]
    hot_out = hot.apply(variables, x, train=True, rngs=key, mutable=STATE)[0]
    np.testing.assert_array_equal(cold_out["encoding_indices"], argmin)
    assert float(jnp.mean(hot_out["encoding_indices"] != argmin)) > 0.3
    with pytest.raises(ValueError, match=r"stochastic_temperature=1e-07 needs random numbers.*rngs="):
        cold.apply(variables, x, train=True, mutable=STATE)


def test_entropy_regulariser_matches_numpy_and_adds_to_the_loss():
    module = VectorQuantizer(16, 4, entropy_weight=0.2, entropy_temperature=0.5)
    reference = VectorQuantizer(16, 4)
    x = jnp.asarray(_rng(7).normal(size=(50, 4)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=True)
    plain = reference.apply(variables, x, train=True)
    per_sample, batch = _np_entropies(x, variables["params"]["codebook"], 0.5)
    np.testing.assert_allclose(out["per_sample_entropy"], per_sample, rtol=1e-4)
    np.testing.assert_allclose(out["batch_entropy"], batch, rtol=1e-4)
    np.testing.assert_allclose(out["loss"], plain["loss"] + 0.2 * (per_sample - batch), rtol=1e-4)
    grads = jax.grad(lambda p: module.apply({"params": p}, x, train=True)["loss"])(variables["params"])
    grads_plain = jax.grad(lambda p: reference.apply({"params": p}, x, train=True)["loss"])(
        variables["params"]
    )
    assert not np.allclose(grads["codebook"], grads_plain["codebook"])  # The regulariser moves the codes.


# -- sharded == one device, bf16 ------------------------------------------------------------------------


def _new_variants():
    return {
        "lfq": LFQ(16, 8),
        "bsq": BSQ(32, 5),
        "simvq": SimVQ(16, 8),
        "residual_fsq": ResidualFSQ(2, (5, 3), 8, quantize_dropout=True),
        "residual_lfq": ResidualLFQ(2, 8, 8, quantize_dropout=True),
        "vq_stochastic_entropy": VectorQuantizer(16, 8, stochastic_temperature=0.5, entropy_weight=0.1),
        "vq_ema_stochastic_entropy": VectorQuantizerEMA(
            16, 8, stochastic_temperature=0.5, entropy_weight=0.1
        ),
    }


@pytest.mark.parametrize("name", sorted(_new_variants()))
def test_new_variants_sharded_equal_one_device(name):
    module = _new_variants()[name]
    single, multi, replicated, sharded = helpers.quantizer_train_steps(module, STATE)
    dim = module.embedding_dim
    x = jnp.asarray(_rng(8).normal(size=(16, 3, 3, dim)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    key = jax.random.key(3)
    one = single(variables, x, key)
    many = multi(jax.device_put(variables, replicated), jax.device_put(x, sharded), key)
    np.testing.assert_array_equal(many[1]["encoding_indices"], one[1]["encoding_indices"])
    chex.assert_trees_all_close(many, one, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", sorted(_new_variants()))
def test_new_variants_give_float32_statistics_under_bfloat16_inputs(name):
    module = _new_variants()[name]
    x = jnp.asarray(_rng(9).normal(size=(4, 3, 3, module.embedding_dim)), jnp.bfloat16)
    variables = module.init(jax.random.key(0), x.astype(jnp.float32), train=False)
    out, updates = module.apply(
        variables, x, train=True, mutable=STATE, rngs={"quantizer": jax.random.key(1)}
    )
    assert out["quantize"].dtype == jnp.bfloat16
    assert out["encoding_indices"].dtype == jnp.int32
    for key, value in out.items():
        if key not in ("quantize", "encoding_indices", "encodings", "distances"):
            assert value.dtype == jnp.float32, key
    for leaf in jax.tree.leaves(updates):
        assert leaf.dtype in (jnp.float32, jnp.int32)


# -- registry, presets, bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset", ["lfq", "bsq", "simvq", "residual_fsq", "residual_lfq", "vq_ema_stochastic", "vq_ema_entropy"]
)
def test_every_new_preset_builds_a_quantizer_with_the_common_outputs(preset):
    cfg = cfg_lib.quantizer_config(preset, 64, 8)
    module = quantizers.make_quantizer(cfg)
    x = jnp.asarray(_rng(10).normal(size=(2, 3, 3, 8)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=True, mutable=STATE, rngs={"quantizer": jax.random.key(0)})[0]
    assert set(quantizers.COMMON_OUTPUT_KEYS) <= set(out)
    evaluated = module.apply(variables, x, train=False)
    counts = quantizers.code_counts_per_codebook(
        evaluated["encoding_indices"], module.num_codebooks, module.codebook_size
    )
    assert int(counts.sum()) == 2 * 3 * 3 * module.num_codebooks
    np.testing.assert_allclose(
        module.apply(variables, evaluated["encoding_indices"], method=module.lookup),
        evaluated["quantize"],
        atol=1e-5,
    )


def test_bad_inputs_of_the_new_quantizers_are_clear_errors():
    with pytest.raises(
        ValueError, match=r"codebook_dim=8 must be the number of bits log2\(num_embeddings\)=9"
    ):
        LFQ(512, 8, codebook_dim=8)
    with pytest.raises(ValueError, match="power of two >= 2, got 500"):
        BSQ(500, 8)
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"stochastic_temperature.*> 0, got {temperature}"):
            VectorQuantizerEMA(16, 4, stochastic_temperature=temperature)
        with pytest.raises(
            ValueError, match=f"entropy_temperature must be a finite number > 0, got {temperature}"
        ):
            LFQ(16, 4, entropy_temperature=temperature)
    with pytest.raises(ValueError, match=r"quantize_dropout needs at least 2 stages.*num_stages=1"):
        ResidualFSQ(1, (5, 5), 2, quantize_dropout=True)
    with pytest.raises(ValueError, match=r"quantize_dropout needs at least 2 stages"):
        ResidualLFQ(1, 16, 4, quantize_dropout=True)
    with pytest.raises(ValueError, match="unset chunk_size"):
        VectorQuantizer(16, 4, chunk_size=4, entropy_weight=0.1)
    with pytest.raises(ValueError, match=r"unknown quantizer name 'lqf'.*'lfq'"):
        quantizers.make_quantizer(
            ml_collections.ConfigDict(dict(name="lqf", num_embeddings=16, embedding_dim=4))
        )
    with pytest.raises(ValueError, match=r"Unknown quantizer 'simvqq'.*'simvq'"):
        cfg_lib.quantizer_config("simvqq", 16, 4)


@pytest.mark.parametrize("quantizer", ["lfq", "simvq"])
def test_vqvae_task_trains_and_evaluates_with_a_new_quantizer(quantizer):
    from helpers import tiny_vqvae_config

    from vqlatent import data as data_lib
    from vqlatent.trainers.base import make_task

    config = tiny_vqvae_config("/nonexistent", f"digits,quantizer={quantizer}")
    config.loss.normalize_by_data_variance = False
    spec = data_lib.DatasetSpec(image_shape=(8, 8, 1), num_classes=10, num_train=16, num_eval=16)
    task = make_task(config, spec)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    batch = {
        "image": _rng(12).uniform(size=(16, 8, 8, 1)).astype(np.float32),
        "label": np.zeros((16,), np.int32),
    }
    new_state, metrics = jax.jit(task.train_step)(state, batch)
    assert np.isfinite(float(metrics["vq_loss"]))
    if quantizer == "simvq":  # The frozen codebook is carried as model state and never changes.
        chex.assert_trees_all_equal(new_state.model_state["simvq"], state.model_state["simvq"])
    totals = jax.device_get(jax.jit(task.eval_step)(new_state, {**batch, "mask": np.ones((16,), np.float32)}))
    summary = task.eval_summary(totals)
    assert summary["codes_used"] + summary["dead_codes"] == task.num_codes["top"] == 16
    assert sum(summary["code_counts"]) == 16 * 4 * 4
