"""Layers checked against independent references: numpy SVD, hand-written batch norm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.models import layers


def _apply_sn(module, x, variables, iterations):
    for _ in range(iterations):
        _, state = module.apply(variables, x, train=True, mutable=["spectral"])
        variables = {**variables, **state}
    return variables


@pytest.mark.parametrize("shape", [(64, 32), (3, 3, 16, 24)])
def test_spectral_norm_matches_numpy_svd(shape):
    kernel = jax.random.normal(jax.random.key(0), shape)
    if len(shape) == 2:
        module = layers.SNDense(shape[-1], kernel_init=lambda *_: kernel)
        x = jnp.ones((2, shape[0]))
    else:
        module = layers.SNConv(shape[-1], kernel_size=3, kernel_init=lambda *_: kernel)
        x = jnp.ones((2, 8, 8, shape[2]))
    variables = module.init(jax.random.key(1), x, train=False)
    variables = _apply_sn(module, x, variables, iterations=200)

    sigma_np = np.linalg.svd(np.asarray(kernel).reshape(-1, shape[-1]), compute_uv=False)[0]
    sigma = float(variables["spectral"]["sn"]["sigma"])
    np.testing.assert_allclose(sigma, sigma_np, rtol=1e-3)

    u = variables["spectral"]["sn"]["u"]
    w_sn, _, _ = layers.spectral_normalize(kernel, u, n_iterations=0, eps=1e-4)
    top = np.linalg.svd(np.asarray(w_sn).reshape(-1, shape[-1]), compute_uv=False)[0]
    np.testing.assert_allclose(top, 1.0, rtol=1e-3)


def test_spectral_norm_iterates_only_in_training():
    module = layers.SNDense(8)
    x = jnp.ones((2, 4))
    variables = module.init(jax.random.key(0), x, train=False)
    u0 = variables["spectral"]["sn"]["u"]
    _, state = module.apply(variables, x, train=True, mutable=["spectral"])
    assert not np.allclose(state["spectral"]["sn"]["u"], u0)
    _, state = module.apply(variables, x, train=False, mutable=["spectral"])
    np.testing.assert_array_equal(state["spectral"]["sn"]["u"], u0)
    # Immutable spectral collection: a training pass raises rather than dropping the update;
    # update_state=False runs it and leaves the state alone, as asked.
    with pytest.raises(layers.StateNotMutableError, match="spectral"):
        module.apply(variables, x, train=True)
    _, state = module.clone(update_state=False).apply(variables, x, train=True,
                                                      mutable=["spectral"])
    np.testing.assert_array_equal(state["spectral"]["sn"]["u"], u0)


def test_spectral_norm_gradient_matches_finite_difference():
    # With u fixed, d sigma / dW = v uᵀ: check the whole layer's gradient numerically.
    module = layers.SNDense(3, use_bias=False)
    x = jax.random.normal(jax.random.key(2), (4, 5))
    variables = module.init(jax.random.key(3), x, train=False)

    def loss(params):
        return jnp.sum(module.apply({**variables, "params": params}, x, train=False) ** 2)

    grad = jax.grad(loss)(variables["params"])["kernel"]
    k = variables["params"]["kernel"]
    eps = 1e-3
    idx = (1, 2)
    bumped = lambda d: {"kernel": k.at[idx].add(d)}  # noqa: E731
    fd = (loss(bumped(eps)) - loss(bumped(-eps))) / (2 * eps)
    np.testing.assert_allclose(grad[idx], fd, rtol=1e-2)


def test_zero_initialised_conditional_bn_equals_plain_bn_at_init_and_uses_batch_stats():
    x = jax.random.normal(jax.random.key(0), (16, 4, 4, 8)) * 3 + 1
    cond = jax.random.normal(jax.random.key(1), (16, 20))
    cbn = layers.ConditionalBatchNorm(eps=1e-4, map_init="zeros")
    variables = cbn.init(jax.random.key(2), x, cond, train=False)
    y, state = jax.jit(functools.partial(cbn.apply, train=True, mutable=["batch_stats"]))(
        variables, x, cond)

    xn = np.asarray(x, np.float64)
    mean, var = xn.mean((0, 1, 2)), xn.var((0, 1, 2))
    np.testing.assert_allclose(y, (xn - mean) / np.sqrt(var + 1e-4), atol=1e-4)

    bn = layers.BatchNorm(eps=1e-4)
    bn_vars = bn.init(jax.random.key(2), x, train=False)
    y_bn, _ = jax.jit(functools.partial(bn.apply, train=True, mutable=["batch_stats"]))(
        bn_vars, x)
    np.testing.assert_allclose(y, y_bn, atol=1e-6)

    # Running averages move towards the batch moments by (1 - momentum).
    stats = state["batch_stats"]["norm"]
    np.testing.assert_allclose(stats["mean"], 0.01 * mean, atol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.99 + 0.01 * var, rtol=1e-5)


def test_orthogonal_conditional_bn_reads_the_condition_from_the_first_step():
    """The references' CBN: orthogonal, spectrally normalised maps. An orthogonal (5 -> 3)
    kernel has every singular value 1, so σ = 1 and y = x̂ (1 + c W_γ) + c W_β exactly."""
    x = jax.random.normal(jax.random.key(0), (6, 2, 2, 3))
    cond = jax.random.normal(jax.random.key(1), (6, 5))
    cbn = layers.ConditionalBatchNorm(eps=1e-4)
    variables = cbn.init(jax.random.key(2), x, cond, train=False)
    wg = variables["params"]["gamma"]["kernel"]
    wb = variables["params"]["beta"]["kernel"]
    np.testing.assert_allclose(wg.T @ wg, np.eye(3), atol=1e-5)
    y = cbn.apply(variables, x, cond, train=False)
    xhat = x / jnp.sqrt(1 + 1e-4)
    expected = xhat * (1 + cond @ wg)[:, None, None, :] + (cond @ wb)[:, None, None, :]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.std(cond @ wg, axis=0).min()) > 0.3  # the gain differs between samples
    assert set(variables["spectral"]) == {"gamma", "beta"}


def test_conditional_bn_rejects_an_unknown_map_init():
    x, cond = jnp.zeros((2, 2, 2, 3)), jnp.zeros((2, 5))
    with pytest.raises(ValueError, match="map_init='ones'"):
        layers.ConditionalBatchNorm(map_init="ones").init(jax.random.key(0), x, cond)


def test_conditional_bn_gain_and_bias_follow_condition():
    x = jax.random.normal(jax.random.key(0), (6, 2, 2, 3))
    cond = jax.random.normal(jax.random.key(1), (6, 5))
    cbn = layers.ConditionalBatchNorm(map_init="zeros")
    variables = cbn.init(jax.random.key(2), x, cond, train=False)
    wg = jax.random.normal(jax.random.key(3), (5, 3))
    wb = jax.random.normal(jax.random.key(4), (5, 3))
    params = {"gamma": {"kernel": wg}, "beta": {"kernel": wb}}
    y = cbn.apply({**variables, "params": params}, x, cond, train=False)
    # Evaluation mode: running statistics (mean 0, var 1 at init).
    xhat = x / jnp.sqrt(1 + 1e-4)
    gain = (1 + cond @ wg)[:, None, None, :]
    bias = (cond @ wb)[:, None, None, :]
    np.testing.assert_allclose(y, xhat * gain + bias, rtol=1e-5, atol=1e-5)


def test_self_attention_is_identity_at_init_and_not_after():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    attn = layers.SelfAttention()
    variables = jax.jit(functools.partial(attn.init, train=False))(jax.random.key(1), x)
    apply = jax.jit(functools.partial(attn.apply, train=False))
    np.testing.assert_array_equal(apply(variables, x), x)
    params = {**variables["params"], "gamma": jnp.asarray(0.5)}
    y = apply({**variables, "params": params}, x)
    assert float(jnp.max(jnp.abs(y - x))) > 1e-3
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes["theta"]["kernel"] == (1, 1, 16, 2)
    assert shapes["g"]["kernel"] == (1, 1, 16, 8)
    assert shapes["out"]["kernel"] == (1, 1, 8, 16)


def test_dot_product_attention_equals_the_explicit_softmax():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    fused = layers.SelfAttention(impl="dot_product")
    variables = fused.init(jax.random.key(1), x, train=False)
    params = {**variables["params"], "gamma": jnp.asarray(0.7)}
    variables = {**variables, "params": params}
    a = fused.apply(variables, x, train=False)
    b = layers.SelfAttention(impl="einsum").apply(variables, x, train=False)
    # An independent numpy reference of softmax(θφᵀ)·g on the same projections.
    # Spectral normalisation (tested against SVD elsewhere) as evaluation applies it.
    spectral = variables["spectral"]
    w = {k: np.asarray(layers.spectral_normalize(params[k]["kernel"], spectral[k]["sn"]["u"],
                                                 n_iterations=0, eps=1e-4)[0])[0, 0]
         for k in ("theta", "phi", "g", "out")}
    xn = np.asarray(x, np.float64)
    pool = lambda t: t.reshape(2, 4, 2, 4, 2, -1).max(axis=(2, 4))  # noqa: E731
    theta = (xn @ w["theta"]).reshape(2, 64, -1)
    phi = pool(xn @ w["phi"]).reshape(2, 16, -1)
    g = pool(xn @ w["g"]).reshape(2, 16, -1)
    logits = theta @ phi.transpose(0, 2, 1)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    ref = xn + 0.7 * ((attn @ g).reshape(2, 8, 8, -1) @ w["out"])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="impl"):
        layers.SelfAttention(impl="flash").apply(variables, x, train=False)


def test_orthogonal_init_and_regularizer():
    dense = layers.SNDense(16, spectral_norm=False)
    variables = dense.init(jax.random.key(0), jnp.ones((1, 32)), train=False)
    w = variables["params"]["kernel"]
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-5)
    assert float(layers.orthogonal_regularizer(variables["params"])) < 1e-8

    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    params = {"conv": {"kernel": w, "bias": jnp.ones(5)}, "embed": {"kernel": w}}
    m = np.asarray(w).reshape(-1, 5)
    gram = m.T @ m
    expected = np.sum((gram * (1 - np.eye(5))) ** 2)
    np.testing.assert_allclose(jax.jit(layers.orthogonal_regularizer)(params), expected,
                               rtol=1e-5)


def test_residual_mlp_shapes_and_skip():
    mlp = layers.ResidualMLP(depth=3, width=8)
    x = jnp.ones((2, 5))
    variables = mlp.init(jax.random.key(0), x, train=False)
    assert mlp.apply(variables, x, train=False).shape == (2, 8)
    assert sorted(variables["params"]) == ["dense_0", "dense_1", "dense_2"]
    with pytest.raises(ValueError, match="depth"):
        layers.ResidualMLP(depth=0, width=8).init(jax.random.key(0), x)


def test_parameters_and_state_stay_float32_in_bfloat16():
    conv = layers.SNConv(8, dtype=jnp.bfloat16)
    x = jnp.ones((1, 4, 4, 3))
    variables = conv.init(jax.random.key(0), x, train=False)
    y, state = conv.apply(variables, x, train=True, mutable=["spectral"])
    assert y.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves((variables, state)):
        assert leaf.dtype == jnp.float32
