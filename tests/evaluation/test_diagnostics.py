"""The coupling diagnostics' definitions on cases with known answers (the evaluator end to end:
tests/evaluation/test_report_numbers.py)."""

import numpy as np
import pytest

from bbg_jax.evaluation import diagnostics


def test_latent_recovery_of_an_exact_an_affine_and_an_unrelated_encoder():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 8))
    exact = diagnostics.latent_recovery(z, z)
    assert exact == {"corr": pytest.approx(1.0), "rel_error": pytest.approx(0.0)}
    # A per-dimension affine map keeps the correlation; its error is |2z + 1 - z| / |z|.
    affine = diagnostics.latent_recovery(z, 2 * z + 1)
    assert affine["corr"] == pytest.approx(1.0)
    assert affine["rel_error"] == pytest.approx(
        np.mean(np.linalg.norm(z + 1, axis=1) / np.linalg.norm(z, axis=1)))
    # Independent codes: correlation within a few standard errors (1/sqrt(N per dim)) of 0.
    unrelated = diagnostics.latent_recovery(z, rng.normal(size=z.shape))
    assert abs(unrelated["corr"]) < 3 / np.sqrt(8 * 4000)
    # The posterior mean at the prior mean: nothing recovered, error exactly 1.
    assert diagnostics.latent_recovery(z, np.zeros_like(z)) == {"corr": 0.0, "rel_error": 1.0}
    # Half the dimensions recovered, half constant: mean correlation 1/2.
    half = z.copy()
    half[:, 4:] = 3.0
    assert diagnostics.latent_recovery(z, half)["corr"] == pytest.approx(0.5)
    # A sign flip is a perfect (negative) linear relation.
    assert diagnostics.latent_recovery(z, -z)["corr"] == pytest.approx(-1.0)


def test_class_agreement_and_score_gap_by_hand():
    pred_x = np.array([0, 1, 2, 3])
    pred_r = np.array([0, 1, 0, 0])
    label = np.array([0, 2, 2, 0])
    assert diagnostics.class_agreement(pred_x, pred_r, label) == {"agreement": 0.5,
                                                                  "accuracy": 0.5}
    enc = {"score_xz": np.array([1.0, 3.0]), "score_x": np.array([0.0, 0.0])}
    gen = {"score_xz": np.array([-1.0, -1.0, 0.5]), "score_x": np.array([0.5, 1.5, 1.0])}
    assert diagnostics.score_gap(enc, gen) == {"xz": 2.5, "x": -1.0}


def test_format_lines_show_the_change_between_evaluations():
    first = {"step": 250, "latent_recovery_corr_raw": 0.01, "encoder_z_stdev_mean": 0.7,
             "score_gap_xz": 0.0}
    last = {"step": 500, "latent_recovery_corr_raw": 0.25, "latent_recovery_corr_ema": 0.2,
            "encoder_z_stdev_mean": 0.5, "score_gap_xz": 0.4,
            "recon_agreement_pixel_raw": 0.41, "recon_agreement_pixel_ema": 0.3,
            "recon_agreement_probe_raw": 0.5}
    lines = diagnostics.format_lines(first, last, 0.1)
    assert lines[0] == ("  latent recovery corr (raw G): step 250 0.010 -> step 500 0.250; "
                        "EMA G: 0.200")
    assert "  reconstruction class agreement, pixel judge: raw G 0.410, ema G 0.300 " \
           "(chance 0.10)" in lines
    assert "  reconstruction class agreement, probe judge: raw G 0.500 (chance 0.10)" in lines
    assert not any("per z chunk" in line for line in lines)


def test_format_lines_show_each_z_chunk_when_measured():
    first = {"step": 250, "latent_recovery_corr_raw": 0.01}
    last = {"step": 500, "latent_recovery_corr_raw": 0.25, "encoder_z_stdev_mean": 0.5,
            "score_gap_xz": 0.4,
            **{f"z_chunk_effect_{i}_raw": v for i, v in enumerate((0.4, 0.07, 0.0))},
            **{f"latent_recovery_corr_chunk_{i}_raw": v for i, v in enumerate((0.5, 0.2, 0.0))}}
    lines = diagnostics.format_lines(first, last, 0.1)
    assert lines[1] == ("  per z chunk 0 / 1 / 2 at step 500: mean |dx| when redrawn "
                        "0.400 / 0.070 / 0.000; latent recovery 0.500 / 0.200 / 0.000")
