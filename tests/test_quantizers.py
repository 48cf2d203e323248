"""Tests for vqlatent.quantizers (core functions and linen modules)."""

import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vqlatent import quantizers
from vqlatent.quantizers import VectorQuantizer, VectorQuantizerEMA, ema, estimators, search, statistics

ATOL = 1e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------
# NumPy references of the Sonnet/Haiku formulas.
# ----------------------------------------------------------------------------


def np_assign(flat_inputs, codebook):
    """Returns (indices, quantized) with ties to the lowest index."""
    distances = (
        np.sum(flat_inputs**2, -1, keepdims=True) - 2 * flat_inputs @ codebook.T + np.sum(codebook**2, -1)
    )
    indices = np.argmin(distances, axis=-1)
    return indices, codebook[indices]


def np_perplexity(indices, num_codes):
    probabilities = np.eye(num_codes)[indices].mean(0)
    return np.exp(-np.sum(probabilities * np.log(probabilities + 1e-10)))


class NumpyVectorQuantizerEMA:
    """Sonnet/Haiku VectorQuantizerEMA in float64 NumPy; codebook is (D, K)."""

    def __init__(self, codebook_kd, decay, epsilon, commitment_cost):
        self.embeddings = np.asarray(codebook_kd, np.float64).T  # (D, K)
        dim, num_codes = self.embeddings.shape
        self.num_codes = num_codes
        self.decay = decay
        self.epsilon = epsilon
        self.commitment_cost = commitment_cost
        self.cluster_size_hidden = np.zeros(num_codes)
        self.dw_hidden = np.zeros((dim, num_codes))
        self.counter = 0

    def __call__(self, inputs):
        flat = np.asarray(inputs, np.float64).reshape(-1, self.embeddings.shape[0])
        distances = (
            np.sum(flat**2, 1, keepdims=True)
            - 2 * flat @ self.embeddings
            + np.sum(self.embeddings**2, 0, keepdims=True)
        )
        indices = np.argmin(distances, 1)
        encodings = np.eye(self.num_codes)[indices]
        quantized = self.embeddings.T[indices]  # looked up before E changes
        e_latent_loss = np.mean((quantized - flat) ** 2)
        outputs = dict(
            quantize=quantized.reshape(inputs.shape),
            loss=self.commitment_cost * e_latent_loss,
            e_latent_loss=e_latent_loss,
            perplexity=np_perplexity(indices, self.num_codes),
            encoding_indices=indices.reshape(inputs.shape[:-1]),
        )
        # EMA update.
        g = self.decay
        self.counter += 1
        n = encodings.sum(0)
        dw = flat.T @ encodings
        self.cluster_size_hidden = g * self.cluster_size_hidden + (1 - g) * n
        self.dw_hidden = g * self.dw_hidden + (1 - g) * dw
        debias = 1 - g**self.counter
        n_hat = self.cluster_size_hidden / debias
        m_hat = self.dw_hidden / debias
        total = n_hat.sum()
        n_smooth = (n_hat + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        self.embeddings = m_hat / n_smooth[None, :]
        return outputs

    def state(self):
        return dict(
            codebook=self.embeddings.T,
            ema_cluster_size_hidden=self.cluster_size_hidden,
            ema_dw_hidden=self.dw_hidden.T,
            counter=self.counter,
        )


# ----------------------------------------------------------------------------
# core: distances and nearest code.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_squared_distances_match_direct_formula(dtype):
    rng = _rng(0)
    x = jnp.asarray(rng.normal(size=(37, 6)), dtype)
    codebook = jnp.asarray(rng.normal(size=(11, 6)), dtype)
    distances = search.squared_distances(x, codebook)
    x32 = np.asarray(x, np.float32)
    codebook32 = np.asarray(codebook, np.float32)
    direct = np.sum((x32[:, None] - codebook32[None]) ** 2, -1)
    assert distances.dtype == jnp.float32
    chex.assert_shape(distances, (37, 11))
    np.testing.assert_allclose(distances, direct, atol=ATOL, rtol=1e-6)


@pytest.mark.parametrize("num_codes,chunk_size", [(1000, 128), (7, 3), (12, 4), (5, 16), (1, 1)])
def test_chunked_nearest_code_equals_unchunked(num_codes, chunk_size):
    rng = _rng(num_codes)
    x = jnp.asarray(rng.normal(size=(200, 8)), jnp.float32)
    codebook = jnp.asarray(rng.normal(size=(num_codes, 8)), jnp.float32)
    indices, min_distance = search.nearest_code(x, codebook)
    chunked_fn = jax.jit(search.nearest_code, static_argnums=2)
    chunked_indices, chunked_min_distance = chunked_fn(x, codebook, chunk_size)
    assert indices.dtype == chunked_indices.dtype == jnp.int32
    np.testing.assert_array_equal(chunked_indices, indices)
    np.testing.assert_allclose(chunked_min_distance, min_distance, atol=ATOL)
    distances = search.squared_distances(x, codebook)
    np.testing.assert_array_equal(indices, np.argmin(distances, -1))
    np.testing.assert_allclose(min_distance, np.min(distances, -1), atol=ATOL)


@pytest.mark.parametrize("chunk_size", [None, 128, 100, 7])
def test_nearest_code_ties_resolve_to_lowest_index(chunk_size):
    # Small integers: every distance is exact in float32, so ties are exact.
    rng = _rng(1)
    codebook = rng.integers(-3, 4, size=(300, 4)).astype(np.float32)
    codebook[128] = codebook[127]  # Duplicate across the 128-chunk boundary.
    codebook[256] = codebook[5]  # Duplicate two chunks apart.
    codebook[4] = codebook[3]  # Duplicate inside one chunk.
    codebook[299] = codebook[200]  # Duplicate in the padded last chunk.
    x = np.concatenate(
        [codebook[[128, 127, 256, 5, 4, 299]], rng.integers(-4, 5, size=(100, 4)).astype(np.float32)]
    )
    indices, min_distance = search.nearest_code(x, codebook, chunk_size)
    exact = np.sum((x[:, None].astype(np.int64) - codebook[None].astype(np.int64)) ** 2, -1)
    np.testing.assert_array_equal(indices, np.argmin(exact, -1))
    np.testing.assert_array_equal(indices[:6], [127, 127, 5, 5, 3, 200])
    np.testing.assert_array_equal(min_distance, np.min(exact, -1))


@pytest.mark.parametrize("bad_chunk_size", [0, -3, 2.5])
def test_nearest_code_rejects_bad_chunk_size(bad_chunk_size):
    x = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match=f"chunk_size.*{bad_chunk_size}"):
        search.nearest_code(x, jnp.ones((4, 2)), bad_chunk_size)


# ----------------------------------------------------------------------------
# core: straight-through, losses, perplexity.
# ----------------------------------------------------------------------------


def test_straight_through_value_and_gradients():
    rng = _rng(2)
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    value, vjp = jax.vjp(estimators.straight_through, x, q)
    np.testing.assert_array_equal(value, q)
    grad_x, grad_q = vjp(cotangent)
    np.testing.assert_array_equal(grad_x, cotangent)
    np.testing.assert_array_equal(grad_q, np.zeros((5, 3)))
    # Output dtype follows x.
    assert estimators.straight_through(x.astype(jnp.bfloat16), q).dtype == jnp.bfloat16


def test_vq_losses_values_and_stop_gradients():
    rng = _rng(3)
    x = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    losses = statistics.vq_losses(x, q)
    expected = np.mean((np.asarray(q) - np.asarray(x)) ** 2)
    np.testing.assert_allclose(losses["e_latent_loss"], expected, atol=ATOL)
    np.testing.assert_allclose(losses["q_latent_loss"], expected, atol=ATOL)
    grad_e = jax.grad(lambda x, q: statistics.vq_losses(x, q)["e_latent_loss"], argnums=(0, 1))(x, q)
    grad_q = jax.grad(lambda x, q: statistics.vq_losses(x, q)["q_latent_loss"], argnums=(0, 1))(x, q)
    np.testing.assert_allclose(grad_e[0], 2 * (x - q) / x.size, atol=ATOL)
    np.testing.assert_array_equal(grad_e[1], np.zeros_like(q))
    np.testing.assert_array_equal(grad_q[0], np.zeros_like(x))
    np.testing.assert_allclose(grad_q[1], 2 * (q - x) / x.size, atol=ATOL)
    # A mask averages over the D elements of unmasked rows only.
    mask = np.array([1, 1, 0, 1, 0, 0], np.float32)
    masked = statistics.vq_losses(x, q, mask)
    keep = mask > 0
    np.testing.assert_allclose(
        masked["e_latent_loss"], np.mean((np.asarray(q)[keep] - np.asarray(x)[keep]) ** 2), atol=ATOL
    )


def test_perplexity_matches_one_hot_formula():
    rng = _rng(4)
    indices = rng.integers(0, 10, size=(3, 7))
    np.testing.assert_allclose(
        statistics.perplexity(indices, 12), np_perplexity(indices.ravel(), 12), rtol=1e-6
    )
    np.testing.assert_allclose(statistics.perplexity(np.arange(12), 12), 12, rtol=1e-5)
    np.testing.assert_allclose(statistics.perplexity(np.zeros(9, int), 12), 1.0)
    mask = rng.integers(0, 2, size=(3, 7)).astype(np.float32)
    mask[0, 0] = 1
    np.testing.assert_allclose(
        statistics.perplexity(indices, 12, mask=mask), np_perplexity(indices[mask > 0], 12), rtol=1e-6
    )


# ----------------------------------------------------------------------------
# core: EMA update.
# ----------------------------------------------------------------------------


def test_ema_update_matches_numpy_including_first_update():
    rng = _rng(5)
    codebook = rng.normal(size=(6, 3))
    reference = NumpyVectorQuantizerEMA(codebook, 0.8, 1e-5, 0.25)
    state = ema.init_ema_state(codebook)
    for _ in range(3):
        x = rng.normal(size=(20, 3))
        indices, _ = np_assign(x, reference.embeddings.T)
        reference(x)
        state = ema.ema_update(state, x, indices, decay=0.8, epsilon=1e-5, num_codes=6)
        for key, value in reference.state().items():
            np.testing.assert_allclose(state[key], value, atol=ATOL, err_msg=key)
    assert state["counter"].dtype == jnp.int32


def test_ema_update_with_axis_name_in_shard_map_equals_global():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = _rng(6)
    num_codes = 5
    state = ema.init_ema_state(rng.normal(size=(num_codes, 3)))
    x = jnp.asarray(rng.normal(size=(8 * 4, 3)), jnp.float32)
    indices = jnp.asarray(rng.integers(0, num_codes, size=(32,)), jnp.int32)
    mask = jnp.asarray(rng.integers(0, 2, size=(32,)), jnp.float32)
    kwargs = dict(decay=0.9, epsilon=1e-5, num_codes=num_codes)

    def local(state, x, indices, mask):
        new_state = ema.ema_update(state, x, indices, mask=mask, axis_name="data", **kwargs)
        return new_state, statistics.perplexity(indices, num_codes, mask, "data")

    sharded = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data")), out_specs=(P(), P()))
    )
    new_state, perplexity = sharded(state, x, indices, mask)
    expected_state = ema.ema_update(state, x, indices, mask=mask, **kwargs)
    chex.assert_trees_all_close(new_state, expected_state, atol=ATOL)
    np.testing.assert_allclose(perplexity, statistics.perplexity(indices, num_codes, mask), atol=ATOL)


# ----------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_ema_module_matches_numpy_over_five_updates(chunk_size):
    rng = _rng(7)
    num_codes, dim, decay, beta = 10, 4, 0.9, 0.25
    module = VectorQuantizerEMA(num_codes, dim, commitment_cost=beta, decay=decay, chunk_size=chunk_size)
    first_inputs = jnp.asarray(rng.normal(size=(2, 3, 3, dim)), jnp.float32)
    variables = module.init(jax.random.key(0), first_inputs, train=True)
    assert set(variables) == {"vq_ema"}
    assert int(variables["vq_ema"]["counter"]) == 0  # init does not update
    reference = NumpyVectorQuantizerEMA(variables["vq_ema"]["codebook"], decay, 1e-5, beta)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["vq_ema"]))
    for step in range(5):
        inputs = first_inputs if step == 0 else jnp.asarray(rng.normal(size=(2, 3, 3, dim)), jnp.float32)
        outputs, updates = apply(variables, inputs)
        expected = reference(np.asarray(inputs))
        np.testing.assert_array_equal(outputs["encoding_indices"], expected["encoding_indices"])
        for key in ("quantize", "loss", "e_latent_loss", "perplexity"):
            np.testing.assert_allclose(outputs[key], expected[key], atol=ATOL, err_msg=f"{step}: {key}")
        for key, value in reference.state().items():
            np.testing.assert_allclose(updates["vq_ema"][key], value, atol=ATOL, err_msg=f"{step}: {key}")
        variables = updates
    assert int(variables["vq_ema"]["counter"]) == 5


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_vector_quantizer_gradients(chunk_size):
    rng = _rng(8)
    num_codes, dim, beta = 8, 3, 0.25
    module = VectorQuantizer(num_codes, dim, commitment_cost=beta, chunk_size=chunk_size)
    x = jnp.asarray(rng.normal(size=(2, 5, dim)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(2, 5, dim)), jnp.float32)
    params = module.init(jax.random.key(1), x, train=True)["params"]
    assert set(params) == {"codebook"}
    chex.assert_shape(params["codebook"], (num_codes, dim))

    def toy_loss(params, x):
        outputs = module.apply({"params": params}, x, train=True)
        return jnp.sum(w * outputs["quantize"]) + outputs["loss"], outputs

    (grad_params, grad_x), outputs = jax.grad(toy_loss, argnums=(0, 1), has_aux=True)(params, x)
    codebook = np.asarray(params["codebook"])
    indices = np.asarray(outputs["encoding_indices"]).ravel()
    flat_x = np.asarray(x).reshape(-1, dim)
    q = codebook[indices]
    num_elements = flat_x.size
    expected_grad_x = np.asarray(w) + beta * 2 * (np.asarray(x) - q.reshape(x.shape)) / num_elements
    expected_grad_codebook = np.zeros_like(codebook)
    np.add.at(expected_grad_codebook, indices, 2 * (q - flat_x) / num_elements)
    np.testing.assert_allclose(grad_x, expected_grad_x, atol=ATOL)
    np.testing.assert_allclose(grad_params["codebook"], expected_grad_codebook, atol=ATOL)
    # Loss = q_latent + beta * e_latent.
    expected_sq = np.mean((q - flat_x) ** 2)
    np.testing.assert_allclose(outputs["loss"], (1 + beta) * expected_sq, atol=ATOL)


def test_ema_module_gradients_and_no_params():
    rng = _rng(9)
    num_codes, dim, beta = 8, 3, 0.4
    module = VectorQuantizerEMA(num_codes, dim, commitment_cost=beta)
    x = jnp.asarray(rng.normal(size=(4, 5, dim)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 5, dim)), jnp.float32)
    variables = module.init(jax.random.key(2), x, train=False)
    assert "params" not in variables
    assert jax.tree.leaves(variables.get("params", {})) == []

    def toy_loss(ema_state, x):
        outputs, _ = module.apply({"vq_ema": ema_state}, x, train=True, mutable=["vq_ema"])
        return jnp.sum(w * outputs["quantize"]) + outputs["loss"], outputs

    (grad_state, grad_x), outputs = jax.grad(toy_loss, argnums=(0, 1), has_aux=True, allow_int=True)(
        variables["vq_ema"], x
    )
    q = np.asarray(variables["vq_ema"]["codebook"])[np.asarray(outputs["encoding_indices"])]
    np.testing.assert_allclose(grad_x, np.asarray(w) + beta * 2 * (np.asarray(x) - q) / x.size, atol=ATOL)
    np.testing.assert_array_equal(grad_state["codebook"], 0.0)
    np.testing.assert_allclose(outputs["loss"], beta * np.mean((q - np.asarray(x)) ** 2), atol=ATOL)


def test_eval_leaves_state_unchanged_and_train_requires_mutable():
    module = VectorQuantizerEMA(6, 2)
    x = jnp.asarray(_rng(10).normal(size=(3, 4, 2)), jnp.float32)
    variables = module.init(jax.random.key(3), x, train=False)
    outputs, updates = module.apply(variables, x, train=False, mutable=["vq_ema"])
    chex.assert_trees_all_equal(updates, variables)
    assert int(updates["vq_ema"]["counter"]) == 0
    outputs_immutable = module.apply(variables, x, train=False)
    chex.assert_trees_all_equal(outputs, outputs_immutable)
    with pytest.raises(ValueError, match=r"mutable=\['vq_ema'\]"):
        module.apply(variables, x, train=True)


def test_output_dict_shapes_dtypes_and_lookup():
    rng = _rng(11)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)
    for module in (VectorQuantizer(7, 5), VectorQuantizerEMA(7, 5), VectorQuantizer(7, 5, chunk_size=3)):
        variables = module.init(jax.random.key(4), x, train=False)
        outputs = module.apply(variables, x, train=False)
        expected_keys = {
            "quantize",
            "loss",
            "perplexity",
            "encoding_indices",
            "encodings",
            "e_latent_loss",
            "q_latent_loss",
        }
        if module.chunk_size is None:
            expected_keys.add("distances")
            chex.assert_shape(outputs["distances"], (2, 3, 4, 7))
            assert outputs["distances"].dtype == jnp.float32
        assert set(outputs) == expected_keys
        chex.assert_shape(outputs["quantize"], x.shape)
        chex.assert_shape(outputs["encoding_indices"], (2, 3, 4))
        chex.assert_shape(outputs["encodings"], (2, 3, 4, 7))
        assert outputs["encoding_indices"].dtype == jnp.int32
        for key in ("loss", "perplexity", "e_latent_loss", "q_latent_loss"):
            chex.assert_shape(outputs[key], ())
            assert outputs[key].dtype == jnp.float32
        np.testing.assert_array_equal(outputs["encodings"], jax.nn.one_hot(outputs["encoding_indices"], 7))
        decoded = module.apply(variables, outputs["encoding_indices"], method="lookup")
        np.testing.assert_array_equal(decoded, outputs["quantize"])


def test_bf16_inputs_give_same_indices_as_fp32():
    rng = _rng(12)
    num_codes, dim = 16, 8
    codebook = 3.0 * rng.normal(size=(num_codes, dim)).astype(np.float32)
    true_indices = rng.integers(0, num_codes, size=(4, 6, 6))
    x32 = jnp.asarray(codebook[true_indices] + 0.05 * rng.normal(size=(4, 6, 6, dim)), jnp.float32)
    x16 = x32.astype(jnp.bfloat16)
    for module in (
        VectorQuantizer(num_codes, dim),
        VectorQuantizer(num_codes, dim, chunk_size=5),
        VectorQuantizerEMA(num_codes, dim),
    ):
        collection = "params" if isinstance(module, VectorQuantizer) else "vq_ema"
        variables = module.init(jax.random.key(5), x32, train=False)
        variables = {collection: {**variables[collection], "codebook": jnp.asarray(codebook)}}
        out32 = module.apply(variables, x32, train=False)
        out16 = module.apply(variables, x16, train=False)
        np.testing.assert_array_equal(out32["encoding_indices"], true_indices)
        np.testing.assert_array_equal(out16["encoding_indices"], true_indices)
        assert out16["quantize"].dtype == jnp.bfloat16
        assert out16["loss"].dtype == jnp.float32
        np.testing.assert_allclose(
            np.asarray(out16["quantize"], np.float32),
            np.asarray(codebook[true_indices], jnp.bfloat16).astype(np.float32),
        )
    # The `dtype` field overrides the output dtype.
    module = VectorQuantizer(num_codes, dim, dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(5), x32, train=False)
    assert module.apply(variables, x32, train=False)["quantize"].dtype == jnp.bfloat16


def test_mask_excludes_padding_from_loss_perplexity_and_ema():
    rng = _rng(13)
    module = VectorQuantizerEMA(6, 3, decay=0.7)
    x = jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32)
    variables = module.init(jax.random.key(6), x, train=False)
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])  # (B,) prefix of x.shape[:-1]
    masked_out, masked_state = module.apply(variables, x, train=True, mask=mask, mutable=["vq_ema"])
    subset_out, subset_state = module.apply(variables, x[:3], train=True, mutable=["vq_ema"])
    chex.assert_trees_all_close(masked_state, subset_state, atol=ATOL)
    for key in ("loss", "perplexity", "e_latent_loss", "q_latent_loss"):
        np.testing.assert_allclose(masked_out[key], subset_out[key], atol=ATOL)
    # A fully padded batch leaves the EMA state unchanged.
    _, state = module.apply(variables, x, train=True, mask=jnp.zeros(4), mutable=["vq_ema"])
    chex.assert_trees_all_equal(state, variables)
    with pytest.raises(ValueError, match="mask.shape"):
        module.apply(variables, x, train=False, mask=jnp.ones(5))


def test_ema_variables_have_distinct_buffers_and_can_be_donated():
    module = VectorQuantizerEMA(4, 4)
    x = jnp.asarray(_rng(14).normal(size=(8, 4)), jnp.float32)
    for init in (module.init, jax.jit(module.init, static_argnames="train")):
        variables = init(jax.random.key(7), x, train=False)
        pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(variables)]
        assert len(set(pointers)) == len(pointers) == 4

    def step(variables, x):
        _, updates = module.apply(variables, x, train=True, mutable=["vq_ema"])
        return updates

    donating_step = jax.jit(step, donate_argnums=0)
    for _ in range(2):
        variables = donating_step(variables, x)
    assert int(variables["vq_ema"]["counter"]) == 2


def test_sharded_jit_equals_single_device():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should force 8 CPU devices"
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharded = NamedSharding(mesh, P("data"))
    module = VectorQuantizerEMA(12, 4, decay=0.8)
    rng = _rng(15)
    inputs = [jnp.asarray(rng.normal(size=(16, 3, 3, 4)), jnp.float32) for _ in range(3)]
    variables = module.init(jax.random.key(8), inputs[0], train=False)

    def step(variables, x):
        outputs, updates = module.apply(variables, x, train=True, mutable=["vq_ema"])
        return updates, outputs["loss"], outputs["perplexity"]

    single_step = jax.jit(step)
    sharded_step = jax.jit(
        step, in_shardings=(replicated, batch_sharded), out_shardings=(replicated, replicated, replicated)
    )
    single_variables = variables
    sharded_variables = jax.device_put(variables, replicated)
    for x in inputs:
        x_sharded = jax.device_put(x, batch_sharded)
        assert len({shard.device for shard in x_sharded.addressable_shards}) == 8
        single_variables, single_loss, single_perplexity = single_step(single_variables, x)
        sharded_variables, sharded_loss, sharded_perplexity = sharded_step(sharded_variables, x_sharded)
        chex.assert_trees_all_close(sharded_variables, single_variables, atol=ATOL)
        np.testing.assert_allclose(sharded_loss, single_loss, atol=ATOL)
        np.testing.assert_allclose(sharded_perplexity, single_perplexity, atol=ATOL)
    assert int(sharded_variables["vq_ema"]["counter"]) == 3


# ----------------------------------------------------------------------------
# Validation and registry.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("module_class", [VectorQuantizer, VectorQuantizerEMA])
def test_bad_configuration_raises_naming_the_value(module_class):
    with pytest.raises(ValueError, match="num_embeddings.*got 0"):
        module_class(0, 4)
    with pytest.raises(ValueError, match="embedding_dim.*got 0"):
        module_class(4, 0)
    with pytest.raises(ValueError, match="chunk_size.*got 0"):
        module_class(4, 3, chunk_size=0)
    with pytest.raises(ValueError, match="commitment_cost.*-1"):
        module_class(4, 3, commitment_cost=-1.0)
    module = module_class(4, 3)
    x = jnp.zeros((2, 5))
    with pytest.raises(ValueError, match=r"inputs.shape\[-1\]=5.*embedding_dim=3"):
        module.init(jax.random.key(0), x, train=False)


def test_bad_ema_hyperparameters_raise():
    with pytest.raises(ValueError, match="decay.*1.0"):
        VectorQuantizerEMA(4, 3, decay=1.0)
    with pytest.raises(ValueError, match="epsilon.*0"):
        VectorQuantizerEMA(4, 3, epsilon=0.0)


def test_make_quantizer():
    cfg = ml_collections.ConfigDict(
        dict(name="vq_ema", num_embeddings=32, embedding_dim=8, decay=0.95, chunk_size=16)
    )
    module = quantizers.make_quantizer(cfg, module_name="bottleneck")
    assert isinstance(module, VectorQuantizerEMA)
    assert (module.num_embeddings, module.embedding_dim, module.decay, module.chunk_size, module.name) == (
        32,
        8,
        0.95,
        16,
        "bottleneck",
    )
    module = quantizers.make_quantizer(
        ml_collections.ConfigDict(dict(name="vq", num_embeddings=5, embedding_dim=2, commitment_cost=0.5))
    )
    assert isinstance(module, VectorQuantizer)
    assert module.commitment_cost == 0.5
    assert set(quantizers.QUANTIZERS) >= {"vq", "vq_ema"}


def test_make_quantizer_rejects_unknown_name_and_keys():
    # Every registered name is listed (today's five and the ones added since, e.g. 'lfq').
    assert {"fsq", "product_vq", "residual_vq", "vq", "vq_ema"} <= set(quantizers.QUANTIZERS)
    with pytest.raises(ValueError, match=r"'fsq_typo'.*" + re.escape(str(sorted(quantizers.QUANTIZERS)))):
        quantizers.make_quantizer(ml_collections.ConfigDict(dict(name="fsq_typo", num_embeddings=4)))
    with pytest.raises(ValueError, match=r"\['decay'\]"):
        quantizers.make_quantizer(
            ml_collections.ConfigDict(dict(name="vq", num_embeddings=4, embedding_dim=2, decay=0.9))
        )
    with pytest.raises(ValueError, match="num_embeddings.*got 0"):
        quantizers.make_quantizer(
            ml_collections.ConfigDict(dict(name="vq", num_embeddings=0, embedding_dim=2))
        )
