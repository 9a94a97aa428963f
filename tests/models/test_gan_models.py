"""BigGAN G and the discriminators: reference parameter counts, shapes at every resolution."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.models import count_params
from bbg_jax.models.discriminator import (
    BIGGAN_D_CHANNELS,
    BIGGAN_DEEP_D_CHANNELS,
    BigBiGANDiscriminator,
    DTrunk,
    GANDiscriminator,
)
from bbg_jax.models.generator import DEFAULT_Z_DIM, Generator

KEY = jax.random.key(0)
RESOLUTIONS = (32, 64, 128, 256, 512)


def abstract_init(module, *inputs):
    return jax.eval_shape(lambda: module.init(KEY, *inputs, train=False))


def g_inputs(z_dim, n=2):
    return jnp.zeros((n, z_dim)), jnp.zeros((n,), jnp.int32)


def image(res, n=2, c=3):
    return jnp.zeros((n, res, res, c))


# compare_gan's resnet_biggan / resnet_biggan_deep counts (class-conditional, 1000 classes).
COMPARE_GAN_COUNTS = {
    # resolution: (G, D); 128/256/512 are the numbers documented in compare_gan's source.
    128: (70_433_988, 87_982_370),
    256: (82_097_604, 98_635_298),
    512: (82_468_068, 98_801_378),
}


@pytest.mark.parametrize("res", sorted(COMPARE_GAN_COUNTS))
def test_biggan_parameter_counts_match_reference(res):
    start = time.perf_counter()
    g = Generator(resolution=res, ch=96, z_dim=DEFAULT_Z_DIM[res], conditioning="class")
    d = GANDiscriminator(resolution=res, ch=96, num_classes=1000)
    g_vars = abstract_init(g, *g_inputs(g.z_dim))
    d_vars = abstract_init(d, image(res), jnp.zeros((2,), jnp.int32))
    assert (count_params(g_vars), count_params(d_vars)) == COMPARE_GAN_COUNTS[res]
    # Spectral-norm vectors and BN statistics exist, but as state, not parameters.
    assert set(g_vars) == {"params", "batch_stats", "spectral"}
    assert time.perf_counter() - start < 30  # abstract init: seconds, not memory


def test_biggan_deep_parameter_counts():
    """BigGAN-deep-128 (ch 128, z 128 + 128-d class embedding, compare_gan's layout).

    Paper: G 50.4M, D 34.6M. We get D = 34,590,210 (= 34.6M) and G = 50,244,484, which is 155,516
    (0.31%) below 50.4M. The G count decomposes as: class embedding 128,000; linear 256 → 4·4·2048
    with bias 8,423,424; ten bottleneck blocks with conditional BN (conditioning 256-d, bias-free
    gain/bias maps: 2·256 per BN channel) 41,646,819 incl. attention at 64 (163,841) ... ; output
    BN 256 and conv 3,459. The 155,516 gap is not the BN maps' biases (they would add 41,216) and
    the paper does not itemise its count; compare_gan states it reproduces the paper's FID with this
    layout, so we keep it and record the difference here.
    """
    g = Generator(resolution=128, ch=128, z_dim=128, conditioning="class", deep=True)
    d = GANDiscriminator(resolution=128, ch=128, num_classes=1000, deep=True)
    g_count = count_params(abstract_init(g, *g_inputs(128)))
    d_count = count_params(abstract_init(d, image(128), jnp.zeros((2,), jnp.int32)))
    assert g_count == 50_244_484
    assert d_count == 34_590_210
    assert abs(g_count - 50.4e6) / 50.4e6 < 0.004
    assert abs(d_count - 34.6e6) / 34.6e6 < 0.001


def test_single_label_generator_has_one_embedding():
    g = Generator(resolution=128, conditioning="single")
    params = abstract_init(g, *g_inputs(120))["params"]
    assert params["embed"].shape == (128,)
    # Same as the class-conditional G less the 1000x128 table plus one 128-vector.
    assert count_params(params) == 70_433_988 - 1000 * 128 + 128


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_shapes_at_every_resolution(res, deep):
    z_dim = 128 if deep else DEFAULT_Z_DIM[res]
    g = Generator(resolution=res, ch=96, z_dim=z_dim, deep=deep)
    out = jax.eval_shape(lambda: g.init_with_output(KEY, *g_inputs(z_dim), train=False)[0])
    assert out.shape == (2, res, res, 3)
    d = BigBiGANDiscriminator(resolution=res, ch=96, deep=deep)
    scores = jax.eval_shape(
        lambda: d.init_with_output(KEY, image(res), jnp.zeros((2, 120)), train=False)[0])
    assert {k: v.shape for k, v in scores.items()} == {
        "score_x": (2,), "score_z": (2,), "score_xz": (2,)}
    f = DTrunk(resolution=res, ch=96, deep=deep)
    feat = jax.eval_shape(lambda: f.init_with_output(KEY, image(res), train=False)[0])
    plan = BIGGAN_DEEP_D_CHANNELS if deep else BIGGAN_D_CHANNELS
    assert feat.shape == (2, 96 * plan[res][-1])


def test_attention_positions_follow_the_paper():
    g = abstract_init(Generator(resolution=256, z_dim=140), *g_inputs(140))["params"]
    d = abstract_init(GANDiscriminator(resolution=256), image(256))["params"]
    assert [k for k in g if k.startswith("attention")] == ["attention_128"]
    assert [k for k in d["F"] if k.startswith("attention")] == ["attention_64"]


def test_small_models_run_train_and_eval():
    g = Generator(resolution=32, ch=8, z_dim=16, conditioning="single")
    z = jax.random.normal(KEY, (4, 16))
    g_vars = jax.jit(lambda: g.init(KEY, z, train=False))()
    x, g_state = jax.jit(lambda v: g.apply(v, z, train=True, mutable=["batch_stats", "spectral"])
                         )(g_vars)
    assert x.shape == (4, 32, 32, 3)
    assert float(jnp.max(jnp.abs(x))) <= 1.0
    x_eval = jax.jit(lambda v: g.apply(v, z, train=False))({**g_vars, **g_state})
    assert np.isfinite(np.asarray(x_eval)).all()

    d = BigBiGANDiscriminator(resolution=32, ch=8, mlp_depth=2, mlp_width=16)
    d_vars = jax.jit(lambda: d.init(KEY, x, z, train=False))()
    grads = jax.jit(jax.grad(lambda p: sum(
        jnp.sum(s) for s in d.apply({**d_vars, "params": p}, x, z, train=False).values()
    )))(d_vars["params"])
    assert all(np.isfinite(np.asarray(t)).all() for t in jax.tree.leaves(grads))


def test_projection_discriminator_uses_labels():
    d = GANDiscriminator(resolution=32, ch=8, num_classes=5)
    x = jax.random.normal(KEY, (3, 32, 32, 3))
    variables = d.init(KEY, x, jnp.zeros((3,), jnp.int32), train=False)
    s0 = d.apply(variables, x, jnp.zeros((3,), jnp.int32), train=False)["score_x"]
    s1 = d.apply(variables, x, jnp.ones((3,), jnp.int32), train=False)["score_x"]
    assert not np.allclose(s0, s1)
    with pytest.raises(ValueError, match="needs labels"):
        d.apply(variables, x, None, train=False)


def test_bfloat16_is_close_to_float32():
    """Measured relative L2 difference on this CPU: G 5.9e-3; D score_x 1.2e-2,
    score_xz 1.3e-2, score_z 3.4e-3."""
    g32 = Generator(resolution=32, ch=16, z_dim=16)
    g16 = Generator(resolution=32, ch=16, z_dim=16, dtype=jnp.bfloat16)
    z = jax.random.normal(KEY, (4, 16))
    g_vars = jax.jit(lambda: g32.init(KEY, z, train=False))()
    x32 = jax.jit(lambda v: g32.apply(v, z, train=False))(g_vars)
    x16 = jax.jit(lambda v: g16.apply(v, z, train=False))(g_vars)
    assert x16.dtype == jnp.float32 and np.isfinite(np.asarray(x16)).all()
    rel_g = float(jnp.linalg.norm(x16 - x32) / jnp.linalg.norm(x32))
    assert rel_g < 2e-2

    d32 = BigBiGANDiscriminator(resolution=32, ch=16, mlp_depth=2, mlp_width=32)
    d16 = BigBiGANDiscriminator(resolution=32, ch=16, mlp_depth=2, mlp_width=32,
                                dtype=jnp.bfloat16)
    d_vars = jax.jit(lambda: d32.init(KEY, x32, z, train=False))()
    s32 = jax.jit(lambda v: d32.apply(v, x32, z, train=False))(d_vars)
    s16 = jax.jit(lambda v: d16.apply(v, x32, z, train=False))(d_vars)
    print(f"bf16 vs f32 relative difference: G {rel_g:.2e}")
    for k in s32:
        rel = float(jnp.linalg.norm(s16[k] - s32[k]) / jnp.linalg.norm(s32[k]))
        print(f"bf16 vs f32 relative difference: D {k} {rel:.2e}")
        assert rel < 5e-2, (k, rel)


def test_bad_configuration_errors_name_the_fix():
    with pytest.raises(ValueError, match="z_dim=140"):
        Generator(resolution=256, z_dim=120).init(KEY, jnp.zeros((1, 120)), train=False)
    with pytest.raises(ValueError, match="resolution"):
        Generator(resolution=100).init(KEY, jnp.zeros((1, 120)), train=False)
    with pytest.raises(ValueError, match="conditioning"):
        Generator(conditioning="bogus").init(KEY, jnp.zeros((1, 120)), train=False)
    with pytest.raises(ValueError, match="resize the input"):
        DTrunk(resolution=128).init(KEY, image(64), train=False)
