"""The public module API, used as a third party would: only ``bbg_jax.models``' exports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bbg_jax.models as models
from bbg_jax.models import (
    BatchNorm,
    BigBiGANDiscriminator,
    Encoder,
    GANDiscriminator,
    Generator,
    SNConv,
    SNDense,
    StateNotMutableError,
)

NETWORKS = (Generator, Encoder, BigBiGANDiscriminator, GANDiscriminator)


def tiny_generator(**kw):
    return Generator(resolution=32, ch=4, z_dim=16, **kw)


def test_all_is_explicit_and_resolves():
    assert len(set(models.__all__)) == len(models.__all__)
    for name in models.__all__:
        assert hasattr(models, name), name
        assert not name.startswith("_")
    for cls in NETWORKS:
        assert cls.__name__ in models.__all__
    assert "layers" in models.__all__


@pytest.mark.parametrize("cls", NETWORKS, ids=lambda c: c.__name__)
def test_networks_document_call_collections_and_fields(cls):
    doc = cls.__doc__
    for word in ("Call", "params", "mutable", "param_dtype", "conv_impl", "update_state"):
        assert word in doc, f"{cls.__name__}'s docstring does not mention {word!r}"
    for field in ("param_dtype", "update_state", "conv_impl"):
        assert field in cls.__dataclass_fields__


def test_training_pass_with_immutable_state_raises():
    x = jnp.ones((4, 3))
    bn = BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    with pytest.raises(StateNotMutableError, match=r"batch_stats.*mutable="):
        bn.apply(variables, x, train=True)
    dense = SNDense(5)  # W (3, 5): not square-orthogonal, so the power iteration moves u
    variables = dense.init(jax.random.key(0), x, train=False)
    with pytest.raises(StateNotMutableError, match=r"spectral.*train=False"):
        dense.apply(variables, x, train=True)
    # The explicit ways: mutable=, train=False, or update_state=False (state kept as stored).
    _, new = dense.apply(variables, x, train=True, mutable=["spectral"])
    assert not np.allclose(new["spectral"]["sn"]["u"], variables["spectral"]["sn"]["u"])
    dense.apply(variables, x, train=False)
    dense.clone(update_state=False).apply(variables, x, train=True)


def test_generator_trap_names_the_collection():
    g = tiny_generator()
    z = jnp.zeros((2, 16))
    variables = jax.eval_shape(lambda: g.init(jax.random.key(0), z, train=False))
    with pytest.raises(StateNotMutableError, match="batch_stats|spectral"):
        jax.eval_shape(lambda v: g.apply(v, z, train=True), variables)
    jax.eval_shape(lambda v: g.apply(v, z, train=True, mutable=["batch_stats", "spectral"]),
                   variables)


def test_param_dtype():
    g = tiny_generator(param_dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda: g.init(jax.random.key(0), jnp.zeros((2, 16)),
                                              train=False))
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}
    # Statistics and spectral vectors stay float32.
    for c in ("batch_stats", "spectral"):
        assert {x.dtype for x in jax.tree.leaves(variables[c])} == {jnp.dtype(jnp.float32)}
    assert jax.tree.leaves(jax.eval_shape(lambda: tiny_generator().init(
        jax.random.key(0), jnp.zeros((2, 16)), train=False)["params"]))[0].dtype == jnp.float32


def test_jvp_works_with_xla_convolutions():
    conv = SNConv(4, conv_impl="xla")
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
    variables = conv.init(jax.random.key(0), x, train=False)
    f = lambda t: conv.apply(variables, t, train=False)  # noqa: E731
    _, tangent = jax.jvp(f, (x,), (x,))
    np.testing.assert_allclose(tangent, f(x), rtol=1e-5, atol=1e-5)  # f is linear in x (bias 0)
    # The whole generator too, traced only.
    g = tiny_generator(conv_impl="xla")
    z = jnp.ones((2, 16))
    v = jax.eval_shape(lambda: g.init(jax.random.key(0), z, train=False))
    jax.eval_shape(lambda v: jax.jvp(lambda z: g.apply(v, z, train=False), (z,), (z,)), v)


@pytest.mark.parametrize("impl", ["einsum", "winograd"])
def test_jvp_through_custom_vjp_convolutions_names_the_field(impl):
    conv = SNConv(4, conv_impl=impl)
    x = jnp.ones((1, 8, 8, 3))
    variables = conv.init(jax.random.key(0), x, train=False)
    with pytest.raises(TypeError, match="conv_impl"):
        jax.jvp(lambda t: conv.apply(variables, t, train=False), (x,), (x,))


def test_conv_impl_overrides_the_context():
    conv = SNConv(4, conv_impl="xla")
    x = jnp.ones((1, 8, 8, 3))
    variables = conv.init(jax.random.key(0), x, train=False)
    with models.weight_grad("einsum"):  # the trainer's context; the field wins
        jax.jvp(lambda t: conv.apply(variables, t, train=False), (x,), (x,))
    with pytest.raises(ValueError, match="conv_impl"):
        SNConv(4, conv_impl="fft").init(jax.random.key(0), x, train=False)
