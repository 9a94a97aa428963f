"""The training progress lines (bbg_jax.progress): summaries, evaluation lines, step rate."""

from __future__ import annotations

import io

from bbg_jax import progress


class _Writer:
    def __init__(self):
        self.scalars = []

    def write_scalars(self, step, scalars):
        self.scalars.append((step, scalars))


class _Clock:
    def __init__(self, monkeypatch):
        self.now = 1000.0
        monkeypatch.setattr(progress.time, "monotonic", lambda: self.now)


def test_summary_names_the_losses_and_times_steps_after_the_first(monkeypatch):
    clock = _Clock(monkeypatch)
    out = io.StringIO()
    p = progress.Progress(total=10, start=0, stream=out)
    p.update(1)  # the first step (compilation) starts the clock
    clock.now += 8.0
    p.update(5)  # 4 steps in 8 s
    p.log(5, {"d_loss": 1.5, "g_loss": -0.25, "e_loss": 0.125, "online_probe_top1_train": 0.375,
              "grad_norm_D": 3.0})
    assert out.getvalue().splitlines()[-1] == (
        "step 5/10  D 1.500  G -0.250  E 0.125  online probe 37.5%  2.00 s/step  ETA 0:00:10")


def test_a_pipe_gets_summaries_not_a_redrawn_bar(monkeypatch):
    clock = _Clock(monkeypatch)
    out = io.StringIO()
    p = progress.Progress(total=100, start=0, stream=out, quiet_secs=300)
    for step in range(1, 101):
        clock.now += 1.0
        p.update(step)
        if step % 50 == 0:
            p.log(step, {"d_loss": 1.0})
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # One bare progress line after the first step, then only the two summaries.
    assert lines[0].startswith("step 1/100 [")
    assert [line.split()[1] for line in lines[1:]] == ["50/100", "100/100"]


def test_step_rate_goes_to_tensorboard(monkeypatch):
    clock = _Clock(monkeypatch)
    writer = _Writer()
    p = progress.Progress(total=100, start=0, writer=writer, stream=io.StringIO(), rate_secs=30)
    for step in range(1, 101):
        clock.now += 0.5
        p.update(step)
    assert writer.scalars, "no steps_per_sec written"
    for _, scalars in writer.scalars:
        assert scalars == {"steps_per_sec": 2.0}


def test_evaluation_summary_shows_fid_is_test_probes_and_the_coupling_only():
    line = progress.evaluation_summary(250, {
        "fid_500_ema_standing_eval": 156.84, "is_500_ema_standing": 3.2,
        "is_500_ema_standing_std": 0.1, "probe_top1_bn_crelu_test": 0.7412,
        "probe_top1_bn_crelu_trainval": 0.75, "probe_l2_bn_crelu": 1e-4,
        "latent_recovery_corr_raw": 0.1234, "latent_recovery_corr_ema": 0.2,
        "recon_agreement_pixel_raw": 0.351, "recon_agreement_probe_raw": 0.4}, 95.4)
    assert line == ("eval at step 250 (95 s): fid_500_ema_standing_eval 156.84  "
                    "is_500_ema_standing 3.20  latent_recovery_corr_raw 0.123  "
                    "probe_top1_bn_crelu_test 74.1%  recon_agreement_pixel_raw 0.351")
    assert progress.evaluation_summary(3, {}, 2.0) == "eval at step 3 (2 s): sheets written"
