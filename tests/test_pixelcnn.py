"""Gated PixelCNN priors: causal structure by autodiff, samplers, training on codes, bad input."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, tiny_vqvae2_config, train_tiny_prior

from vqlatent.codes import dataset as codes_data
from vqlatent.codes import layout
from vqlatent.nets import pixelcnn as nn_pixelcnn
from vqlatent.nets.pixelcnn import GatedPixelCNN, PixelCNNInputError
from vqlatent.priors import sample_codes, sample_codes_cached
from vqlatent.trainers import loop

H = W = 4
N = H * W


def _tiny(**kw):
    fields = dict(num_codes=5, channels=8, num_layers=4, num_heads=2, head_channels=8, cond_channels=4)
    fields.update(kw)
    return GatedPixelCNN(**fields)


def _inputs(model, batch=1):
    labels = jnp.arange(batch) % model.num_classes if model.num_classes else None
    cond = jnp.ones((batch, H // 2, W // 2), jnp.int32) if model.cond_num_codes else None
    return labels, cond


def _dependencies(model, seed=0):
    """(N, N) bool: [p, q] = the logits at raster position p have a non-zero derivative
    with respect to the (embedded) code at position q."""
    labels, cond = _inputs(model)
    codes = jax.random.randint(jax.random.PRNGKey(seed), (1, H, W), 0, model.num_codes)
    variables = model.init(jax.random.PRNGKey(seed), codes, labels, cond)
    embedded = model.apply(variables, codes, method=GatedPixelCNN.embed_codes)
    cond_features = model.apply(variables, cond, (H, W), method=GatedPixelCNN.condition)

    def logits(x):
        return model.apply(variables, x, labels, cond_features, method=GatedPixelCNN.logits_from_embedding)[0]

    jac = jax.jacrev(lambda x: logits(x).sum(-1))(embedded)  # Eager: no compile.  # (H, W, 1, H, W, C)
    return np.abs(np.asarray(jac))[:, :, 0].sum(-1).reshape(N, N) > 0


STRICTLY_EARLIER = np.tril(np.ones((N, N), bool), k=-1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # Both stacks, masks A then B.
        dict(num_classes=3, cond_num_codes=4, num_layers=3, attention_layers=(0,)),  # Everything.
    ],
    ids=["stacks", "class+spatial+attention"],
)
def test_logits_depend_on_every_earlier_code_and_no_later_one(kw):
    # The dependency matrix is exactly the strictly lower triangle (the diagonal is mask A): the
    # receptive field is the whole past once the vertical stack spreads to the last column of the
    # row above (layer l's vertical features reach l + 1 columns to each side: 3 layers for 4x4).
    np.testing.assert_array_equal(_dependencies(_tiny(**kw)), STRICTLY_EARLIER)


def test_one_layer_receptive_field_is_exactly_the_shifted_kernels():
    # One gated layer, k=3: the horizontal stack sees (i, j-1) (mask A); the vertical stack,
    # shifted down a row, sees rows i-2..i-1, columns j-1..j+1. No blind spot, nothing else.
    deps = _dependencies(_tiny(num_layers=1)).reshape(H, W, H, W)
    for i in range(H):
        for j in range(W):
            expected = np.zeros((H, W), bool)
            if j > 0:
                expected[i, j - 1] = True
            expected[max(i - 2, 0) : i, max(j - 1, 0) : j + 2] = True
            np.testing.assert_array_equal(deps[i, j], expected, err_msg=f"position {(i, j)}")


def test_class_and_spatial_conditioning_change_the_logits():
    model = _tiny(num_classes=3, cond_num_codes=4, num_layers=2)
    labels, cond = _inputs(model, batch=2)
    codes = jnp.zeros((2, H, W), jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), codes, labels, cond)
    base = model.apply(variables, codes, labels, cond)
    other_label = model.apply(variables, codes, (labels + 1) % 3, cond)
    other_cond = model.apply(variables, codes, labels, cond.at[:, 1, 1].set(3))
    assert np.all(np.abs(np.asarray(other_label - base)).max(axis=(1, 2, 3)) > 1e-4)
    # The conditioning codes are given, not generated: one top code reaches every bottom position
    # (the first one included) through the conditioning stack's 3x3 convolutions on the 2x2 map.
    changed = np.abs(np.asarray(other_cond - base)).max(axis=(0, 3)) > 1e-6
    assert changed.all(), changed


def test_bad_inputs_are_rejected_with_clear_errors():
    model = _tiny(num_classes=3, cond_num_codes=4, num_layers=1)
    labels, cond = np.array([0, 2]), np.zeros((2, 2, 2), np.int32)
    codes = jnp.zeros((2, H, W), jnp.int32)
    with pytest.raises(PixelCNNInputError, match="do not fit"):
        model.init(jax.random.PRNGKey(0), codes, labels, np.zeros((2, 3, 3), np.int32))
    with pytest.raises(PixelCNNInputError, match="class-conditional"):
        model.init(jax.random.PRNGKey(0), codes, None, cond)
    variables = model.init(jax.random.PRNGKey(0), codes, labels, cond)
    rng = jax.random.PRNGKey(0)
    with pytest.raises(PixelCNNInputError, match=r"labels \[0, 3\].*num_classes=3"):
        sample_codes(model, variables, rng, (H, W), 2, labels=np.array([0, 3]), cond_codes=cond)
    with pytest.raises(PixelCNNInputError, match="do not fit"):
        sample_codes_cached(
            model, variables, rng, (H, W), 2, labels=labels, cond_codes=np.zeros((2, 4, 2), np.int32)
        )
    with pytest.raises(PixelCNNInputError, match=r"\[0, 4\)"):
        sample_codes(model, variables, rng, (H, W), 2, labels=labels, cond_codes=cond + 4)
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(PixelCNNInputError, match="temperature"):
            sample_codes(
                model, variables, rng, (H, W), 2, labels=labels, cond_codes=cond, temperature=temperature
            )
    with pytest.raises(ValueError, match="attention_layers"):
        _tiny(attention_layers=(4,)).init(jax.random.PRNGKey(0), jnp.zeros((1, H, W), jnp.int32))


def test_cached_sampler_draws_the_same_codes_as_the_plain_one():
    model = _tiny(num_classes=3, cond_num_codes=4, num_layers=3, attention_layers=(1,))
    labels = np.array([0, 2, 1])
    cond = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (3, 2, 2), 0, 4))
    variables = model.init(jax.random.PRNGKey(1), jnp.zeros((3, H, W), jnp.int32), labels, cond)
    rng = jax.random.PRNGKey(7)
    plain = sample_codes(model, variables, rng, (H, W), 3, labels=labels, cond_codes=cond, temperature=2.0)
    cached = sample_codes_cached(
        model, variables, rng, (H, W), 3, labels=labels, cond_codes=cond, temperature=2.0
    )
    np.testing.assert_array_equal(plain, cached)
    assert plain.shape == (3, H, W) and len(np.unique(np.asarray(plain))) > 1  # Not a degenerate draw.


# -- training on codes with the shared loop -------------------------------------------

TRANSITIONS = np.array([[0.9, 0.1], [0.3, 0.7]])  # Along raster order.


def _markov_maps(rng, n):
    stationary = np.array([0.75, 0.25])
    x = np.zeros((n, N), np.int64)
    x[:, 0] = rng.random(n) < stationary[1]
    for p in range(1, N):
        x[:, p] = rng.random(n) < TRANSITIONS[x[:, p - 1], 1]
    return x.reshape(n, H, W)


def _transition_frequencies(maps):
    flat = np.asarray(maps).reshape(len(maps), N)
    prev, nxt = flat[:, :-1].ravel(), flat[:, 1:].ravel()
    return np.array([[np.mean(nxt[prev == a] == b) for b in (0, 1)] for a in (0, 1)])


def test_prior_trained_on_a_markov_chain_reproduces_its_transitions_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    levels = {"top": layout.LevelSpec((H, W), 2)}
    train, held_out = _markov_maps(rng, 2048), _markov_maps(rng, 256)
    codes_dir = str(tmp_path / "codes")
    codes_data.write_codes_dataset(
        codes_dir,
        levels,
        {
            "train": ({"top": train}, np.zeros(len(train), np.int32)),
            "eval": ({"top": held_out}, np.zeros(len(held_out), np.int32)),
        },
    )

    config = load_config("pixelcnn", f"digits,codes_dir={codes_dir}")
    config.prior.class_conditional = False
    config.model.update(dict(channels=16, head_channels=16))
    config.update(
        dict(
            batch_size=64,
            num_train_steps=250,
            eval_every_steps=250,
            checkpoint_every_steps=125,
            log_every_steps=125,
            progress_bar=False,
        )
    )
    config.optimizer.learning_rate = 3e-3
    config.data.num_workers = 1
    workdir = str(tmp_path / "prior")
    state = loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "eval", "latest.json")) as f:
        metrics = json.load(f)
    # Entropy rate of the chain: 0.75 H(0.1) + 0.25 H(0.3) = 0.572 bits (+0.015 for the first code).
    assert metrics["num_examples"] == 256 and 0.5 < metrics["bits_per_code"] < 0.65, metrics

    task = loop.Runner(config, workdir).task
    samples = sample_codes_cached(task.model, {"params": state.params}, jax.random.PRNGKey(0), (H, W), 512)
    np.testing.assert_allclose(_transition_frequencies(samples), TRANSITIONS, atol=0.05)

    config.num_train_steps = 252  # Resumes from the checkpoint at 250 instead of starting over.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["125", "250"]
    state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 252


def test_task_rejects_configs_that_do_not_fit_the_codes(tmp_path):
    levels = {"bottom": layout.LevelSpec((H, W), 4), "top": layout.LevelSpec((3, 3), 4)}
    codes = {"bottom": np.zeros((2, H, W), np.int64), "top": np.zeros((2, 3, 3), np.int64)}
    codes_dir = str(tmp_path / "codes")
    codes_data.write_codes_dataset(
        codes_dir, levels, {"train": (codes, np.zeros(2, np.int32)), "eval": (codes, np.zeros(2, np.int32))}
    )
    config = load_config("pixelcnn", f"digits,level=bottom,codes_dir={codes_dir}")
    with pytest.raises(PixelCNNInputError, match=r"\(1, 3, 3\) do not fit"):
        loop.Runner(config, str(tmp_path / "a"))
    config.prior.level = "middle"
    with pytest.raises(ValueError, match="prior.level='middle'"):
        loop.Runner(config, str(tmp_path / "b"))


def test_sample_mode_decodes_a_class_grid_through_the_whole_hierarchy(tmp_path):
    from vqlatent import main as main_lib  # pylint: disable=g-import-not-at-top

    vq = tiny_vqvae2_config(tmp_path / "tfds")  # Digits: bottom 4x4, top 2x2 codes; shrunk, trained 1 step.
    vq_workdir = str(tmp_path / "vqvae2")
    loop.train_and_evaluate(vq, vq_workdir)
    main_lib.run(vq, vq_workdir, "extract_codes")

    workdirs, configs = {}, {}
    for level in ("top", "bottom"):
        workdirs[level] = str(tmp_path / f"prior_{level}")
        configs[level] = train_tiny_prior(f"{vq_workdir}/codes", workdirs[level], f"digits,level={level}")

    with pytest.raises(ValueError, match=r"\(top\) prior, not of the .bottom. prior"):
        main_lib.run(configs["bottom"], workdirs["bottom"], "sample")
    with pytest.raises(ValueError, match=r"No prior for level\(s\) \['bottom'\]"):
        main_lib.run(configs["top"], workdirs["top"], "sample")
    configs["top"].sample.lower_priors = f"bottom={workdirs['bottom']}"
    configs["top"].sample.num_per_class = 2
    out = main_lib.run(configs["top"], workdirs["top"], "sample")
    np.testing.assert_array_equal(out["labels"], np.repeat(np.arange(10), 2))
    assert out["codes_by_level"]["top"].shape == (20, 2, 2) and out["codes_by_level"]["bottom"].shape == (
        20,
        4,
        4,
    )
    assert out["samples"].shape == (20, 8, 8, 1) and os.path.getsize(out["images"]) > 100
    saved = np.load(out["codes"])
    np.testing.assert_array_equal(saved["bottom"], out["codes_by_level"]["bottom"])


# -- compute dtype and attention ----------------------------------------------------------


def _full_model(dtype=jnp.float32):
    return _tiny(num_classes=3, cond_num_codes=4, num_layers=3, attention_layers=(1,), dtype=dtype)


def _full_inputs(batch=3):
    codes = jax.random.randint(jax.random.PRNGKey(5), (batch, H, W), 0, 5)
    labels = np.arange(batch) % 3
    cond = np.asarray(jax.random.randint(jax.random.PRNGKey(6), (batch, H // 2, W // 2), 0, 4))
    return codes, labels, cond


def test_bfloat16_forward_is_finite_and_close_to_float32_with_float32_attention_and_logits():
    codes, labels, cond = _full_inputs()
    variables = _full_model().init(jax.random.PRNGKey(0), codes, labels, cond)  # float32 parameters.
    reference = jax.jit(_full_model().apply)(variables, codes, labels, cond)
    seen = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        dtypes = {leaf.dtype for leaf in jax.tree.leaves(out)}
        seen.append((type(context.module).__name__, context.method_name, dtypes))
        return out

    with nn.intercept_methods(record):  # Records while tracing: dtypes are static.
        logits = jax.jit(_full_model(jnp.bfloat16).apply)(variables, codes, labels, cond)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    # bf16 keeps 8 bits of mantissa: the logits agree to a few percent of their spread.
    np.testing.assert_allclose(logits, reference, atol=0.05 * float(jnp.std(reference)), rtol=0.02)
    dtypes = {}
    for module, method, out_dtypes in seen:
        dtypes.setdefault((module, method), set()).update(out_dtypes)
    # Every table lookup (codes, class biases, the conditioning codes) is in the compute dtype,
    # the attention logits (and so their softmax) in float32.
    assert dtypes[("Embed", "__call__")] == {jnp.dtype(jnp.bfloat16)}, dtypes
    assert dtypes[("CausalSelfAttention", "attention_logits")] == {jnp.dtype(jnp.float32)}, dtypes
    assert dtypes[("GatedLayer", "__call__")] == {jnp.dtype(jnp.bfloat16)}, dtypes  # Gates stay bf16.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_is_jax_nn_dot_product_attention(dtype):
    # softmax(q.k / sqrt(d)) v over positions q <= p, the reference formula as jax.nn implements it.
    attention = nn_pixelcnn.CausalSelfAttention(channels=8, num_heads=2, dtype=dtype)
    h = jax.random.normal(jax.random.PRNGKey(0), (2, H, W, 8)).astype(dtype)
    variables = attention.init(jax.random.PRNGKey(1), h)
    flat = h.reshape(2, N, 8)

    def reference(m):
        q, (k, v) = m._heads(m.query(flat)), m.keys_values(flat)
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return flat + m.out(attended.reshape(2, N, 8))

    expected = jax.jit(nn.apply(reference, attention))(variables)
    got = jax.jit(attention.apply)(variables, h).reshape(2, N, 8)
    assert got.dtype == expected.dtype == dtype
    tolerance = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(expected, np.float32), atol=tolerance, rtol=tolerance
    )


def test_cached_sampler_draws_the_same_codes_as_the_plain_one_in_bfloat16():
    codes, labels, cond = _full_inputs()
    variables = _full_model().init(jax.random.PRNGKey(1), codes, labels, cond)
    model, rng = _full_model(jnp.bfloat16), jax.random.PRNGKey(7)
    plain = sample_codes(model, variables, rng, (H, W), 3, labels=labels, cond_codes=cond, temperature=2.0)
    cached = sample_codes_cached(
        model, variables, rng, (H, W), 3, labels=labels, cond_codes=cond, temperature=2.0
    )
    np.testing.assert_array_equal(plain, cached)
    assert len(np.unique(np.asarray(plain))) > 1
