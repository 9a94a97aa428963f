"""The objective against hand-computed values, for the full loss and every ablation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.losses import TERMS, bigbigan_losses

ENC = {"score_xz": jnp.array([2.0, 0.5]), "score_x": jnp.array([-1.0, 0.0]),
       "score_z": jnp.array([1.5, 3.0])}
GEN = {"score_xz": jnp.array([-2.0, 0.5]), "score_x": jnp.array([1.0, -0.5]),
       "score_z": jnp.array([0.0, -3.0])}


def test_full_objective_by_hand():
    out = bigbigan_losses(ENC, GEN, "all")
    # relu(1 - enc): xz [0, .5], x [2, 1], z [0, 0] -> sum 3.5 over 6
    # relu(1 + gen): xz [0, 1.5], x [2, .5], z [1, 0] -> sum 5.0 over 6
    assert out["d_loss"] == pytest.approx(3.5 / 6 + 5.0 / 6)
    assert out["d_loss_enc"] == pytest.approx(3.5 / 6)
    assert out["e_loss"] == pytest.approx((2 + 0.5 - 1 + 0 + 1.5 + 3) / 6)
    assert out["g_loss"] == pytest.approx(-(-2 + 0.5 + 1 - 0.5 + 0 - 3) / 6)
    assert out["mean_score_z_enc"] == pytest.approx(2.25)
    # The paper's form: the sum over the three terms of per-term losses, divided by 3.
    per_term = [np.mean(np.maximum(0, 1 - ENC[t])) + np.mean(np.maximum(0, 1 + GEN[t]))
                for t in ENC]
    assert out["d_loss"] == pytest.approx(sum(per_term) / 3)


@pytest.mark.parametrize("terms,d_enc,d_gen,e,g", [
    ("no_z_unary", 3.5 / 4, 4.0 / 4, 1.5 / 4, 1.0 / 4),
    ("no_x_unary", 0.5 / 4, 2.5 / 4, 7.0 / 4, 4.5 / 4),
    ("joint_only", 0.5 / 2, 1.5 / 2, 2.5 / 2, 1.5 / 2),
])
def test_ablations_by_hand(terms, d_enc, d_gen, e, g):
    out = bigbigan_losses(ENC, GEN, terms)
    assert out["d_loss"] == pytest.approx(d_enc + d_gen)
    assert out["e_loss"] == pytest.approx(e)
    assert out["g_loss"] == pytest.approx(g)
    assert set(k for k in out if k.startswith("mean_")) == {
        f"mean_{t}_{s}" for t in TERMS[terms] for s in ("enc", "gen")}


def test_plain_gan_hinge_has_no_encoder_loss():
    real, fake = {"score_x": jnp.array([0.5, 2.0])}, {"score_x": jnp.array([-0.5, 1.0])}
    out = bigbigan_losses(real, fake, "x_only")
    assert out["d_loss"] == pytest.approx((0.5 + 0) / 2 + (0.5 + 2.0) / 2)
    assert out["g_loss"] == pytest.approx(-0.25)
    assert "e_loss" not in out


def test_each_term_is_hinged_separately():
    # Summing the scores before the hinge would give relu(1 - 3) = 0 here; separately it is 2/3.
    enc = {"score_xz": jnp.array([3.0]), "score_x": jnp.array([-1.0]), "score_z": jnp.array([1.0])}
    gen = {k: jnp.array([-5.0]) for k in enc}
    assert bigbigan_losses(enc, gen)["d_loss"] == pytest.approx(2.0 / 3)


def test_gradient_routing_through_scores():
    # E's loss depends on encoder-pair scores only; G's on generator-pair scores only.
    g_enc = jax.grad(lambda s: bigbigan_losses(s, GEN)["g_loss"])(ENC)
    g_gen = jax.grad(lambda s: bigbigan_losses(ENC, s)["e_loss"])(GEN)
    assert all(float(jnp.abs(v).sum()) == 0 for v in g_enc.values())
    assert all(float(jnp.abs(v).sum()) == 0 for v in g_gen.values())


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="Unknown loss terms"):
        bigbigan_losses(ENC, GEN, "bogus")
    with pytest.raises(ValueError, match="x_only"):
        bigbigan_losses({"score_x": jnp.ones(2)}, {"score_x": jnp.ones(2)}, "all")
