"""Every paper configuration builds (abstractly) with the intended parameter counts, and the
compile check reports memory, FLOPs and time for a config (slow: it compiles)."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bbg_jax import compile_check
from bbg_jax.configs import load_experiment
from bbg_jax.models import abstract_variables, count_params

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import table1  # noqa: E402

BASE = {"G": 70_306_116, "D": 152_789_284, "E": 83_220_272}
# Counts of the rows whose networks differ from base (regression values; each is explained).
EXPECTED = {
    # Only mu is predicted: the head's last layer loses the 120 s outputs.
    "deterministic_e": {**BASE, "E": BASE["E"] - (4096 * 120 + 120)},
    "small_g": {**BASE, "G": 8_415_428},  # ch 32: convolutions shrink (32/96)^2
    "no_e": {"G": BASE["G"], "D": 86_444_833 + 1537},  # F + the s_x head only
    "low_res_g": {"G": 70_249_476, "D": 152_559_172, "E": BASE["E"]},  # one block fewer
    "high_res_g": {"G": 81_969_732, "D": 163_483_172, "E": 83_384_152},  # + block, z 140
    "resnet101": {**BASE, "E": 42_512_064 + 59_700_336},  # ResNet-101 v2 trunk + head
    "resnet_x2": {**BASE, "E": 162_000_240},
    "revnet": {**BASE, "E": 65_128_560},
    "revnet_x2": {**BASE, "E": 89_614_320},
    "revnet_x4": {**BASE, "E": 170_651_376},
    "revnet_x4_e_lr": {**BASE, "E": 170_651_376},
}
SAME_AS_BASE = {"base", "uniform_prior", "x_unary_only", "z_unary_only", "no_unary",
                "high_res_e", "resnet_e_lr"}


def counts(spec):
    variables = abstract_variables(load_experiment(str(ROOT / "experiments" / spec)))
    return {name: count_params(v) for name, v in variables.items()}


def test_every_variant_is_listed():
    assert set(table1.VARIANTS) == set(EXPECTED) | SAME_AS_BASE | {"small_e"}
    with pytest.raises(ValueError, match="Unknown Table 1 variant"):
        table1.get_config("no_such_row")


@pytest.mark.parametrize("variant", sorted(set(EXPECTED) | SAME_AS_BASE))
def test_table1_variant_builds(variant):
    assert counts(f"table1.py:{variant}") == EXPECTED.get(variant, BASE)


def test_small_e_is_a_half_width_resnet50():
    # ResNet-50 v2 at width 0.5 (root 32 channels, stages 128..1024): trunk 5,888,800; head on
    # the 1024-d feature: 1024*4096 + 4096 + 3*(4096^2 + 4096) + 4096*240 + 240 = 55,525,616.
    got = counts("table1.py:small_e")
    assert got["G"] == BASE["G"] and got["D"] == BASE["D"]
    assert got["E"] == 5_888_800 + 55_525_616


def test_variants_change_what_they_say():
    c = {v: table1.get_config(v) for v in table1.VARIANTS}
    assert c["high_res_e"].data.resolution_e == 256 and c["high_res_e"].data.resolution_d == 128
    assert c["low_res_g"].data.resolution_e == 128 and c["low_res_g"].data.resolution_d == 64
    assert c["uniform_prior"].train.prior == "uniform"
    assert c["resnet_e_lr"].train.e_lr_multiplier == 10.0
    assert c["no_unary"].train.loss_terms == "joint_only"


@pytest.mark.parametrize("name,e_params", [("final_resnet50", BASE["E"]),
                                           ("final_revnet50x4", 170_651_376)])
def test_final_models(name, e_params):
    config = load_experiment(str(ROOT / "experiments" / f"{name}.py"))
    assert config.model.encoder.resolution == config.data.resolution_e == 256
    assert config.data.resolution_d == 128
    assert config.train.e_lr_multiplier == 10.0 and config.train.num_steps == 1_000_000
    assert counts(f"{name}.py") == {**BASE, "E": e_params}


def test_unconditional_biggan():
    assert counts("biggan_uncond_imagenet128.py") == {"G": BASE["G"], "D": 86_446_370}


# The paper configurations' own files (compile_check's rows less table1.py's variants).
PAPER_ROWS = {Path(config).name: topology for config, topology in compile_check.paper_rows()
              if ":" not in config}
PAPER_FILES = sorted(PAPER_ROWS)


@pytest.mark.parametrize("name", PAPER_FILES + ["table1.py"])
def test_paper_docstrings_say_command_target_time_and_paper(name):
    doc = ast.get_docstring(ast.parse((ROOT / "experiments" / name).read_text()))
    for field in ("Command:", "Hardware:", "Time:", "Expected:", "Paper:"):
        assert re.search(rf"^{field}", doc, re.M), f"{name}: no {field} line"
    assert "bbg_jax.main --config=experiments/" + name in doc


@pytest.mark.parametrize("name", PAPER_FILES)
def test_docstring_flops_are_the_compile_tables(name):
    """The docstring's analytic GFLOP per image is the one compile_check recorded (docs/)."""
    doc = ast.get_docstring(ast.parse((ROOT / "experiments" / name).read_text()))
    row = compile_check.row_filename(name, PAPER_ROWS[name])
    report = json.loads((ROOT / "docs" / "compile_table" / row).read_text())
    batch = report["num_devices"] * report["per_device_batch"]
    per_image = report["analytic_flops_step"] / batch / 1e9
    stated = float(re.search(r"analytic\s+(\d+) GFLOP per image", doc).group(1))
    assert stated == pytest.approx(per_image, abs=0.6)


@pytest.mark.slow  # ~10 s: traces the three full-size networks
def test_analytic_flops_match_spec():
    from bbg_jax.flops import network_forward_flops

    f = network_forward_flops(table1.get_config("high_res_e"))
    # Forward GFLOP per image (the paper's scale): G 42.2, D 21.7 (+ H and J here),
    # ResNet-50 at 256 10.7.
    assert f["G"] / 1e9 == pytest.approx(42.2, rel=0.02)
    assert f["D"] / 1e9 == pytest.approx(21.7, rel=0.03)
    assert f["E"] / 1e9 == pytest.approx(10.7, rel=0.02)


@pytest.mark.slow  # a CPU compile of the smoke step on 2 simulated devices (~1 min)
def test_compile_check_reports_and_fails_clearly(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bbg_jax.compile_check", "--config", "experiments/smoke.py",
         "--devices", "2", "--chip", "h100", "--hbm-gib", "0.001", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr[-3000:]  # 1 MiB of "HBM" cannot hold the step
    assert "DOES NOT FIT" in proc.stderr
    assert "temporaries" in proc.stdout and "README row:" in proc.stdout
    report = json.loads(out.read_text())
    assert report["num_devices"] == 2 and not report["fits"]
    assert report["temp_bytes"] > 0 and report["argument_bytes"] > 0
    # XLA counts elementwise work too; on the tiny smoke nets that is a large share.
    assert 0.5 < report["compiled_flops_step"] / report["analytic_flops_step"] < 5


def test_fashion_mnist_main_job_config():
    from bbg_jax import loop
    from bbg_jax.models import build_models

    config = load_experiment(str(ROOT / "experiments" / "fashion_mnist.py"))
    loop.check_config(config)  # data, model and eval sections agree
    # The same BigBiGAN as the ImageNet configs, narrowed: regression counts (G 4·16 channels,
    # z = 8; D 273,539 + the joint projection's 4·4·32 × 256).
    assert counts("fashion_mnist.py") == {"G": 348_545, "D": 404_611, "E": 704_128}
    # The latent G uses whole (docs/fashion_mnist.md, "Cause 3").
    assert config.model.z_dim == 8 and not config.model.generator.hierarchical_z
    assert set(build_models(config)) == {"G", "D", "E"}
    assert config.model.encoder.stochastic and config.train.loss_terms == "all"
    assert config.data.dataset == "fashion_mnist" and config.data.train_val_size == 10_000
    assert config.data.eval_split == "test" and config.model.image_channels == 1
    assert config.train.online_probe_classes == 10
    assert set(config.eval.evaluators) == {"samples", "fid", "probe", "diagnostics"}
    assert config.eval.fid.num_samples <= 1000  # Inception speed on a CPU (README)
    # The report's first -> last: probe and diagnostics at the middle and the end; the sheets and
    # FID (minutes of Inception on a CPU) once, at the end; a checkpoint at each evaluation.
    t, ev = config.train, config.eval
    assert 2 * ev.probe.every_steps == 2 * ev.diagnostics.every_steps == t.num_steps
    assert ev.fid.every_steps == ev.samples.every_steps == t.num_steps
    assert t.num_steps % t.checkpoint_every == 0 and t.ema_start_step < ev.probe.every_steps
