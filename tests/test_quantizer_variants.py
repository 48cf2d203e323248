"""Quantizer variants: estimators, codebook health, FSQ, residual/product VQ.

Reference values are derived by hand or with NumPy in this file; every variant
is also checked sharded (8 CPU devices) against one device.
"""

import math

import chex
import helpers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vqlatent import configs as cfg_lib
from vqlatent import data as data_lib
from vqlatent import quantizers
from vqlatent.quantizers import (
    FSQ,
    ProductVQ,
    ResidualVQ,
    VectorQuantizer,
    VectorQuantizerEMA,
    diagnostics,
    ema,
    estimators,
    fsq,
    search,
    statistics,
)
from vqlatent.trainers.base import make_task

ATOL = 1e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _train(module, variables, x, key=0, mask=None):
    """One training call: (outputs, updated variables)."""
    outputs, updates = module.apply(
        variables, x, train=True, mask=mask, mutable=["vq_ema"], rngs={"quantizer": jax.random.key(key)}
    )
    return outputs, {**variables, **updates}


# ----------------------------------------------------------------------------
# Gradient estimators.
# ----------------------------------------------------------------------------


def test_straight_through_gradient_is_the_identity():
    x = jnp.array([[1.0, -2.0, 0.5]])
    q = jnp.array([[3.0, 1.0, -1.0]])
    g = jnp.array([[0.3, -0.7, 2.0]])
    out, vjp = jax.vjp(lambda x, q: estimators.estimate("straight_through", x, q), x, q)
    np.testing.assert_array_equal(out, q)
    grad_x, grad_q = vjp(g)
    np.testing.assert_array_equal(grad_x, g)
    np.testing.assert_array_equal(grad_q, 0.0)


def test_rotation_trick_gradient_hand_derived_2d():
    # x = (1, 0), q = (0, 2): R rotates by +90 degrees, lambda = |q|/|x| = 2, so
    # dL/dx = lambda R^T g = 2 * (g rotated by -90 degrees) = (2 g_y, -2 g_x).
    x = jnp.array([[1.0, 0.0]])
    q = jnp.array([[0.0, 2.0]])
    g = jnp.array([[0.3, -0.7]])
    out, vjp = jax.vjp(estimators.rotation_trick, x, q)
    np.testing.assert_array_equal(out, q)
    grad_x, grad_q = vjp(g)
    np.testing.assert_allclose(grad_x, [[2 * -0.7, -2 * 0.3]], atol=1e-6)
    np.testing.assert_array_equal(grad_q, 0.0)


def test_rotation_trick_gradient_equals_explicit_matrix_formula():
    rng = _rng(1)
    x = rng.normal(size=(5, 4))
    q = rng.normal(size=(5, 4))
    g = rng.normal(size=(5, 4))
    _, vjp = jax.vjp(estimators.rotation_trick, jnp.asarray(x, jnp.float32), jnp.asarray(q, jnp.float32))
    (grad_x, _) = vjp(jnp.asarray(g, jnp.float32))
    for n in range(5):
        x_hat = x[n] / np.linalg.norm(x[n])
        q_hat = q[n] / np.linalg.norm(q[n])
        r = (x_hat + q_hat) / np.linalg.norm(x_hat + q_hat)
        rotation = np.eye(4) - 2 * np.outer(r, r) + 2 * np.outer(q_hat, x_hat)
        np.testing.assert_allclose(rotation @ x_hat, q_hat, atol=1e-12)
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(4), atol=1e-12)
        scale = np.linalg.norm(q[n]) / np.linalg.norm(x[n])
        np.testing.assert_allclose(grad_x[n], scale * rotation.T @ g[n], rtol=1e-5, atol=1e-5)


def test_rotation_trick_degenerate_rows_fall_back_to_straight_through():
    x = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    q = jnp.array([[1.0, 1.0], [-3.0, 0.0]])  # x = 0; x antiparallel to q.
    g = jnp.array([[0.5, -1.0], [2.0, 3.0]])
    _, vjp = jax.vjp(estimators.rotation_trick, x, q)
    np.testing.assert_array_equal(vjp(g)[0], g)


def test_rotation_trick_in_the_ema_module_and_bf16():
    rng = _rng(2)
    beta = 0.25
    module = VectorQuantizerEMA(8, 3, commitment_cost=beta, gradient_estimator="rotation_trick")
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)

    def toy_loss(x):
        out = module.apply(variables, x, train=False)
        return jnp.sum(w * out["quantize"]) + out["loss"], out

    grad_x, out = jax.grad(toy_loss, has_aux=True)(x)
    q = np.asarray(variables["vq_ema"]["codebook"])[np.asarray(out["encoding_indices"])]
    xs = np.asarray(x)
    expected = []
    for n in range(6):
        x_hat, q_hat = xs[n] / np.linalg.norm(xs[n]), q[n] / np.linalg.norm(q[n])
        r = (x_hat + q_hat) / np.linalg.norm(x_hat + q_hat)
        rotation = np.eye(3) - 2 * np.outer(r, r) + 2 * np.outer(q_hat, x_hat)
        expected.append(np.linalg.norm(q[n]) / np.linalg.norm(xs[n]) * rotation.T @ np.asarray(w[n]))
    expected = np.stack(expected) + beta * 2 * (xs - q) / xs.size
    np.testing.assert_allclose(grad_x, expected, rtol=1e-4, atol=1e-5)
    grad_bf16 = jax.grad(lambda x: jnp.sum(w * module.apply(variables, x, train=False)["quantize"]))(
        x.astype(jnp.bfloat16)
    )
    assert grad_bf16.dtype == jnp.bfloat16


# ----------------------------------------------------------------------------
# Nearest-code search at scale.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_codes", [5, 64, 100, 127, 512, 4096])
def test_two_level_argmin_equals_argmin_including_ties(num_codes):
    values = _rng(20).integers(0, 4, size=(50, num_codes)).astype(np.float32)
    values[7] = 3.0  # A row of ties.
    np.testing.assert_array_equal(search.argmin_last_axis(jnp.asarray(values)), np.argmin(values, axis=-1))


def test_65536_codes_chunked_search_and_ema_step():
    rng = _rng(21)
    codebook = rng.normal(size=(65536, 8)).astype(np.float32)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    indices, distance = jax.jit(lambda x, c: search.nearest_code(x, c, chunk_size=4096))(x, codebook)
    d = ((x[:, None] - codebook[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(indices, d.argmin(1))
    np.testing.assert_allclose(distance, d.min(1), rtol=1e-4, atol=1e-4)
    module = VectorQuantizerEMA(65536, 8, chunk_size=8192, dead_code_threshold=1e-3)
    variables = module.init(jax.random.key(0), x, train=False)
    out, variables = jax.jit(lambda v, x: _train(module, v, x))(variables, x)
    assert "distances" not in out and int(variables["vq_ema"]["counter"]) == 1


# ----------------------------------------------------------------------------
# FSQ.
# ----------------------------------------------------------------------------


def test_fsq_indices_and_codes_round_trip():
    levels = (8, 5, 3, 2)
    num_codes = math.prod(levels)
    indices = jnp.arange(num_codes)
    codes = fsq.indices_to_codes(indices, levels)
    chex.assert_shape(codes, (num_codes, 4))
    assert float(jnp.min(codes)) >= -1.0 and float(jnp.max(codes)) <= 1.0
    np.testing.assert_array_equal(fsq.codes_to_indices(codes, levels), indices)
    assert len({tuple(c) for c in np.asarray(codes)}) == num_codes
    # Mixed radix by hand: levels (3, 4) -> basis (1, 3); index 5 = 2 + 1*3,
    # digits (2, 1) -> ((2 - 1) / 1, (1 - 2) / 2) = (1, -0.5).
    np.testing.assert_allclose(fsq.indices_to_codes(5, (3, 4)), [1.0, -0.5])
    # Zero is quantised to zero (bound(0) is near 0 for every L, including 2).
    np.testing.assert_array_equal(fsq.quantize(jnp.zeros(4), levels), 0.0)
    np.testing.assert_allclose(fsq.bound(jnp.zeros(4), levels), 0.0, atol=0.05)


def test_fsq_module_values_indices_lookup_and_gradient():
    levels = (7, 4, 5)
    rng = _rng(3)
    x = jnp.asarray(2 * rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    module = FSQ(levels, 3)  # embedding_dim == len(levels): no projection.
    variables = module.init(jax.random.key(0), x, train=False)
    assert "params" not in variables
    out = module.apply(variables, x, train=True)
    assert set(out) == set(quantizers.COMMON_OUTPUT_KEYS)
    assert float(out["loss"]) == 0.0
    half_width = np.array([3, 2, 2], np.float32)
    grid = np.asarray(out["quantize"]) * half_width
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-5)
    np.testing.assert_array_equal(out["encoding_indices"], fsq.codes_to_indices(out["quantize"], levels))
    np.testing.assert_array_equal(
        module.apply(variables, out["encoding_indices"], method="lookup"), out["quantize"]
    )
    # The gradient is that of bound(z) / half_width (round is straight-through).
    grad = jax.grad(lambda x: jnp.sum(module.apply(variables, x, train=True)["quantize"]))(x)
    expected = jax.grad(lambda x: jnp.sum(fsq.bound(x, levels) / half_width))(x)
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    # With a projection (D=6 -> 3 channels) lookup still inverts the indices.
    projected = FSQ(levels, 6)
    x6 = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
    variables = projected.init(jax.random.key(1), x6, train=False)
    out = projected.apply(variables, x6, train=False)
    np.testing.assert_allclose(
        projected.apply(variables, out["encoding_indices"], method="lookup"), out["quantize"], atol=1e-6
    )
    assert projected.codebook_size == projected.num_embeddings == 140


# ----------------------------------------------------------------------------
# Codebook health: k-means, restarts.
# ----------------------------------------------------------------------------


def np_lloyd(x, centroids, iterations):
    for _ in range(iterations):
        d = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
        assign = d.argmin(1)
        for k in range(len(centroids)):
            if np.any(assign == k):
                centroids[k] = x[assign == k].mean(0)
    return centroids


def test_kmeans_matches_numpy_lloyd_from_the_same_seeds():
    rng = _rng(4)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    key = jax.random.key(5)
    seeds, valid = ema.sample_rows(key, x, 12)
    assert bool(jnp.all(valid))
    assert len({tuple(s) for s in np.asarray(seeds)}) == 12  # Distinct rows.
    centroids, counts = ema.kmeans(x, 12, key, iterations=6, chunk_size=5)
    expected = np_lloyd(x.astype(np.float64), np.asarray(seeds, np.float64), 6)
    np.testing.assert_allclose(centroids, expected, atol=ATOL)
    assert float(jnp.sum(counts)) == 200


def test_kmeans_init_places_a_code_on_every_cluster_once():
    rng = _rng(6)
    centres = 10.0 * rng.normal(size=(4, 4))
    x = jnp.asarray(np.repeat(centres, 32, 0) + 0.01 * rng.normal(size=(128, 4)), jnp.float32)
    module = VectorQuantizerEMA(16, 4, kmeans_init=True, kmeans_iterations=5)
    variables = module.init(jax.random.key(0), x, train=False)
    assert int(variables["vq_ema"]["kmeans_initialized"]) == 0
    out, variables = _train(module, variables, x, key=1)
    # The step already quantised with the k-means codebook.
    assert float(out["e_latent_loss"]) < 1e-3
    codebook = np.asarray(variables["vq_ema"]["codebook"])
    distance = np.linalg.norm(centres[:, None] - codebook[None], axis=-1)
    assert np.all(distance.min(1) < 0.05)
    assert int(variables["vq_ema"]["kmeans_initialized"]) == 1
    # Later steps do not re-run k-means: a batch of one cluster moves the codes
    # it does not use only through the Laplace smoothing (relative 1e-5).
    later_out, later = _train(module, variables, x[:16], key=2)
    # (Codes this step did not use: near-duplicate codes of one cluster may swap assignments.)
    unused = np.setdiff1d(np.arange(16), np.asarray(later_out["encoding_indices"]))
    np.testing.assert_allclose(np.asarray(later["vq_ema"]["codebook"])[unused], codebook[unused], rtol=1e-4)


def test_restarts_leave_no_code_dead_after_one_step():
    rng = _rng(7)
    num_codes = 32
    # 256 distinct vectors far from the initial codebook: one step of plain EMA
    # would leave almost every code unused.
    x = jnp.asarray(5.0 + rng.normal(size=(256, 4)), jnp.float32)
    plain = VectorQuantizerEMA(num_codes, 4)
    variables = plain.init(jax.random.key(0), x, train=False)
    _, plain_after = _train(plain, variables, x)
    plain_used = np.unique(plain.apply(plain_after, x, train=False)["encoding_indices"])
    assert len(plain_used) < num_codes // 2

    module = VectorQuantizerEMA(num_codes, 4, dead_code_threshold=1.0)
    out, after = _train(module, variables, x)
    assert float(out["dead_codes"]) > num_codes // 2  # Restarted this step.
    usage = ema.ema_usage(after["vq_ema"], module.decay)
    assert np.all(np.asarray(usage) >= 1.0 - 1e-6)
    codebook = np.asarray(after["vq_ema"]["codebook"])
    restarted = np.isclose(np.asarray(usage), 1.0)
    # Restarted codes are distinct rows of the batch.
    for code in codebook[restarted]:
        assert np.min(np.abs(np.asarray(x) - code).sum(-1)) < 1e-6
    assert len({tuple(c) for c in codebook[restarted]}) == restarted.sum()
    used = np.unique(module.apply(after, x, train=False)["encoding_indices"])
    assert len(used) == num_codes
    eval_out = module.apply(after, x, train=False)
    assert float(eval_out["dead_codes"]) == 0.0


def test_restarts_never_use_masked_rows_and_need_an_rng():
    rng = _rng(8)
    x = np.concatenate([rng.normal(size=(64, 4)), 100.0 + rng.normal(size=(64, 4))]).astype(np.float32)
    mask = np.concatenate([np.ones(64), np.zeros(64)]).astype(np.float32)
    module = VectorQuantizerEMA(32, 4, dead_code_threshold=1.0)
    variables = module.init(jax.random.key(0), x, train=False)
    _, after = _train(module, variables, jnp.asarray(x), mask=jnp.asarray(mask))
    assert np.all(np.abs(np.asarray(after["vq_ema"]["codebook"])) < 10.0)
    with pytest.raises(ValueError, match=r"rngs=\{'quantizer': key\}"):
        module.apply(variables, x, train=True, mutable=["vq_ema"])


# ----------------------------------------------------------------------------
# Residual and product VQ.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_residual_vq_error_shrinks_with_every_stage(shared):
    rng = _rng(9)
    x = jnp.asarray(rng.normal(size=(512, 4)), jnp.float32)
    module = ResidualVQ(4, 16, 4, shared_codebook=shared, kmeans_init=True)
    variables = module.init(jax.random.key(0), x, train=False)
    _, variables = _train(module, variables, x)
    out = module.apply(variables, x, train=False)
    chex.assert_shape(out["encoding_indices"], (512, 4))
    stage_codes = module.apply(variables, out["encoding_indices"], method="stage_codes")
    partial_sums = np.cumsum(np.asarray(stage_codes), axis=1)
    errors = [np.mean((np.asarray(x) - partial_sums[:, s]) ** 2) for s in range(4)]
    errors = [float(np.mean(np.asarray(x) ** 2))] + errors
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    np.testing.assert_allclose(
        module.apply(variables, out["encoding_indices"], method="lookup"), out["quantize"], atol=1e-6
    )
    np.testing.assert_allclose(np.mean((np.asarray(out["quantize"]) - x) ** 2), errors[-1], rtol=1e-5)


def test_residual_vq_loss_sums_the_stages_commitment_terms():
    rng = _rng(10)
    x = jnp.asarray(rng.normal(size=(40, 3)), jnp.float32)
    module = ResidualVQ(3, 8, 3, commitment_cost=0.5)
    variables = module.init(jax.random.key(1), x, train=False)
    out = module.apply(variables, x, train=False)
    codes = np.asarray(module.apply(variables, out["encoding_indices"], method="stage_codes"))
    residual, expected = np.asarray(x), 0.0
    for s in range(3):
        expected += np.mean((residual - codes[:, s]) ** 2)
        residual = residual - codes[:, s]
    np.testing.assert_allclose(out["e_latent_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["loss"], 0.5 * expected, rtol=1e-5)
    grad = jax.grad(lambda x: module.apply(variables, x, train=False)["loss"])(x)
    # d/dx of sum_s mean |x - prefix_s - q_s|^2, the prefixes being constants.
    expected_grad = sum(2 * (np.asarray(x) - codes[:, : s + 1].sum(1)) / x.size for s in range(3))
    np.testing.assert_allclose(grad, 0.5 * expected_grad, atol=1e-6)


def test_product_vq_quantises_each_group_with_its_own_codebook():
    rng = _rng(11)
    x = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
    module = ProductVQ(3, 7, 6)
    variables = module.init(jax.random.key(2), x, train=False)
    out = module.apply(variables, x, train=False)
    chex.assert_shape(out["encoding_indices"], (3, 5, 3))
    codebooks = np.asarray(variables["vq_ema"]["codebook"])  # (G, K, 2)
    flat = np.asarray(x).reshape(-1, 3, 2)
    for g in range(3):
        d = ((flat[:, g, None] - codebooks[g][None]) ** 2).sum(-1)
        np.testing.assert_array_equal(np.asarray(out["encoding_indices"]).reshape(-1, 3)[:, g], d.argmin(1))
    np.testing.assert_array_equal(
        module.apply(variables, out["encoding_indices"], method="lookup"), out["quantize"]
    )


def test_cosine_and_factorised_codes():
    rng = _rng(12)
    x = jnp.asarray(rng.normal(size=(30, 6)), jnp.float32)
    module = VectorQuantizerEMA(10, 6, l2_normalize=True)
    variables = module.init(jax.random.key(3), x, train=False)
    out = module.apply(variables, x, train=False)
    codebook = np.asarray(variables["vq_ema"]["codebook"])
    cosine = (np.asarray(x) / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(out["encoding_indices"], cosine.argmax(1))
    np.testing.assert_allclose(np.linalg.norm(out["quantize"], axis=1), 1.0, rtol=1e-5)
    factorised = VectorQuantizerEMA(10, 6, codebook_dim=2, l2_normalize=True)
    variables = factorised.init(jax.random.key(4), x, train=False)
    assert variables["vq_ema"]["codebook"].shape == (10, 2)
    assert set(variables["params"]) == {"project_in", "project_out"}
    out = factorised.apply(variables, x, train=False)
    chex.assert_shape(out["quantize"], (30, 6))
    np.testing.assert_allclose(
        factorised.apply(variables, out["encoding_indices"], method="lookup"), out["quantize"], atol=1e-6
    )


# ----------------------------------------------------------------------------
# bf16, sharding, common interface.
# ----------------------------------------------------------------------------


def _variant_modules():
    return {
        "vq_cosine_rotation": VectorQuantizer(16, 8, l2_normalize=True, gradient_estimator="rotation_trick"),
        "vq_ema_kmeans_restart": VectorQuantizerEMA(
            16, 8, kmeans_init=True, kmeans_iterations=3, dead_code_threshold=1.0, chunk_size=5
        ),
        "vq_ema_factorized": VectorQuantizerEMA(
            16, 8, codebook_dim=4, l2_normalize=True, dead_code_threshold=0.5
        ),
        "residual_vq": ResidualVQ(3, 16, 8, kmeans_init=True, dead_code_threshold=1.0, kmeans_iterations=3),
        "residual_vq_shared": ResidualVQ(2, 16, 8, shared_codebook=True, dead_code_threshold=1.0),
        "product_vq": ProductVQ(
            2,
            16,
            8,
            kmeans_init=True,
            dead_code_threshold=1.0,
            kmeans_iterations=3,
            gradient_estimator="rotation_trick",
        ),
        "fsq": FSQ((5, 4, 3), 8),
    }


@pytest.mark.parametrize("name", sorted(_variant_modules()))
def test_sharded_train_step_equals_single_device(name):
    module = _variant_modules()[name]
    single, multi, replicated, sharded = helpers.quantizer_train_steps(module, ["vq_ema"])
    rng = _rng(13)
    inputs = [jnp.asarray(rng.normal(size=(16, 3, 3, 8)), jnp.float32) for _ in range(2)]
    variables = module.init(jax.random.key(0), inputs[0], train=False)
    single_vars, multi_vars = variables, jax.device_put(variables, replicated)
    for i, x in enumerate(inputs):
        key = jax.random.key(10 + i)
        single_vars, single_out, single_grads, single_gx = single(single_vars, x, key)
        multi_vars, multi_out, multi_grads, multi_gx = multi(multi_vars, jax.device_put(x, sharded), key)
        np.testing.assert_array_equal(multi_out["encoding_indices"], single_out["encoding_indices"])
        chex.assert_trees_all_close(multi_out, single_out, atol=ATOL, rtol=ATOL)
        chex.assert_trees_all_close(multi_vars, single_vars, atol=ATOL, rtol=ATOL)
        chex.assert_trees_all_close((multi_grads, multi_gx), (single_grads, single_gx), atol=ATOL, rtol=ATOL)


def _separated_inputs(module, rng):
    """Inputs whose two nearest codes are far apart, and the expected indices."""
    dim = module.embedding_dim
    variables = module.init(jax.random.key(0), jnp.zeros((1, dim)), train=False)
    if isinstance(module, FSQ):
        levels = module.levels
        indices = rng.integers(0, module.codebook_size, size=(64,))
        codes = np.asarray(fsq.indices_to_codes(indices, levels))
        levels_f = np.asarray(levels, np.float32)
        half_l = (levels_f - 1) * (1 - 1e-3) / 2
        offset = np.where(levels_f % 2 == 1, 0.0, 0.5)
        # Targets for bound(z): the grid values, pulled 0.3 inside the range of
        # bound() at the ends (still 0.2 from a rounding boundary); invert bound.
        values = np.clip(codes * (levels_f // 2), -half_l - offset + 0.3, half_l - offset - 0.3)
        z = np.arctanh((values + offset) / half_l) - np.tan(offset / half_l)
        return variables, z.astype(np.float32), indices
    if isinstance(module, ResidualVQ):
        # Stage s codes at scale 8^-s: every stage's nearest code is unambiguous.
        codebook = np.stack([(8.0**-s) * 4.0 * rng.normal(size=(16, 8)) for s in range(module.num_stages)])
        indices = rng.integers(0, 16, size=(64, module.num_stages))
        x = sum(codebook[s][indices[:, s]] for s in range(module.num_stages))
    elif isinstance(module, ProductVQ):
        codebook = 4.0 * rng.normal(size=(2, 16, 4))
        indices = rng.integers(0, 16, size=(64, 2))
        x = np.concatenate([codebook[g][indices[:, g]] for g in range(2)], -1)
    else:
        codebook = 4.0 * rng.normal(size=(16, 8))
        indices = rng.integers(0, 16, size=(64,))
        x = codebook[indices]
    collection = "params" if isinstance(module, VectorQuantizer) else "vq_ema"
    variables = {
        **variables,
        collection: {**variables[collection], "codebook": jnp.asarray(codebook, jnp.float32)},
    }
    return variables, (x + 0.01 * rng.normal(size=x.shape)).astype(np.float32), indices


@pytest.mark.parametrize("name", ["vq_ema_kmeans_restart", "residual_vq", "product_vq", "fsq"])
def test_bf16_inputs_give_the_same_indices_as_fp32(name):
    module = _variant_modules()[name]
    if name == "fsq":
        module = FSQ(module.levels, len(module.levels))  # No projection.
    variables, x, indices = _separated_inputs(module, _rng(14))
    out32 = module.apply(variables, jnp.asarray(x), train=False)
    out16 = module.apply(variables, jnp.asarray(x, jnp.bfloat16), train=False)
    np.testing.assert_array_equal(out32["encoding_indices"], indices)
    np.testing.assert_array_equal(out16["encoding_indices"], indices)
    assert out16["quantize"].dtype == jnp.bfloat16
    assert out16["loss"].dtype == out16["perplexity"].dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(_variant_modules()))
def test_every_variant_returns_the_common_keys_and_lookup_inverts(name):
    module = _variant_modules()[name]
    x = jnp.asarray(_rng(15).normal(size=(2, 3, 3, 8)), jnp.float32)
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=False)
    assert set(quantizers.COMMON_OUTPUT_KEYS) <= set(out)
    extra = () if module.num_codebooks == 1 else (module.num_codebooks,)
    chex.assert_shape(out["encoding_indices"], (2, 3, 3) + extra)
    assert out["encoding_indices"].dtype == jnp.int32
    assert int(jnp.max(out["encoding_indices"])) < module.codebook_size
    np.testing.assert_allclose(
        module.apply(variables, out["encoding_indices"], method="lookup"), out["quantize"], atol=1e-6
    )


# ----------------------------------------------------------------------------
# Usage statistics and the histogram.
# ----------------------------------------------------------------------------


def test_code_counts_per_codebook_and_summary():
    indices = jnp.array([[[0, 2], [1, 2]], [[0, 0], [3, 2]]])  # (B=2, 2, S=2)
    counts = statistics.code_counts_per_codebook(indices, 2, 4, mask=jnp.array([1.0, 0.0]))
    np.testing.assert_array_equal(counts, [[1, 1, 0, 0], [0, 0, 2, 0]])
    summary = diagnostics.codebook_summary(np.asarray(counts))
    assert summary["codes_used"] == 3 and summary["dead_codes"] == 5
    assert summary["codebook_usage"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["perplexity"] == pytest.approx((2.0 + 1.0) / 2, rel=1e-6)
    assert summary["codebook_usage_per_codebook"] == [0.5, 0.25]


def test_usage_histogram_image():
    image = np.asarray(diagnostics.usage_histogram(np.array([0, 3, 1, 0]), height=10, width=8))
    assert image.shape == (1, 10, 8, 3)
    assert image.min() >= 0 and image.max() <= 1
    bar = np.array([0.16, 0.35, 0.70], np.float32)
    is_bar = np.all(np.isclose(image[0], bar), -1)
    # Sorted descending: 2 columns per code; heights 9 px (3/3), 3 px (1/3).
    np.testing.assert_array_equal(is_bar.sum(0), [9, 9, 3, 3, 0, 0, 0, 0])
    dead = np.all(np.isclose(image[0], [0.98, 0.80, 0.80]), -1)
    assert dead[:, 4:].all() and not dead[:, :4].any()
    chex.assert_shape(diagnostics.usage_histogram(np.ones((3, 70000))), (3, 96, 512, 3))


# ----------------------------------------------------------------------------
# The VQ-VAE task with the variants.
# ----------------------------------------------------------------------------


def test_vqvae_task_with_residual_vq_restarts_and_kmeans():
    # Multi-index codes, the 'quantizer' RNG (k-means, restarts) and usage
    # accounting per codebook through the real task (random 8x8 images; no
    # dataset needed).
    config = helpers.tiny_vqvae_config("/nonexistent", "digits,quantizer=residual_vq")
    config.quantizer.num_stages = 2
    config.loss.normalize_by_data_variance = False
    spec = data_lib.DatasetSpec(image_shape=(8, 8, 1), num_classes=10, num_train=16, num_eval=16)
    task = make_task(config, spec)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    batch = {
        "image": _rng(16).uniform(size=(16, 8, 8, 1)).astype(np.float32),
        "label": np.zeros((16,), np.int32),
    }
    step = jax.jit(task.train_step)
    state_a, metrics = step(state, batch)
    state_b, _ = step(state, batch)
    chex.assert_trees_all_equal(state_a, state_b)  # Randomness from (rng, step).
    assert 0 < float(metrics["batch_codebook_usage"]) <= 1
    eval_batch = {**batch, "mask": np.ones((16,), np.float32)}
    totals = jax.device_get(jax.jit(task.eval_step)(state_a, eval_batch))
    summary = task.eval_summary(totals)
    codebooks = 2
    assert summary["codes_used"] + summary["dead_codes"] == (codebooks * task.num_codes["top"])
    assert np.asarray(summary["code_counts"]).sum() == 16 * 4 * 4 * codebooks
    images = task.summary_images(totals)  # Drawn from the whole eval split's counts.
    chex.assert_shape(images["code_usage"], (codebooks, 96, None, 3))
    assert "code_usage" not in jax.eval_shape(task.eval_images, state_a, eval_batch)
    assert summary["num_codebooks"] == 2
    assert len(summary["codebook_usage_per_codebook"]) == 2
    assert "dead_codes" in metrics
    assert int(state_a.model_state["vq_ema"]["quantizer"]["kmeans_initialized"]) == 1


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_unknown_quantizer_name_is_a_clear_error():
    with pytest.raises(
        ValueError,
        match=r"unknown quantizer name 'rvq'.*"
        r"'residual_vq'",
    ):
        quantizers.make_quantizer(
            ml_collections.ConfigDict(dict(name="rvq", num_embeddings=4, embedding_dim=2))
        )
    with pytest.raises(ValueError, match=r"Unknown quantizer 'cosyne'.*'cosine'"):
        cfg_lib.quantizer_config("cosyne", 512, 64)
    with pytest.raises(ValueError, match="Unknown quantizer"):
        helpers.tiny_vqvae_config("/tmp/unused", "digits,quantizer=fqs")


@pytest.mark.parametrize("levels", [(8, 1, 5), (), (2.5, 3), "abc", 8])
def test_fsq_levels_below_two_or_not_integers_are_errors(levels):
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels, 3)


def test_fsq_config_errors():
    with pytest.raises(ValueError, match=r"levels.*\(8, 1\)"):
        quantizers.make_quantizer(ml_collections.ConfigDict(dict(name="fsq", levels=(8, 1), embedding_dim=2)))
    with pytest.raises(ValueError, match="no recommended FSQ levels for a codebook of 100 codes"):
        cfg_lib.quantizer_config("fsq", 100, 64)
    assert cfg_lib.quantizer_config("fsq", 512, 64).levels == (8, 8, 8)


@pytest.mark.parametrize("name", sorted(_variant_modules()))
def test_code_dimension_mismatch_is_an_error(name):
    module = _variant_modules()[name]
    with pytest.raises(ValueError, match=r"inputs.shape\[-1\]=5.*embedding_dim=8"):
        module.init(jax.random.key(0), jnp.zeros((2, 5)), train=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: VectorQuantizer(8, 4, **kw),
        lambda **kw: VectorQuantizerEMA(8, 4, **kw),
        lambda **kw: ResidualVQ(2, 8, 4, **kw),
        lambda **kw: ProductVQ(2, 8, 4, **kw),
    ],
)
def test_bad_field_values_are_errors(make):
    for chunk_size in (0, -3):
        with pytest.raises(ValueError, match=f"chunk_size.*got {chunk_size}"):
            make(chunk_size=chunk_size)
    with pytest.raises(ValueError, match="gradient_estimator 'rotation'"):
        make(gradient_estimator="rotation")
    if not isinstance(make(), VectorQuantizer):
        with pytest.raises(ValueError, match="dead_code_threshold.*-1"):
            make(dead_code_threshold=-1.0)
        with pytest.raises(ValueError, match="kmeans_iterations.*got 0"):
            make(kmeans_iterations=0)


def test_structural_errors():
    with pytest.raises(ValueError, match="num_groups=3 must divide embedding_dim=8"):
        ProductVQ(3, 8, 8)
    with pytest.raises(ValueError, match="num_stages must be an integer >= 1, got 0"):
        ResidualVQ(0, 8, 4)
    with pytest.raises(ValueError, match="codebook_dim.*got 0"):
        VectorQuantizerEMA(8, 4, codebook_dim=0)
    with pytest.raises(ValueError, match=r"chunk_size.*got 0"):
        search.nearest_code(jnp.zeros((2, 3)), jnp.zeros((4, 3)), chunk_size=0)
    module = ResidualVQ(2, 8, 4)
    variables = module.init(jax.random.key(0), jnp.zeros((2, 4)), train=False)
    with pytest.raises(ValueError, match="end in the 2 stages"):
        module.apply(variables, jnp.zeros((2, 3), jnp.int32), method="lookup")
