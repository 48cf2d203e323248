"""Per-backend hot paths of the quantizers, and the statistics that must stay exact at scale.

Every alternative form (argmin, distance precision, EMA statistics) is checked equal to its reference
form on the CPU, values and gradients; 'auto' is checked to pick each backend's documented default.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqlatent import backend
from vqlatent.quantizers import VectorQuantizer, VectorQuantizerEMA, ema, search, statistics


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture
def fake_backend(monkeypatch):
    def use(name):
        monkeypatch.setattr(backend, "default_backend", lambda: name)

    return use


# -- the argmin ------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_codes", [7, 64, 100, 512, 1000])
def test_two_level_argmin_equals_plain_argmin_with_ties(num_codes):
    rng = _rng(num_codes)
    values = rng.integers(0, 5, size=(300, num_codes)).astype(np.float32)  # Many ties.
    values[:, -1] = -1.0  # The minimum in the last block for some rows ...
    values[::3, 0] = -1.0  # ... tied with the first code for others: the lowest index must win.
    two_level = search.argmin_last_axis(jnp.asarray(values), "two_level")
    plain = search.argmin_last_axis(jnp.asarray(values), "plain")
    np.testing.assert_array_equal(two_level, plain)
    np.testing.assert_array_equal(plain, np.argmin(values, axis=-1))


@pytest.mark.parametrize("chunk_size", [None, 48])
def test_nearest_code_forms_agree_values_and_gradients(chunk_size):
    rng = _rng(1)
    x = jnp.asarray(rng.normal(size=(256, 16)).astype(np.float32))
    codebook = jnp.asarray(rng.normal(size=(200, 16)).astype(np.float32))
    reference = search.nearest_code(x, codebook, chunk_size, argmin_form="two_level", precision="highest")
    for form in search.ARGMIN_FORMS:
        for precision in search.DISTANCE_PRECISIONS:
            got = search.nearest_code(x, codebook, chunk_size, argmin_form=form, precision=precision)
            np.testing.assert_array_equal(got[0], reference[0])
            np.testing.assert_array_equal(got[1], reference[1])

    def min_distance_sum(x, codebook, form, precision):
        return jnp.sum(search.nearest_code(x, codebook, chunk_size, argmin_form=form, precision=precision)[1])

    grads = jax.grad(min_distance_sum, argnums=(0, 1))(x, codebook, "two_level", "highest")
    for form in search.ARGMIN_FORMS:
        for precision in search.DISTANCE_PRECISIONS:
            other = jax.grad(min_distance_sum, argnums=(0, 1))(x, codebook, form, precision)
            for g, h in zip(grads, other):
                np.testing.assert_array_equal(g, h)
    # The gradient of the chosen squared distance w.r.t. x is 2 (x - e_k).
    np.testing.assert_allclose(grads[0], 2 * (x - codebook[reference[0]]), rtol=1e-5, atol=1e-5)


def test_distance_precisions_give_the_same_distances_and_gradients_on_cpu():
    rng = _rng(2)
    x = jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))
    codebook = jnp.asarray(rng.normal(size=(32, 8)).astype(np.float32))
    weights = jnp.asarray(rng.normal(size=(64, 32)).astype(np.float32))

    def f(x, codebook, precision):
        return jnp.sum(weights * search.squared_distances(x, codebook, precision))

    reference = search.squared_distances(x, codebook, "highest")
    np.testing.assert_allclose(
        reference, np.sum((np.asarray(x)[:, None] - np.asarray(codebook)[None]) ** 2, -1), atol=1e-4
    )
    ref_grads = jax.grad(f, argnums=(0, 1))(x, codebook, "highest")
    for precision in ("high", "default"):
        np.testing.assert_array_equal(search.squared_distances(x, codebook, precision), reference)
        for g, h in zip(jax.grad(f, argnums=(0, 1))(x, codebook, precision), ref_grads):
            np.testing.assert_array_equal(g, h)


@pytest.mark.parametrize("module_class", [VectorQuantizer, VectorQuantizerEMA])
def test_quantizer_hot_path_fields_do_not_change_outputs_or_gradients(module_class):
    rng = _rng(3)
    x = jnp.asarray(rng.normal(size=(4, 5, 5, 8)).astype(np.float32))
    reference = module_class(128, 8, argmin_form="two_level", distance_precision="highest")
    variables = reference.init(jax.random.key(0), x, train=False)

    def run(module):
        def loss(x):
            out = module.apply(variables, x, train=False)
            return jnp.sum(out["quantize"] * jnp.sin(x)) + out["loss"], out

        (_, out), grad = jax.value_and_grad(loss, has_aux=True)(x)
        return out, grad

    ref_out, ref_grad = run(reference)
    for form in ("plain", "auto"):
        for precision in ("default", "auto"):
            out, grad = run(module_class(128, 8, argmin_form=form, distance_precision=precision))
            for key in ("encoding_indices", "quantize", "loss", "perplexity", "distances"):
                np.testing.assert_array_equal(out[key], ref_out[key])
            np.testing.assert_array_equal(grad, ref_grad)


# -- EMA statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_one_hot_ema_statistics_equal_the_segment_sum(masked):
    rng = _rng(4)
    num_codes = 50
    indices = jnp.asarray(rng.integers(0, num_codes, size=(500,)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, size=(500,)), jnp.float32) if masked else None
    # Integer-valued rows: every sum is exact in float32, whatever the order, so the forms must agree
    # bit for bit; random rows agree to float32 rounding.
    for x, exact in (
        (jnp.asarray(rng.integers(-8, 8, size=(500, 6)), jnp.float32), True),
        (jnp.asarray(rng.normal(size=(500, 6)), jnp.float32), False),
    ):
        counts, dw = ema.cluster_statistics(x, indices, num_codes, weights, "segment_sum")
        counts_1h, dw_1h = ema.cluster_statistics(x, indices, num_codes, weights, "one_hot")
        np.testing.assert_array_equal(counts_1h, counts)
        w = np.ones(500) if weights is None else np.asarray(weights)
        np.testing.assert_array_equal(counts, np.bincount(np.asarray(indices), w, minlength=num_codes))
        if exact:
            np.testing.assert_array_equal(dw_1h, dw)
        else:
            np.testing.assert_allclose(dw_1h, dw, rtol=1e-5, atol=1e-5)
        assert counts_1h.dtype == dw_1h.dtype == jnp.float32


def test_ema_quantizer_with_one_hot_statistics_trains_like_the_segment_sum():
    rng = _rng(5)
    x = jnp.asarray(rng.integers(-4, 4, size=(8, 4, 4, 6)), jnp.float32) / 4.0  # Exact sums.
    modules = {
        form: VectorQuantizerEMA(32, 6, decay=0.9, ema_statistics=form, dead_code_threshold=0.5)
        for form in ema.EMA_STATISTICS_FORMS
    }
    variables = modules["segment_sum"].init(jax.random.key(0), x, train=False)
    states = {form: variables for form in modules}
    for step in range(3):
        results = {}
        for form, module in modules.items():

            def loss(x, form=form, module=module, step=step):
                out, updates = module.apply(
                    states[form],
                    x,
                    train=True,
                    mutable=["vq_ema"],
                    rngs={"quantizer": jax.random.key(step)},
                )
                return jnp.sum(out["quantize"] * x) + out["loss"], (out, updates)

            (_, (out, updates)), grad = jax.value_and_grad(loss, has_aux=True)(x * (1 + step))
            results[form] = (out, updates, grad)
            states[form] = {**states[form], **updates}
        (out, updates, grad), (out_1h, updates_1h, grad_1h) = results["segment_sum"], results["one_hot"]
        np.testing.assert_array_equal(out_1h["encoding_indices"], out["encoding_indices"])
        np.testing.assert_array_equal(grad_1h, grad)
        for key in ema.EMA_STATE_KEYS:
            np.testing.assert_array_equal(updates_1h["vq_ema"][key], updates["vq_ema"][key])


def test_ema_statistics_are_float32_under_bfloat16_inputs():
    rng = _rng(6)
    x32 = jnp.asarray(rng.normal(size=(4, 4, 4, 8)), jnp.float32)
    x16 = x32.astype(jnp.bfloat16)
    module = VectorQuantizerEMA(16, 8, decay=0.9)
    variables = module.init(jax.random.key(0), x32, train=False)
    for form in ema.EMA_STATISTICS_FORMS:
        module = VectorQuantizerEMA(16, 8, decay=0.9, ema_statistics=form)
        out, updates = module.apply(variables, x16, train=True, mutable=["vq_ema"])
        reference, ref_updates = module.apply(
            variables, x16.astype(jnp.float32), train=True, mutable=["vq_ema"]
        )
        assert out["quantize"].dtype == jnp.bfloat16
        for key in ema.EMA_STATE_KEYS:
            assert updates["vq_ema"][key].dtype == ref_updates["vq_ema"][key].dtype
            np.testing.assert_array_equal(updates["vq_ema"][key], ref_updates["vq_ema"][key])
        assert updates["vq_ema"]["codebook"].dtype == jnp.float32
        np.testing.assert_array_equal(out["encoding_indices"], reference["encoding_indices"])


# -- 'auto' per backend --------------------------------------------------------------------------------


def test_auto_resolves_to_each_backends_default(fake_backend):
    fake_backend("cpu")
    assert search.resolve_argmin_form("auto") == "two_level"
    assert search.resolve_distance_precision("auto") == "highest"
    assert ema.resolve_ema_statistics("auto", 512) == "segment_sum"
    for accelerator in ("gpu", "tpu"):
        fake_backend(accelerator)
        assert search.resolve_argmin_form("auto") == "plain"
        assert search.resolve_distance_precision("auto") == "highest"
        assert ema.resolve_ema_statistics("auto", 4096) == "one_hot"
        assert ema.resolve_ema_statistics("auto", 4097) == "segment_sum"
        assert ema.resolve_ema_statistics("segment_sum", 512) == "segment_sum"
        assert search.resolve_argmin_form("two_level") == "two_level"


def test_unknown_hot_path_values_are_refused_when_the_module_is_built():
    with pytest.raises(ValueError, match=r"quantizer.argmin_form='fast'.*'two_level', 'plain'"):
        VectorQuantizer(8, 4, argmin_form="fast")
    with pytest.raises(ValueError, match=r"quantizer.distance_precision='float32'.*'highest'"):
        VectorQuantizerEMA(8, 4, distance_precision="float32")
    with pytest.raises(ValueError, match=r"quantizer.ema_statistics='scatter'.*'segment_sum', 'one_hot'"):
        VectorQuantizerEMA(8, 4, ema_statistics="scatter")


# -- exact at scale --------------------------------------------------------------------------------


def test_usage_counts_are_int32_and_exact_past_two_to_the_24():
    uses = 2**24 + 3  # float32 counts stop at 2^24: 2^24 + 1 rounds back to 2^24.
    assert np.float32(2**24) + np.float32(1) == np.float32(2**24)
    indices = jnp.zeros((uses,), jnp.int32).at[-1].set(2)
    counts = jax.jit(lambda i: statistics.code_counts_per_codebook(i, 1, 4))(indices)
    assert counts.dtype == jnp.int32
    np.testing.assert_array_equal(counts, [[uses - 1, 0, 1, 0]])
    # Summed over evaluation batches (as the loop's totals are), the count stays exact.
    per_batch = statistics.code_counts_per_codebook(jnp.zeros((2**12,), jnp.int32), 1, 4)
    total = jax.lax.fori_loop(0, 2**12 + 5, lambda _, t: t + per_batch, jnp.zeros_like(per_batch))
    assert int(total[0, 0]) == (2**12 + 5) * 2**12


def _restart_reference(state, x, key, decay, threshold):
    """The restart written without lax.cond (the form before it): draw and gather every step."""
    usage = ema.ema_usage(state, decay)
    candidates, valid = ema.sample_rows(key, x, state[ema.CODEBOOK].shape[0])
    restart = (usage < threshold) & (state[ema.COUNTER] > 0) & valid
    hidden = threshold * (1.0 - jnp.power(jnp.float32(decay), state[ema.COUNTER].astype(jnp.float32)))
    new = dict(state)
    new[ema.CODEBOOK] = jnp.where(restart[:, None], candidates, state[ema.CODEBOOK])
    new[ema.EMA_CLUSTER_SIZE_HIDDEN] = jnp.where(restart, hidden, state[ema.EMA_CLUSTER_SIZE_HIDDEN])
    new[ema.EMA_DW_HIDDEN] = jnp.where(restart[:, None], candidates * hidden, state[ema.EMA_DW_HIDDEN])
    return new, jnp.sum(restart.astype(jnp.float32))


@pytest.mark.parametrize("threshold", [0.5, 5.0])  # No dead code / some dead codes.
def test_restarts_run_only_when_a_code_is_dead_and_match_the_unconditional_form(threshold):
    rng = _rng(7)
    x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    state = ema.init_ema_state(jnp.asarray(rng.normal(size=(8, 4)), jnp.float32))
    indices = jnp.asarray(np.repeat(np.arange(8), 8), jnp.int32)
    indices = indices.at[:12].set(0)  # Code 1 gets 4 inputs, code 0 gets 12, the others 8.
    state = ema.ema_update(state, x, indices, decay=0.9, epsilon=1e-5, num_codes=8)
    key = jax.random.key(3)
    got, num_dead = jax.jit(lambda s: ema.restart_dead_codes(s, x, key, decay=0.9, threshold=threshold))(
        state
    )
    want, want_dead = _restart_reference(state, x, key, 0.9, threshold)
    assert float(num_dead) == float(want_dead) == (0 if threshold < 1 else 1)
    for k in ema.EMA_STATE_KEYS:
        np.testing.assert_array_equal(got[k], want[k])
    # The draw (top_k) and the gathers sit inside the cond's branch, not in the step itself.
    jaxpr = jax.make_jaxpr(lambda s: ema.restart_dead_codes(s, x, key, decay=0.9, threshold=threshold))(state)
    top_level = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
    assert "cond" in top_level and "top_k" not in top_level and "gather" not in top_level


def test_hot_path_benchmark_runs_and_reports_every_form():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "quantizer_hotpaths_bench.py"
    spec = importlib.util.spec_from_file_location("quantizer_hotpaths_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.time_hot_paths(shapes=((64, 80),), dim=8, repeats=1)
    forms = {(r["section"], r["form"]) for r in rows}
    assert {("argmin", f) for f in search.ARGMIN_FORMS} <= forms
    assert {("distance", p) for p in search.DISTANCE_PRECISIONS} <= forms
    assert {("ema_statistics", f) for f in ema.EMA_STATISTICS_FORMS} <= forms
    assert ("step", "auto+auto") in forms
    assert all(r["median_ms"] > 0 and r["num_codes"] == 80 and r["backend"] == "cpu" for r in rows)
    assert all(r["indices_changed"] == 0.0 for r in rows if r["section"] == "distance")  # CPU: all f32.
    assert "| argmin | 64 | 80 |" in bench.format_table(rows)
