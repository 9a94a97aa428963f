"""docs/paper_configs.md's compile table is rendered from the compile check's JSON reports, not
typed; the README's headline rows are rows of it."""

import dataclasses
import json
import os
from pathlib import Path

from bbg_jax import compile_check

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = str(ROOT / "experiments")


def _report(config: str) -> compile_check.Report:
    gib = compile_check.GIB
    return compile_check.Report(
        config=config, target="v5p:2x4x4", chip="v5p", num_devices=32, per_device_batch=64,
        argument_bytes=4 * gib, output_bytes=0, alias_bytes=0, temp_bytes=40 * gib,
        code_bytes=gib // 2, total_bytes=int(44.5 * gib), hbm_bytes=95 * gib, fits=True,
        compiled_flops_step=1.1e15, analytic_flops_step=1.2e15, step_s_at_peak=0.075,
        utilisation=0.4, step_s_at_utilisation=0.1875, num_steps=500_000,
        hours_at_utilisation=26.04, compile_s=1000.0, attention_impl="einsum")


def test_every_paper_configuration_has_a_row_and_its_config_exists():
    rows = compile_check.paper_rows(EXPERIMENTS)
    configs = [c for c, _ in rows]
    assert len(set(configs)) == len(configs) == 5 + 18  # 5 files + Table 1 less its base row
    for config, topology in rows:
        assert os.path.exists(config.split(":")[0]), config
        assert topology.startswith("v5p:")
        assert compile_check.row_filename(config, topology).endswith(".json")


def test_table_renders_reports_and_marks_missing_rows(tmp_path):
    config = f"{EXPERIMENTS}/table1.py:revnet"
    name = compile_check.row_filename(config, "v5p:2x4x4")
    assert name == "table1.revnet.v5p_2x4x4.json"
    (tmp_path / name).write_text(json.dumps(dataclasses.asdict(_report(config))))
    table = compile_check.render_table(str(tmp_path), EXPERIMENTS).splitlines()
    assert table[:2] == compile_check.TABLE_HEADER.splitlines()
    [row] = [r for r in table if "table1.py:revnet`" in r]
    assert row == (f"| `{config}` | v5p:2x4x4 (32 x v5p) | 44.5 / 95 GiB | 1.100 / 1.200 "
                   "| 0.075 / 0.188 | 26 | not planned |")
    assert sum("not compiled yet" in r for r in table) == len(table) - 3
    planned = dataclasses.replace(_report(config), eval_host_ram_bytes=47.2e9,
                                  eval_wall_share=0.0437)
    assert planned.table_row().endswith("| 26 | 47 GB / 4.4% |")
    # A report compiled with the other attention implementation (or written before reports
    # named it, when "dot_product" was the default) says so in its row.
    older = {k: v for k, v in dataclasses.asdict(_report(config)).items()
             if k != "attention_impl"}
    assert compile_check.Report(**older).table_row().startswith(
        f"| `{config}` (dot_product attention) | v5p:2x4x4")


def test_docs_table_is_the_rendered_one(monkeypatch):
    monkeypatch.chdir(ROOT)  # the reports name their configs relative to the repository root
    table = compile_check.render_table("docs/compile_table")
    assert table in (ROOT / "docs/paper_configs.md").read_text(), (
        "docs/paper_configs.md's compile table differs from `launch/compile_table.sh`'s output; "
        "paste it.")


def test_readme_headline_rows_are_rows_of_the_rendered_table(monkeypatch):
    monkeypatch.chdir(ROOT)
    table = compile_check.render_table("docs/compile_table").splitlines()
    readme = (ROOT / "README.md").read_text().splitlines()
    header = [line for line in readme if line.startswith("| config | target |")]
    rows = [line for line in readme if line.startswith("| `experiments/")]
    assert header == [table[0]] and rows, "README has no compile-table headline rows"
    for row in rows:
        assert row in table, f"README's headline row is not docs/paper_configs.md's: {row}"


def test_every_paper_configuration_has_a_report_that_fits_its_target(monkeypatch):
    """The committed reports (launch/compile_table.sh writes them; nothing compiles here)."""
    monkeypatch.chdir(ROOT)
    for config, topology in compile_check.paper_rows():
        path = ROOT / "docs/compile_table" / compile_check.row_filename(config, topology)
        assert path.exists(), f"no report for {config} on {topology}: launch/compile_table.sh"
        report = json.loads(path.read_text())
        assert (report["config"], report["target"]) == (config, topology)
        assert report["fits"] and report["total_bytes"] <= report["hbm_bytes"], config
        assert report["num_devices"] * report["per_device_batch"] == 2048, config


def test_xla_out_of_memory_refusal_is_a_clear_does_not_fit(monkeypatch, capsys):
    """XLA's TPU compiler refuses a step whose temporaries exceed HBM; the check says so."""
    def refuse(args):
        raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
                           "required for HLO temporaries (136.45G) exceeds available HBM.")

    monkeypatch.setattr(compile_check, "_set_platform", lambda args: None)
    monkeypatch.setattr(compile_check, "check", refuse)
    rc = compile_check.main(["--config", "experiments/table1.py:high_res_g",
                             "--topology", "v5p:2x4x4"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "DOES NOT FIT" in err and "136.45G" in err and "larger topology" in err


def test_command_line_overrides_and_errors(monkeypatch, capsys):
    """Config overrides are training's --config.<field>=<value>; a bad command line exits 1 (2
    means "does not fit")."""
    monkeypatch.chdir(ROOT)
    args = compile_check.parse(["compile_check", "--config", "experiments/smoke.py",
                                "--devices", "2", "--chip", "h100", "--hbm-gib", "0.5",
                                "--config.data.batch_size=8"])
    assert (args.config_spec, args.devices, args.chip, args.hbm_gib) == (
        "experiments/smoke.py", 2, "h100", 0.5)
    assert args.config.data.batch_size == 8
    assert args.config.train.conv_weight_grad == "xla"  # the check models an accelerator
    args = compile_check.parse(["compile_check", "--config=experiments/table1.py:revnet",
                                "--topology=v5p:2x4x4", "--config.train.conv_weight_grad=auto"])
    assert (args.config_spec, args.chip) == ("experiments/table1.py:revnet", "v5p")
    assert args.config.train.conv_weight_grad == "auto"  # the command line wins

    monkeypatch.setattr(compile_check, "_set_platform", lambda args: None)
    monkeypatch.setattr(compile_check, "check", lambda args: 1 / 0)  # never reached
    for argv in (["--config", "experiments/smoke.py", "--devices", "2"],  # no --chip
                 ["--config", "experiments/smoke.py", "--devices", "2", "--topology", "v4:2x2"],
                 ["--config", "experiments/smoke.py", "--topology", "v5p:2x4x4",
                  "--set", "data.batch_size=8"],  # the old override syntax
                 ["--config", "experiments/smoke.py", "--topology", "v5p:2x4x4",
                  "--config.data.batch_size=x"],
                 ["--config", "experiments/missing.py", "--topology", "v5p:2x4x4"]):
        assert compile_check.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("bbg_jax.compile_check: ") and err.count("\n") == 1, err
