"""MaskGIT priors: the masking schedule, the masked loss, the decoding, training on the shared loop,
bad input, and the class -> codes -> pixels chain with MaskGIT and PixelCNN priors mixed."""

import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, run_steps, tiny_vqvae2_config, train_tiny_prior

from vqlatent.codes import dataset as codes_dataset
from vqlatent.codes import layout
from vqlatent.nets.maskgit import MaskGITInputError, MaskGITTransformer, mask_ratio
from vqlatent.parallel import mesh as mesh_lib
from vqlatent.priors import maskgit_sampling
from vqlatent.trainers import loop
from vqlatent.trainers import maskgit as maskgit_task

H = W = 3
N = H * W
K = 5


def _tiny(**kw):
    fields = dict(
        num_codes=K, width=16, num_layers=2, num_heads=2, mlp_dim=32, num_classes=3, cond_num_codes=4
    )
    fields.update(kw)
    return MaskGITTransformer(**fields)


def _init(model, batch=2, seed=0):
    codes = jnp.full((batch, H, W), model.mask_id, jnp.int32)
    labels = np.arange(batch) % 3 if model.num_classes else None
    cond = (
        np.asarray(jax.random.randint(jax.random.PRNGKey(seed + 1), (batch, 1, 1), 0, 4))
        if model.cond_num_codes
        else None
    )
    return jax.jit(model.init)(jax.random.PRNGKey(seed), codes, labels, cond), labels, cond


# -- the schedule -------------------------------------------------------------------------------


def test_training_masks_follow_the_cosine_schedule():
    rng, b, n = jax.random.PRNGKey(3), 4096, 64
    mask = np.asarray(maskgit_task.training_mask(rng, b, n))
    # Per example exactly ceil(cos(pi/2 u) N) positions (at least one), u the example's draw.
    u = np.asarray(jax.random.uniform(jax.random.split(rng)[0], (b,)))
    expected = np.clip(np.ceil(np.cos(np.pi / 2 * u) * n), 1, n)
    np.testing.assert_array_equal(mask.sum(axis=1), expected)
    # The fraction is cos(pi/2 u), u ~ U(0, 1): mean 2/pi (+ at most 1/N from the ceiling), and the
    # positions are uniform (every position masked as often, up to sampling noise).
    assert 2 / np.pi < mask.mean() < 2 / np.pi + 1 / n
    np.testing.assert_allclose(mask.mean(axis=0), mask.mean(), atol=0.03)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decoding_leaves_the_scheduled_fraction_masked_after_each_step(schedule):
    n, steps = 16, 4
    counts = maskgit_sampling.masked_counts(n, steps, schedule)
    expected = {"cosine": [14, 11, 6, 0], "linear": [12, 8, 4, 0]}[schedule]  # floor(N gamma(t / T)).
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(
        np.floor(n * mask_ratio(np.arange(1, steps) / steps, schedule)), expected[:-1]
    )
    # More steps than positions: at least one code fixed per step until one is left; the last step fixes all.
    np.testing.assert_array_equal(maskgit_sampling.masked_counts(3, 5, schedule), [2, 1, 1, 1, 0])
    np.testing.assert_array_equal(maskgit_sampling.masked_counts(9, 1, schedule), [0])
    # The sampler's steps leave exactly those counts masked.
    model = _tiny()
    variables, labels, cond = _init(model)
    codes = jnp.full((2, N), model.mask_id, jnp.int32)
    apply, decode_step = (
        jax.jit(model.apply),
        jax.jit(maskgit_sampling.decode_step, static_argnames="mask_id"),
    )
    for t, count in enumerate(maskgit_sampling.masked_counts(N, 4, schedule)):
        logits = apply(variables, codes.reshape(2, H, W), labels, cond).reshape(2, N, K)
        codes = decode_step(
            codes, logits, jax.random.PRNGKey(t), count, mask_id=K, temperature=1.0, noise_scale=1.0
        )
        np.testing.assert_array_equal(np.sum(np.asarray(codes) == K, axis=1), [count, count])


# -- the loss -------------------------------------------------------------------------------------


def test_loss_counts_only_the_masked_positions():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, N, K))
    targets = jax.random.randint(jax.random.PRNGKey(1), (2, N), 0, K)
    mask = jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, (2, N)).at[:, 0].set(True)

    def loss(logits, targets):
        return jnp.sum(maskgit_task.masked_nll(logits, targets, mask)) / jnp.sum(mask)

    other = jnp.where(mask, targets, (targets + 1) % K)  # Only the unmasked targets change.
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    value, grad = value_and_grad(logits, targets)
    value_other, grad_other = value_and_grad(logits, other)
    assert float(value) == float(value_other)
    np.testing.assert_array_equal(grad, grad_other)
    assert not np.any(np.asarray(grad)[~np.asarray(mask)])  # No gradient from an unmasked position.
    log_p = np.asarray(jax.nn.log_softmax(logits))
    reference = -np.mean(
        np.take_along_axis(log_p, np.asarray(targets)[..., None], -1)[..., 0][np.asarray(mask)]
    )
    np.testing.assert_allclose(float(value), reference, rtol=1e-6)


def _codes_spec(levels, num_classes=3):
    return types.SimpleNamespace(levels=levels, num_classes=num_classes)


def _task(level="top", **model):
    config = load_config("maskgit", f"digits,level={level}")
    config.model.update(dict(width=16, num_layers=1, num_heads=2, mlp_dim=16, **model))
    levels = {"bottom": layout.LevelSpec((2 * H, 2 * W), K), "top": layout.LevelSpec((H, W), 4)}
    return maskgit_task.Task(config, _codes_spec(levels))


def test_task_loss_is_the_masked_cross_entropy_of_the_network_on_the_masked_input():
    task = _task("bottom")
    batch = {
        "codes_top": jax.random.randint(jax.random.PRNGKey(0), (4, H, W), 0, 4),
        "codes_bottom": jax.random.randint(jax.random.PRNGKey(1), (4, 2 * H, 2 * W), 0, K),
        "label": jnp.arange(4) % 3,
    }
    assert set(batch) == set(task.dummy_batch())
    state = jax.jit(task.init_state)(jax.random.PRNGKey(2), batch)
    rng = jax.random.PRNGKey(3)
    loss, (_, metrics) = jax.jit(task.loss_fn)(state.params, {}, batch, rng)
    mask = maskgit_task.training_mask(rng, 4, 4 * N)
    flat = batch["codes_bottom"].reshape(4, -1)
    inputs = jnp.where(mask, K, flat).reshape(4, 2 * H, 2 * W)
    logits = jax.jit(task.model.apply)({"params": state.params}, inputs, batch["label"], batch["codes_top"])
    log_p = jax.nn.log_softmax(logits.reshape(4, 4 * N, K))
    expected = -jnp.sum(
        jnp.where(mask, jnp.take_along_axis(log_p, flat[..., None], -1)[..., 0], 0)
    ) / jnp.sum(mask)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["mask_fraction"]), float(jnp.mean(mask)))


def _batches(task, n, batch_size=8):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        # Codes of both levels in [0, 4) (valid for K=4 and K=5), labels 0 1 2 0 ...
        batch = {
            k: rng.integers(0, 4, (batch_size, *v.shape[1:])).astype(np.int32)
            for k, v in task.dummy_batch().items()
        }
        batch["label"] = (np.arange(batch_size) % 3).astype(np.int32)
        out.append(batch)
    return out


def test_sharded_steps_equal_single_device_steps_and_bfloat16_stays_close():
    task = _task("bottom")
    batches = _batches(task, 2)
    eval_batch = {**batches[0], "mask": np.ones(8, np.float32)}
    one = run_steps(task, mesh_lib.make_mesh(1), batches, eval_batch)
    eight = run_steps(task, mesh_lib.make_mesh(8), batches, eval_batch)
    chex.assert_trees_all_close(eight, one, atol=1e-5, rtol=1e-5)
    assert float(one[1][0]["loss"]) > float(one[1][1]["loss"]) * 0.5  # A real loss, not a degenerate 0.
    bf16 = _task("bottom")
    bf16.config.dtype = "bfloat16"
    bf16 = maskgit_task.Task(bf16.config, bf16.spec)
    state, metrics = run_steps(bf16, mesh_lib.make_mesh(1), batches)
    assert all(np.isfinite(float(m["loss"])) for m in metrics)
    np.testing.assert_allclose(float(metrics[0]["loss"]), float(one[1][0]["loss"]), rtol=0.02)


# -- the network ----------------------------------------------------------------------------------


def test_attention_is_bidirectional_every_output_depends_on_every_position():
    model = _tiny(num_layers=1)
    variables, labels, cond = _init(model, batch=1)
    codes = jax.random.randint(jax.random.PRNGKey(4), (1, H, W), 0, K + 1)

    def logits_of_positions(position_embedding):
        params = {**variables["params"], "position_embedding": position_embedding}
        return model.apply({"params": params}, codes, labels, cond)[0].reshape(N, K).sum(-1)

    # d logits(p) / d input(q), the input at q perturbed through its position embedding.
    jac = np.abs(
        np.asarray(jax.jit(jax.jacrev(logits_of_positions))(variables["params"]["position_embedding"]))
    ).sum(-1)
    assert jac[0, N - 1] > 0  # The first position sees the last one (a PixelCNN's would be 0).
    assert np.all(jac > 0), jac


def test_class_and_upper_level_change_every_position():
    model = _tiny()
    variables, labels, cond = _init(model)
    codes = jnp.full((2, H, W), K, jnp.int32)
    apply = jax.jit(model.apply)
    base = apply(variables, codes, labels, cond)
    other_label = apply(variables, codes, (labels + 1) % 3, cond)
    other_cond = apply(variables, codes, labels, (cond + 1) % 4)
    assert np.all(np.abs(np.asarray(other_label - base)).max(axis=-1) > 1e-5)
    assert np.all(np.abs(np.asarray(other_cond - base)).max(axis=-1) > 1e-5)


# -- decoding -------------------------------------------------------------------------------------


def test_a_decoding_step_never_unmasks_or_changes_a_fixed_code():
    rng = np.random.default_rng(0)
    decode_step = jax.jit(maskgit_sampling.decode_step, static_argnames="mask_id")
    for trial in range(20):
        codes = rng.integers(0, K, (4, N))
        masked = rng.random((4, N)) < 0.6
        masked[:, 0] = True
        codes = np.where(masked, K, codes).astype(np.int32)
        # Logits that prefer another code everywhere, the fixed positions included.
        logits = 10.0 * jax.nn.one_hot((codes + 1) % K, K) + jax.random.normal(
            jax.random.PRNGKey(trial), (4, N, K)
        )
        target = int(rng.integers(0, masked.sum(axis=1).min()))  # Any count, even too many.
        out = np.asarray(
            decode_step(
                jnp.asarray(codes),
                logits,
                jax.random.PRNGKey(trial),
                target,
                mask_id=K,
                temperature=1.0,
                noise_scale=2.0,
            )
        )
        np.testing.assert_array_equal(out[~masked], codes[~masked])  # Fixed codes unchanged.
        assert np.all((out == K) <= masked)  # Nothing fixed is masked again.
        np.testing.assert_array_equal((out == K).sum(axis=1), target)
        assert np.all((out[masked] >= 0) & (out[masked] <= K))


def _reference_decode(model, variables, rng, labels, cond, temperature, num_steps, schedule):
    """MaskGIT decoding without noise, written plainly: a Python loop over steps and examples."""
    b = len(labels)
    codes = np.full((b, N), K, np.int64)
    apply = jax.jit(model.apply)  # The network; the decoding around it is the plain loop below.
    for t in range(num_steps):
        logits = np.asarray(apply(variables, jnp.asarray(codes.reshape(b, H, W)), labels, cond)).reshape(
            b, N, K
        )
        sample_key, _ = jax.random.split(jax.random.fold_in(rng, t))
        drawn = np.asarray(jax.random.categorical(sample_key, jnp.asarray(logits) / temperature, axis=-1))
        for i in range(b):
            masked = [p for p in range(N) if codes[i, p] == K]
            if t == num_steps - 1:
                keep_masked = 0
            else:
                keep_masked = int(np.floor(N * mask_ratio((t + 1) / num_steps, schedule) + 1e-9))
                keep_masked = max(1, min(len(masked) - 1, keep_masked))
            scaled = logits[i] / temperature
            log_p = (
                scaled
                - np.log(np.sum(np.exp(scaled - scaled.max(-1, keepdims=True)), -1, keepdims=True))
                - scaled.max(-1, keepdims=True)
            )
            confidence = {p: log_p[p, drawn[i, p]] for p in masked}
            by_confidence = sorted(masked, key=lambda p: -confidence[p])
            for p in by_confidence[: len(masked) - keep_masked]:  # The most confident are fixed.
                codes[i, p] = drawn[i, p]
    return codes.reshape(b, H, W)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sampler_with_one_step_per_position_and_no_noise_is_the_plain_reference_loop(schedule):
    # With T = N and the linear schedule every step fixes exactly one code, the most confident one.
    model = _tiny()
    variables, _, _ = _init(model, seed=5)
    labels, cond = np.array([0, 1, 2]), np.array([[[0]], [[3]], [[1]]])
    rng = jax.random.PRNGKey(11)
    got = maskgit_sampling.sample_codes(
        model,
        variables,
        rng,
        (H, W),
        3,
        labels=labels,
        cond_codes=cond,
        temperature=1.5,
        num_steps=N,
        choice_temperature=0.0,
        schedule=schedule,
    )
    expected = _reference_decode(model, variables, rng, labels, cond, 1.5, N, schedule)
    np.testing.assert_array_equal(got, expected)
    assert np.all((np.asarray(got) >= 0) & (np.asarray(got) < K)) and len(np.unique(np.asarray(got))) > 1


def test_sampler_is_deterministic_for_a_seed_and_fills_every_position():
    model = _tiny()
    variables, labels, cond = _init(model)
    args = (model, variables, jax.random.PRNGKey(0), (H, W), 2)
    a = maskgit_sampling.sample_codes(*args, labels=labels, cond_codes=cond, num_steps=3)
    b = maskgit_sampling.sample_codes(*args, labels=labels, cond_codes=cond, num_steps=3)
    c = maskgit_sampling.sample_codes(
        model, variables, jax.random.PRNGKey(1), (H, W), 2, labels=labels, cond_codes=cond, num_steps=3
    )
    np.testing.assert_array_equal(a, b)
    assert np.all(np.asarray(a) < K) and not np.array_equal(a, c)


def test_bad_input_is_rejected_with_clear_errors():
    model = _tiny()
    variables, labels, cond = _init(model)
    rng = jax.random.PRNGKey(0)
    for steps in (0, -2, 1.5):
        with pytest.raises(MaskGITInputError, match=rf"num_steps={steps}.*>= 1"):
            maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, labels, cond, num_steps=steps)
    with pytest.raises(MaskGITInputError, match=r"mask_id=2 is inside the codebook range \[0, 5\)"):
        maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, labels, cond, mask_id=2)
    with pytest.raises(MaskGITInputError, match="schedule='square'"):
        maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, labels, cond, schedule="square")
    with pytest.raises(MaskGITInputError, match="choice_temperature=-1"):
        maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, labels, cond, choice_temperature=-1.0)
    with pytest.raises(MaskGITInputError, match="temperature=0"):
        maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, labels, cond, temperature=0.0)
    # Codes of the wrong shape or values, to the network.
    with pytest.raises(MaskGITInputError, match=r"\(batch, height, width\).*\(2, 9\)"):
        model.apply(variables, jnp.zeros((2, N), jnp.int32), labels, cond)
    with pytest.raises(MaskGITInputError, match=r"integers in \[0, 5\].*\[0, 6\]"):
        model.apply(variables, jnp.zeros((2, H, W), jnp.int32).at[0, 0, 0].set(6), labels, cond)
    with pytest.raises(MaskGITInputError, match=r"\(2, 2, 2\) do not fit"):
        model.apply(variables, jnp.zeros((2, H, W), jnp.int32), labels, np.zeros((2, 2, 2), np.int32))
    with pytest.raises(MaskGITInputError, match=r"\(2, 2, 2\) do not fit"):
        maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, labels, np.zeros((2, 2, 2), np.int32))
    with pytest.raises(MaskGITInputError, match=r"\[0, 4\)"):
        maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, labels, cond + 4)
    with pytest.raises(MaskGITInputError, match="class-conditional"):
        model.apply(variables, jnp.zeros((2, H, W), jnp.int32), None, cond)
    with pytest.raises(MaskGITInputError, match=r"labels \[0, 3\]"):
        maskgit_sampling.sample_codes(model, variables, rng, (H, W), 2, np.array([0, 3]), cond)


# -- training on codes with the shared loop -------------------------------------------------------


def _write_codes(codes_dir, n=64):
    rng = np.random.default_rng(0)
    levels = {"top": layout.LevelSpec((H, W), K)}
    maps = rng.integers(0, K, (n, H, W))
    labels = (np.arange(n) % 3).astype(np.int32)
    codes_dataset.write_codes_dataset(
        codes_dir, levels, {"train": ({"top": maps}, labels), "eval": ({"top": maps[:16]}, labels[:16])}
    )


def _train_config(codes_dir, steps):
    config = load_config("maskgit", f"digits,codes_dir={codes_dir}")
    config.data.num_classes = 3
    config.model.update(dict(width=16, num_layers=1, num_heads=2, mlp_dim=16))
    config.update(
        dict(
            batch_size=8,
            num_train_steps=steps,
            eval_every_steps=4,
            checkpoint_every_steps=2,
            log_every_steps=2,
            progress_bar=False,
            eval_batch_size=16,
            compilation_cache_dir="",
        )
    )
    config.data.num_workers = 1
    config.mesh.data = 1
    return config


def test_training_resumes_exactly(tmp_path):
    codes_dir = str(tmp_path / "codes")
    _write_codes(codes_dir)
    straight = loop.train_and_evaluate(_train_config(codes_dir, 4), str(tmp_path / "straight"))
    loop.train_and_evaluate(_train_config(codes_dir, 2), str(tmp_path / "resumed"))
    resumed = loop.train_and_evaluate(_train_config(codes_dir, 4), str(tmp_path / "resumed"))
    assert int(resumed.step) == int(straight.step) == 4
    chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(straight))  # Bit for bit.
    metrics = layout.read_json(str(tmp_path / "resumed" / "eval" / "latest.json"))
    assert metrics["num_examples"] == 16 and set(metrics) >= {"masked_nll_r25", "masked_nll_r100"}
    assert 0 < metrics["masked_bits_per_code"] < 2 * np.log2(K), metrics


# -- the chain: class -> codes -> pixels ----------------------------------------------------------


def test_sample_mode_runs_the_chain_with_maskgit_and_pixelcnn_priors_mixed(tmp_path):
    from vqlatent import main as main_lib
    from vqlatent.models import loading

    vq = tiny_vqvae2_config(tmp_path / "tfds")  # Digits: bottom 4x4, top 2x2 codes.
    vq_workdir = str(tmp_path / "vqvae2")
    loop.train_and_evaluate(vq, vq_workdir)
    main_lib.run(vq, vq_workdir, "extract_codes")
    codes_dir = f"{vq_workdir}/codes"
    maskgit = {
        level: (
            train_tiny_prior(
                codes_dir, str(tmp_path / f"maskgit_{level}"), f"digits,level={level}", kind="maskgit"
            ),
            str(tmp_path / f"maskgit_{level}"),
        )
        for level in ("top", "bottom")
    }
    pixelcnn = {
        level: (
            train_tiny_prior(codes_dir, str(tmp_path / f"pixelcnn_{level}"), f"digits,level={level}"),
            str(tmp_path / f"pixelcnn_{level}"),
        )
        for level in ("top", "bottom")
    }
    outputs = {}
    for name, top, bottom in [
        ("maskgit+pixelcnn", maskgit, pixelcnn),
        ("pixelcnn+maskgit", pixelcnn, maskgit),
    ]:
        config, workdir = top["top"]
        config.sample.lower_priors = f"bottom={bottom['bottom'][1]}"
        config.sample.num_per_class = 2
        out = outputs[name] = main_lib.run(config, workdir, "sample")
        np.testing.assert_array_equal(out["labels"], np.repeat(np.arange(10), 2))
        assert out["codes_by_level"]["top"].shape == (20, 2, 2)
        assert out["codes_by_level"]["bottom"].shape == (20, 4, 4)
        assert out["samples"].shape == (20, 8, 8, 1) and os.path.getsize(out["images"]) > 100
    # Both levels MaskGIT; the top's sample.lower_num_steps sets the bottom's decoding steps.
    config, workdir = maskgit["top"]
    config.sample.lower_priors = f"bottom={maskgit['bottom'][1]}"
    three = main_lib.run(config, workdir, "sample")["codes_by_level"]
    config.sample.lower_num_steps = 1
    one = main_lib.run(config, workdir, "sample")["codes_by_level"]
    config.sample.lower_num_steps = None
    np.testing.assert_array_equal(one["top"], three["top"])
    assert not np.array_equal(one["bottom"], three["bottom"])
    # vqlatent.load: a MaskGIT top prior's workdir is a chain too, and samples as --mode=sample does.
    chain = loading.load(maskgit["top"][1], lower_priors=f"bottom={pixelcnn['bottom'][1]}")
    samples = chain.sample(20, labels=np.repeat(np.arange(10), 2), seed=0, batch_size=100)
    for level in ("top", "bottom"):
        np.testing.assert_array_equal(
            samples.codes[level], outputs["maskgit+pixelcnn"]["codes_by_level"][level]
        )
    # choice_temperature reaches the MaskGIT prior: its config's value draws the same codes, greedy
    # choice (0) others; a bad value is the sampler's clear error.
    assert config.sample.choice_temperature == 4.5
    kwargs = dict(labels=np.repeat(np.arange(10), 2), seed=0, batch_size=100)
    same = chain.sample(20, choice_temperature=4.5, **kwargs)
    np.testing.assert_array_equal(same.codes["top"], samples.codes["top"])
    greedy = chain.sample(20, choice_temperature=0.0, **kwargs)
    assert not np.array_equal(greedy.codes["top"], samples.codes["top"])
    with pytest.raises(MaskGITInputError, match=r"choice_temperature=-1.0: must be a finite number >= 0"):
        chain.sample(2, choice_temperature=-1.0)
    # Bits per code only for the priors with a likelihood (the PixelCNN bottom).
    assert set(chain.bits_per_code(chain.autoencoder.encode(samples.images), samples.labels)) == {"bottom"}
