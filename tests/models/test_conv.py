"""The einsum weight gradient equals XLA's for every convolution shape the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.models import conv


def _grads(impl, x, w, strides, padding):
    def loss(x, w):
        with conv.weight_grad(impl):
            y = conv.conv2d(x, w, strides, padding)
        return jnp.sum(jnp.sin(y))  # a non-trivial cotangent

    return jax.grad(loss, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("k,stride,padding", [
    (3, 1, "SAME"), (1, 1, "SAME"), (3, 2, ((1, 1), (1, 1))), (7, 2, ((3, 3), (3, 3))),
    (1, 2, ((0, 0), (0, 0))), (3, 2, "SAME"),
])
def test_weight_gradient_matches_xla(k, stride, padding):
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(4, 10, 10, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 5, 6)) / k, jnp.float32)
    ref_dx, ref_dw = _grads("xla", x, w, (stride, stride), padding)
    dx, dw = _grads("einsum", x, w, (stride, stride), padding)
    np.testing.assert_array_equal(dx, ref_dx)  # the input gradient is XLA's in both modes
    rel = float(jnp.linalg.norm(dw - ref_dw) / jnp.linalg.norm(ref_dw))
    assert rel < 1e-5, rel


def test_forward_is_xla_in_both_modes():
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.full((3, 3, 3, 4), 0.1)
    with conv.weight_grad("einsum"):
        a = conv.conv2d(x, w)
    np.testing.assert_array_equal(a, conv.conv2d(x, w))


def test_auto_picks_by_platform_and_names_bad_values():
    assert conv.resolve("auto", "cpu") == "einsum"
    assert conv.resolve("auto", "gpu") == "xla"
    assert conv.resolve("auto", "tpu") == "xla"
    with pytest.raises(ValueError, match="conv_weight_grad"):
        conv.resolve("fast", "cpu")


def test_flax_conv_hook_falls_back_for_dilated_convolutions():
    x = jnp.ones((1, 9, 9, 2))
    w = jnp.ones((3, 3, 2, 2))
    out = conv.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(out, ref)
