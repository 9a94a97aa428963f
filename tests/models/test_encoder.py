"""Tests of the BigBiGAN encoder (trunks, head, reversible unit).

Forward passes run eagerly on tiny configurations (32x32 inputs, narrow head) and all share one
input shape, so that the per-op compilations are reused. Their variables come from an abstract
``init`` filled with fixed random values, because a real ``init`` of ResNet-50 costs ~20 s of
per-op compilation on a CPU; real initialisation is covered by a slow test.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.models import layers
from bbg_jax.models.encoder import VALID_TRUNKS, Encoder
from bbg_jax.models.revnet import ReversibleUnit

KEYS = {"avepool_feat", "bn_crelu_feat", "z_mean", "z_stdev", "z_sample"}
Z_DIM = 8
MLP_WIDTH = 64
BATCH = 4


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_variables(model: Encoder, shape=(1, 256, 256, 3)):
    key = jax.random.key(0)
    return jax.eval_shape(
        lambda: model.init({"params": key, "noise": key}, jnp.zeros(shape), train=False)
    )


def filled_variables(model: Encoder, shape, seed: int = 0):
    """Variables of ``model`` with He-scaled random kernels and default BN state."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            conv = leaf.ndim == 4
            fan = leaf.shape[-1] * int(np.prod(leaf.shape[:-2])) if conv else leaf.shape[0]
            value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree.map_with_path(fill, abstract_variables(model, shape))


def images(shape, seed: int = 1):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def tiny(trunk: str, **kw) -> Encoder:
    return Encoder(trunk=trunk, z_dim=Z_DIM, mlp_width=MLP_WIDTH, **kw)


X_SHAPE = (BATCH, 32, 32, 3)


@pytest.fixture(scope="module", params=["resnet50", "revnet50"])
def tiny_setup(request):
    model = tiny(request.param)
    variables = filled_variables(model, X_SHAPE)
    return model, variables, images(X_SHAPE)


# ---------------------------------------------------------------- parameter counts (abstract)

@pytest.mark.parametrize(
    "trunk, width, expected",
    [
        ("resnet50", 1, 23_500_352),
        ("resnet50", 2, 93_891_712),
        ("resnet101", 1, 42_492_480),
        ("resnet152", 1, 58_136_128),
        ("revnet50", 1, 5_408_640),
        ("revnet50", 4, 85_765_632),
    ],
)
def test_trunk_param_count(trunk, width, expected):
    variables = abstract_variables(Encoder(trunk=trunk, width=width))
    assert n_params(variables["params"]["trunk"]) == expected
    # BN running statistics are state, not parameters, and E has no spectral norm.
    assert set(variables) == {"params", "batch_stats"}
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_head_param_count():
    params = abstract_variables(Encoder())["params"]
    head = {k: v for k, v in params.items() if k != "trunk"}
    assert n_params(head) == 59_719_920
    assert set(head) == {"head_mlp", "head_out"}  # feat_bn is parameter-free


def test_deterministic_head_outputs_only_mean():
    params = abstract_variables(Encoder(stochastic=False, z_dim=120))["params"]
    assert params["head_out"]["kernel"].shape == (4096, 120)


def test_single_channel_input_and_other_resolutions():
    model = tiny("resnet50")
    for shape in [(2, 64, 32, 1), (2, 128, 128, 3)]:
        variables = abstract_variables(model, shape)
        assert variables["params"]["trunk"]["root_conv"]["kernel"].shape == (7, 7, shape[-1], 64)
        out = jax.eval_shape(
            lambda v, s=shape: model.apply(v, jnp.zeros(s), train=False, noise=jnp.zeros((2, 8))),
            variables,
        )
        assert out["avepool_feat"].shape == (2, 2048)
        assert out["z_sample"].shape == (2, Z_DIM)


@pytest.mark.parametrize("trunk", ["resnet50", "revnet50"])
def test_small_root_keeps_resolution_for_small_images(trunk):
    """The "small" root (3x3/1 conv, no pool) downsamples by 8 in all: a 32 px image leaves a
    4x4 map for the last stage, where the ImageNet root leaves 1x1. Only the root kernel's
    shape (and so the parameter count) differs between the two roots."""
    shape = (2, 32, 32, 1)
    small, published = tiny(trunk, root="small"), tiny(trunk)
    v_small, v_pub = abstract_variables(small, shape), abstract_variables(published, shape)
    k_small = v_small["params"]["trunk"]["root_conv"]["kernel"].shape
    k_pub = v_pub["params"]["trunk"]["root_conv"]["kernel"].shape
    assert k_small[:2] == (3, 3) and k_pub[:2] == (7, 7) and k_small[2:] == k_pub[2:]
    assert (n_params(v_pub["params"]) - n_params(v_small["params"])
            == (49 - 9) * k_pub[2] * k_pub[3])
    last_stage = {}
    for name, model, v in (("small", small, v_small), ("imagenet", published, v_pub)):
        _, inter = jax.eval_shape(lambda v, m=model: m.apply(
            v, jnp.zeros(shape), train=False, noise=jnp.zeros((2, Z_DIM)),
            capture_intermediates=lambda mdl, _: mdl.name == "final_bn",
            mutable=["intermediates"]), v)
        last_stage[name] = jax.tree.leaves(inter)[0].shape
    assert last_stage["small"][1:3] == (4, 4) and last_stage["imagenet"][1:3] == (1, 1)
    # Inputs need only be multiples of 8.
    jax.eval_shape(lambda v: small.apply(v, jnp.zeros((2, 24, 40, 1)), train=False,
                                         noise=jnp.zeros((2, Z_DIM))), v_small)
    with pytest.raises(ValueError, match="multiples of 8 with the 'small' root"):
        abstract_variables(small, (2, 28, 28, 1))


# ---------------------------------------------------------------- configuration errors

@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"trunk": "resnet18"}, "Encoder.trunk=.resnet18.: allowed .resnet50., .resnet101., "
                                ".resnet152., .revnet50."),
        ({"width": 0}, "width"),
        ({"z_dim": -1}, "z_dim"),
        ({"mlp_depth": 0}, "mlp_depth"),
        ({"bn_momentum": 1.0}, "bn_momentum"),
        ({"root": "cifar"}, "Encoder.root=.cifar.: allowed .imagenet., .small."),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        abstract_variables(Encoder(**kwargs), (1, 32, 32, 3))


@pytest.mark.parametrize("shape", [(1, 48, 32, 3), (32, 32, 3)])
def test_bad_input_shape_raises(shape):
    with pytest.raises(ValueError, match="Encoder"):
        abstract_variables(tiny("resnet50"), shape)


def test_bad_noise_shape_raises():
    model = tiny("revnet50")
    variables = abstract_variables(model, (2, 32, 32, 3))
    with pytest.raises(ValueError, match="noise"):
        jax.eval_shape(
            lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=False,
                                  noise=jnp.zeros((2, Z_DIM + 1))),
            variables,
        )


def test_valid_trunks_listed():
    assert VALID_TRUNKS == ("resnet50", "resnet101", "resnet152", "revnet50")


# ---------------------------------------------------------------- forward passes (tiny)

def test_outputs_keys_shapes_and_reparameterisation(tiny_setup):
    model, variables, x = tiny_setup
    noise = jax.random.normal(jax.random.key(7), (BATCH, Z_DIM))
    out = model.apply(variables, x, train=False, noise=noise)
    assert set(out) == KEYS
    assert out["avepool_feat"].shape == (BATCH, 2048)
    assert out["bn_crelu_feat"].shape == (BATCH, 4096)
    for k in ("z_mean", "z_stdev", "z_sample"):
        assert out[k].shape == (BATCH, Z_DIM)
    for v in out.values():
        assert v.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(v)))
    assert bool(jnp.all(out["z_stdev"] > 0))
    np.testing.assert_allclose(
        out["z_sample"], out["z_mean"] + out["z_stdev"] * noise, rtol=1e-6, atol=1e-6
    )


def test_rng_noise(tiny_setup):
    model, variables, x = tiny_setup
    run = lambda seed: model.apply(  # noqa: E731
        variables, x, train=False, rngs={"noise": jax.random.key(seed)}
    )
    a, b, a2 = run(0), run(1), run(0)
    np.testing.assert_array_equal(a["z_mean"], b["z_mean"])
    np.testing.assert_array_equal(a["z_sample"], a2["z_sample"])
    assert not np.allclose(a["z_sample"], b["z_sample"])
    # eps recovered from the sample is standard normal-ish, not (say) uniform or zero.
    eps = (a["z_sample"] - a["z_mean"]) / a["z_stdev"]
    assert 0.3 < float(jnp.std(eps)) < 3.0


def test_missing_noise_rng_raises(tiny_setup):
    model, variables, x = tiny_setup
    with pytest.raises(Exception, match="noise"):
        jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)


def test_deterministic_mode(tiny_setup):
    model, _, x = tiny_setup
    det = model.clone(stochastic=False)
    variables = filled_variables(det, X_SHAPE)
    out = det.apply(variables, x, train=False)  # no rng needed
    assert set(out) == KEYS
    np.testing.assert_array_equal(out["z_sample"], out["z_mean"])
    np.testing.assert_array_equal(out["z_stdev"], np.zeros((BATCH, Z_DIM)))


def test_train_mode_updates_batch_stats_and_bn_crelu(tiny_setup):
    model, variables, x = tiny_setup
    out, state = model.apply(
        variables, x, train=True, noise=jnp.zeros((BATCH, Z_DIM)), mutable=["batch_stats"]
    )
    assert set(state) == {"batch_stats"}
    old = jax.tree.leaves_with_path(variables["batch_stats"])
    new = jax.tree.leaves(state["batch_stats"])
    assert len(old) == len(new)
    unchanged = [
        jax.tree_util.keystr(p) for (p, a), b in zip(old, new, strict=True) if np.array_equal(a, b)
    ]
    assert not unchanged

    d = out["avepool_feat"].shape[-1]
    crelu = out["bn_crelu_feat"]
    assert crelu.shape == (BATCH, 2 * d)
    assert bool(jnp.all(crelu >= 0))
    # The two halves are the positive and negative parts of a parameter-free batch norm of
    # avepool_feat: at most one is non-zero, and their difference is normalised over the batch.
    assert bool(jnp.all(crelu[:, :d] * crelu[:, d:] == 0))
    h = crelu[:, :d] - crelu[:, d:]
    np.testing.assert_allclose(jnp.mean(h, 0), 0.0, atol=1e-4)
    var = jnp.var(h, 0)
    live = jnp.var(out["avepool_feat"], 0) > 1e-3  # features constant over the batch normalise to 0
    np.testing.assert_allclose(var[live], 1.0, rtol=1e-2)

    # Training mode without a mutable collection raises rather than dropping the statistics;
    # update_state=False asks for exactly that pass (batch statistics, stored state kept).
    with pytest.raises(layers.StateNotMutableError, match="batch_stats"):
        model.apply(variables, x, train=True, noise=jnp.zeros((BATCH, Z_DIM)))
    frozen = model.clone(update_state=False).apply(variables, x, train=True,
                                                   noise=jnp.zeros((BATCH, Z_DIM)))
    np.testing.assert_allclose(frozen["z_mean"], out["z_mean"], rtol=1e-6, atol=1e-6)


def test_eval_mode_needs_no_mutable_collections(tiny_setup):
    model, variables, x = tiny_setup
    out = model.apply(variables, x, train=False, noise=jnp.zeros((BATCH, Z_DIM)))
    assert isinstance(out, dict) and set(out) == KEYS
    # Eval mode reads the running statistics, so each example's output is its own: permuting the
    # batch permutes the outputs.
    perm = jnp.array([2, 0, 3, 1])
    shuffled = model.apply(variables, x[perm], train=False, noise=jnp.zeros((BATCH, Z_DIM)))
    np.testing.assert_allclose(shuffled["z_mean"], out["z_mean"][perm], rtol=1e-4, atol=1e-5)


def test_bfloat16_close_to_float32(tiny_setup):
    model, variables, x = tiny_setup
    noise = jnp.zeros((BATCH, Z_DIM))
    ref = model.apply(variables, x, train=False, noise=noise)
    out = model.clone(dtype=jnp.bfloat16).apply(variables, x, train=False, noise=noise)
    for v in out.values():
        assert v.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(v)))
    rel = float(jnp.max(jnp.abs(out["z_mean"] - ref["z_mean"])) / jnp.max(jnp.abs(ref["z_mean"])))
    print(f"{model.trunk}: bf16 vs f32 max relative z_mean difference {rel:.4f}")
    assert rel < 0.05


# ---------------------------------------------------------------- reversible unit

@pytest.mark.parametrize("train", [False, True])
def test_reversible_unit_inverse(train):
    # update_state=False: the training-mode passes use batch statistics and store none.
    unit = ReversibleUnit(channels=32, update_state=False)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 32))
    # Random kernels and non-trivial BN state, so that F is far from an identity-normalised map.
    rng = np.random.default_rng(5)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.normal(0, 0.3, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    shapes = jax.eval_shape(lambda: unit.init(jax.random.key(4), x, train=False))
    variables = jax.tree.map_with_path(fill, shapes)
    y = unit.apply(variables, x, train=train)
    assert y.shape == x.shape
    # The output carries x2 unchanged in its first half and a changed x1 in its second.
    np.testing.assert_array_equal(y[..., :16], x[..., 16:])
    assert not np.allclose(y[..., 16:], x[..., :16], atol=1e-2)
    x_rec = unit.apply(variables, y, train=train, method=ReversibleUnit.inverse)
    np.testing.assert_allclose(x_rec, x, rtol=1e-5, atol=1e-5)
    x_rec2 = unit.apply(variables, y, train=train, method="inverse")
    np.testing.assert_array_equal(x_rec, x_rec2)


# ---------------------------------------------------------------- slow: real init, full size

@pytest.mark.slow
@pytest.mark.parametrize("trunk", ["resnet50", "revnet50"])
def test_real_init_and_gradients(trunk):
    model = tiny(trunk)
    x = images(X_SHAPE)
    key = jax.random.key(0)
    variables = model.init({"params": key, "noise": key}, x, train=False)
    assert set(variables) == {"params", "batch_stats"}

    def loss(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
            rngs={"noise": key}, mutable=["batch_stats"],
        )
        return jnp.mean(out["z_sample"] ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["trunk"]["root_conv"]["kernel"]).max()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("trunk", ["resnet50", "revnet50"])
def test_full_size_forward(trunk):
    model = Encoder(trunk=trunk)
    shape = (2, 256, 256, 3)
    variables = filled_variables(model, shape)
    start = time.perf_counter()
    out = jax.jit(
        lambda v, x: model.apply(v, x, train=True, rngs={"noise": jax.random.key(0)},
                                 mutable=["batch_stats"])
    )(variables, images(shape))[0]
    jax.block_until_ready(out)
    print(f"{trunk} full-size forward (compile + run): {time.perf_counter() - start:.1f} s")
    assert out["avepool_feat"].shape == (2, 2048)
    assert out["bn_crelu_feat"].shape == (2, 4096)
    assert out["z_sample"].shape == (2, 120)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
