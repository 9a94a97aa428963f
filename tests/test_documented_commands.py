"""Every command README.md and docs/*.md tell a user to run is run by a test, in a reduced form.

``RUN_BY`` maps each documented program (a script, a launcher or a ``python -m`` module) to the
tests that run it; ``test_every_documented_command_has_a_test`` extracts the commands from the
Markdown (fenced blocks and inline code) and fails, one line per command, for a program that is
not in the table, so a newly documented command cannot go untested. The tests below run the
programs no other test file runs, as subprocesses, on tiny inputs: a two-step smoke workdir
shared by the module, the stored reports in docs/fashion_mnist/, a two-step main job. Each checks
what the program writes or prints, not only its exit status.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from xla_flags import TEST_XLA_FLAGS

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
THIS = "tests/test_documented_commands.py"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Documented program -> the tests that run it ("path::test_name"; checked to exist).
RUN_BY = {
    # The main job and the machine's set-up.
    "scripts/run_fashion_mnist.sh": [f"{THIS}::test_run_fashion_mnist_sh_trains_and_reports"],
    "scripts/setup.sh": [f"{THIS}::test_setup_sh_is_a_quick_silent_no_op_when_set_up",
                         f"{THIS}::test_run_fashion_mnist_sh_trains_and_reports"],
    "scripts/test.sh": [f"{THIS}::test_test_sh_lints_then_runs_pytest"],
    "bbg_jax.main": ["tests/test_loop.py::test_resume_after_sigkill_is_bit_exact",
                     "tests/test_object_store.py::test_eval_mode_and_report_on_the_bucket",
                     "tests/test_bad_configs.py::test_bad_input_exits_with_one_line_and_changes_nothing",
                     f"{THIS}::test_run_fashion_mnist_sh_trains_and_reports"],
    "bbg_jax.evaluation.report": [
        "tests/test_object_store.py::test_eval_mode_and_report_on_the_bucket",
        f"{THIS}::test_run_fashion_mnist_sh_trains_and_reports"],
    # Tools over runs and reports.
    "scripts/compare_runs.py": [f"{THIS}::test_compare_runs_tabulates_window_means"],
    "scripts/seed_table.py": [f"{THIS}::test_seed_table_reproduces_the_docs_rows"],
    "scripts/plot_learning_curve.py": [f"{THIS}::test_plot_learning_curve_table_is_the_docs"],
    "scripts/wall_time_study.py": [f"{THIS}::test_wall_time_study_table_is_the_docs",
                                   f"{THIS}::test_run_fashion_mnist_sh_trains_and_reports",
                                   f"{THIS}::test_wall_time_study_run_trains_evaluates_a_row"],
    "scripts/coupling_check.py": [f"{THIS}::test_coupling_check_prints_latent_recovery"],
    "scripts/kill_soak.py": ["tests/test_kill_soak.py::test_kill_soak_two_runs_resume_bit_exact"],
    # Benchmarks.
    "bbg_jax.benchmark": [f"{THIS}::test_benchmark_prints_the_step_and_its_pieces"],
    "scripts/restart_benchmark.py": [
        f"{THIS}::test_restart_benchmark_times_first_start_and_resume"],
    "scripts/vs_biggan_pytorch.py": [f"{THIS}::test_vs_biggan_pytorch_dry_run_prints_the_protocol"],
    "bbg_jax.data.benchmark": [f"{THIS}::test_data_benchmark_prints_rates_and_cores"],
    "bbg_jax.evaluation.inception.benchmark": [f"{THIS}::test_inception_benchmark_and_fid_sanity"],
    "bbg_jax.evaluation.inception.fid_sanity": [f"{THIS}::test_inception_benchmark_and_fid_sanity"],
    "bbg_jax.evaluation.inception.logits_head": [f"{THIS}::test_logits_head_writes_the_npz"],
    "scripts/make_inception_reference.py": [
        f"{THIS}::test_make_inception_reference_rewrites_the_stored_features"],
    "scripts/device_check.sh": [
        "tests/test_device_check.py::test_device_half_runs_without_tensorflow_ml_collections_clu",
        f"{THIS}::test_device_check_sh_prepares_then_runs"],
    # Compile checks and launchers.
    "bbg_jax.compile_check": [
        "tests/test_experiments.py::test_compile_check_reports_and_fails_clearly"],
    "launch/compile_table.sh": [f"{THIS}::test_compile_table_sh_renders_the_docs_table"],
    "bbg_jax.evaluation.plan": [
        "tests/evaluation/test_plan.py::test_the_released_revnet_plan_fits_a_v5p_host_and_takes_a_small_share",
        "tests/evaluation/test_plan.py::test_bad_command_lines_get_one_line"],
    "bbg_jax.models.summary": [
        "tests/test_configs.py::test_summary_cli_reports_biggan_reference_counts"],
    "launch/local.sh": [
        "tests/test_launch.py::test_local_dry_run_prints_the_command_with_its_defaults"],
    "launch/tpu_pod.sh": [
        "tests/test_launch.py::test_tpu_create_makes_an_on_demand_slice",
        "tests/test_launch.py::test_tpu_setup_ships_the_commit_and_installs_pinned_jax",
        "tests/test_launch.py::test_tpu_run_starts_a_detached_job_on_every_worker"],
    "launch/slurm.sbatch": [
        "tests/test_launch.py::test_slurm_dry_run_prints_srun_and_the_requeue_commands"],
}

# A command: environment assignments, then a program: `bash|sh|sbatch scripts/x.sh`, `launch/x`,
# `python scripts/x.py`, `.venv/bin/python -m bbg_jax.x` ... (group 1: the program).
COMMAND = re.compile(
    r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"(?:(?:bash|sh|sbatch)\s+|(?:\S*/)?python3?\s+(?:-m\s+(?=bbg_jax\.))?)?"
    r"((?:scripts|launch)/[\w.-]+|bbg_jax(?:\.\w+)+)")


def program_of(command: str) -> str | None:
    """The program ``command`` runs, or None when it is no command. A bare module name
    (``bbg_jax.main: train in ...``, quoted terminal output) is none."""
    match = COMMAND.match(command)
    if match is None or (match.start(1) == 0 and match.group(1).startswith("bbg_jax")):
        return None
    return match.group(1)


def documented_commands() -> list[tuple[str, int, str, str]]:
    """(doc file, line, command, program) of every command in README.md and docs/*.md: each line
    of a fenced block (continuation lines joined) and each inline code span (which may wrap)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        rel = str(doc.relative_to(ROOT))
        # Fenced blocks, one command per line; what is left is prose with inline code.
        prose = []
        fenced = False
        pending, pending_line = "", 0
        for n, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                prose.append("")
                continue
            if not fenced:
                prose.append(line)
                continue
            prose.append("")
            command = f"{pending} {line.strip()}".strip() if pending else line.strip()
            start = pending_line or n
            if command.endswith("\\"):
                pending, pending_line = command[:-1].strip(), start
                continue
            pending, pending_line = "", 0
            command = re.sub(r"\s+#.*$", "", command)
            if program_of(command):
                found.append((rel, start, command, program_of(command)))
        joined = "\n".join(prose)
        for span in re.finditer(r"`([^`]+)`", joined):
            command = " ".join(span.group(1).split())
            if program_of(command):
                found.append((rel, joined.count("\n", 0, span.start()) + 1, command,
                              program_of(command)))
    return found


def test_every_documented_command_has_a_test():
    commands = documented_commands()
    assert len(commands) > 50, "the extraction found too few commands: check its patterns"
    missing = [f"{doc}:{line}: `{command}`: no test runs {program}; add it to RUN_BY in {THIS}"
               for doc, line, command, program in commands if program not in RUN_BY]
    assert not missing, "\n".join(missing)
    # Each command's program exists (a renamed script leaves its docs behind).
    for doc, line, command, program in commands:
        where = ROOT / (program if "/" in program else program.replace(".", "/") + ".py")
        assert where.exists(), f"{doc}:{line}: `{command}`: {program} does not exist"


def test_run_by_names_existing_tests_of_documented_programs():
    documented = {program for *_, program in documented_commands()}
    stale = sorted(set(RUN_BY) - documented)
    assert not stale, f"RUN_BY lists programs no doc mentions any more: {stale}"
    for program, tests in RUN_BY.items():
        for test in tests:
            path, name = test.split("::")
            tree = ast.parse((ROOT / path).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"RUN_BY[{program!r}]: {test} does not exist"


# --- helpers -------------------------------------------------------------------------------------

def run(cmd: list[str], *, env: dict | None = None, cwd: Path = ROOT, timeout: int = 900,
        ok: bool = True) -> subprocess.CompletedProcess:
    """Runs ``cmd`` with JAX on the CPU; stdout and stderr apart; asserts exit 0 when ``ok``."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
    if ok:
        assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                                      f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@functools.cache  # once per process: a script's absl flags cannot be defined twice
def load_script(name: str):
    """A script of scripts/ as a module (its functions, without running its main)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> list[list[str]]:
    """The cells of each Markdown table row of ``text`` (separator rows left out), with the
    docs' typography undone: U+2212 minus signs and parenthetical remarks in a cell."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append([re.sub(r"\s*\([^)]*\)", "", c.replace("\u2212", "-")) for c in cells])
    return rows


def fashion_mnist_or_skip():
    from bbg_jax.data import fashion_mnist

    if not fashion_mnist.local_files_exist(fashion_mnist.DEBIAN_DIR):
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup.sh)")


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory, compilation_cache):
    """The smoke config trained 2 steps (checkpoint at 2): the run the run tools read."""
    workdir = tmp_path_factory.mktemp("smoke") / "run"
    run([PY, "-m", "bbg_jax.main", "--config=experiments/smoke.py", f"--workdir={workdir}",
         "--config.train.num_steps=2", "--config.train.checkpoint_every=2",
         f"--config.train.compilation_cache_dir={compilation_cache}"])
    assert (workdir / "checkpoints" / "2").is_dir()
    return workdir


# --- the main job and the set-up -----------------------------------------------------------------

def setup_is_current() -> bool:
    """scripts/setup.sh's own test: the venv's stamp is the hash of pyproject.toml and itself."""
    stamp = ROOT / ".venv" / ".bbg-jax-installed"
    import hashlib

    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                          + (ROOT / "scripts" / "setup.sh").read_bytes()).hexdigest()
    return stamp.exists() and stamp.read_text().strip() == want


def skip_unless_set_up():
    # Otherwise setup.sh would pip-install (network, minutes); scripts/test.sh runs it first.
    if not setup_is_current():
        pytest.skip("the venv is older than pyproject.toml/setup.sh: run bash scripts/setup.sh")
    if shutil.which("shellcheck") is None and os.geteuid() == 0:
        pytest.skip("setup.sh would apt-get install shellcheck")


def test_setup_sh_is_a_quick_silent_no_op_when_set_up():
    skip_unless_set_up()
    fashion_mnist_or_skip()  # else setup.sh would apt-get it (network)
    proc = run(["bash", "scripts/setup.sh"], timeout=60)
    assert proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


# Two steps, a checkpoint at 2 with sample sheets, and the report on bounded splits: the whole
# job's path (set-up, tf.data on the Debian files, 2 devices, evaluation, report) in a few minutes.
FASHION_MNIST_SHORT = [
    "--config.train.num_steps=4", "--config.train.checkpoint_every=2",
    "--config.train.log_every=1",
    "--config.eval.samples.every_steps=2", "--config.eval.fid.every_steps=0",
    "--config.eval.probe.every_steps=0", "--config.eval.diagnostics.every_steps=0",
    "--config.eval.standing_batches=1", "--config.eval.samples.sheet_size=4",
    "--config.data.train_val_size=300", "--config.data.eval_split=test[:300]",
    "--config.eval.probe.max_train=300", "--config.eval.probe.epochs=1",
    "--config.eval.diagnostics.num_samples=100", "--config.eval.diagnostics.num_images=100",
]


def test_run_fashion_mnist_sh_trains_and_reports(tmp_path, compilation_cache):
    skip_unless_set_up()
    fashion_mnist_or_skip()
    workdir = tmp_path / "fm"
    proc = run(["bash", "scripts/run_fashion_mnist.sh", str(workdir), *FASHION_MNIST_SHORT,
                f"--config.train.compilation_cache_dir={compilation_cache}"],
               env={"XLA_FLAGS": TEST_XLA_FLAGS})  # the script adds its own 2 devices
    out = proc.stdout + proc.stderr
    assert "setup: installing" not in out  # set up already: setup.sh is a no-op
    assert proc.stdout.rstrip().endswith(f"report: {workdir}/report.json"), proc.stdout[-2000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["image_channels"] == 1 and config["train"]["num_steps"] == 4
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(np.isfinite(m[k]) for m in metrics for k in ("d_loss", "g_loss", "e_loss"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"]
    assert (workdir / "eval" / "step_4" / "report.json").exists()
    report = json.loads((workdir / "report.json").read_text())
    assert report["step"] == 4 and report["chance"] == pytest.approx(0.1)
    assert set(report["probe"]) >= {"raw_pixels", "random_encoder_bn_crelu", "bigbigan_bn_crelu"}
    for row in report["probe"].values():
        assert 0.0 <= row["top1_test"] <= row["top5_test"] <= 1.0
    assert report["probe_settings"]["test_split"] == "test[:300]"
    # The table the job prints, from the report (bbg_jax.evaluation.report.format_table).
    margin = report["margin_over_random_encoder"]["bn_crelu_test"]
    assert (f"step 4: BigBiGAN bn_crelu features {100 * margin:+.1f} points test top-1"
            in proc.stdout)
    # The progress lines scripts/wall_time_study.py reads a setting's s/step from (over 4 steps
    # their rounded averages say nothing of the speed, so only their presence is checked).
    assert len(load_script("wall_time_study").RATE.findall(out)) >= 2


# --- tools over runs and reports -----------------------------------------------------------------

def test_compare_runs_tabulates_window_means(smoke_workdir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(smoke_workdir, other)
    proc = run([PY, "scripts/compare_runs.py", str(smoke_workdir), str(other), "--window", "2"])
    rows = {int(json.loads(line)["step"]): json.loads(line) for line in
            (smoke_workdir / "metrics.jsonl").read_text().splitlines()}
    d_loss = np.mean([rows[1]["d_loss"], rows[2]["d_loss"]])
    assert "d_loss (mean over 2-step windows)" in proc.stdout
    assert f"| 1-2 | {d_loss:.4f} | {d_loss:.4f} |" in proc.stdout, proc.stdout
    assert "| steps | run | other |" in proc.stdout
    as_json = json.loads(run([PY, "scripts/compare_runs.py", str(smoke_workdir), "--window=1",
                              "--json"]).stdout)
    assert as_json["losses"]["g_loss"][str(smoke_workdir)] == {
        "1": pytest.approx(rows[1]["g_loss"]), "2": pytest.approx(rows[2]["g_loss"])}


def test_seed_table_reproduces_the_docs_rows():
    reports = [ROOT / f"docs/fashion_mnist/seeds/seed{s}_report.json" for s in range(3)]
    out = run([PY, "scripts/seed_table.py", *map(str, reports)]).stdout
    assert out.startswith("3 runs (seeds 0, 1, 2), step 750, 750, 750; mean ± sample std")
    loaded = [json.loads(p.read_text()) for p in reports]
    test_top1 = [r["probe"]["bigbigan_bn_crelu"]["top1_test"] for r in loaded]
    assert ("| bigbigan bn crelu | " in out
            and f"{np.mean(test_top1):.4f} ± {np.std(test_top1, ddof=1):.4f}" in out)
    # docs/fashion_mnist.md says this command prints its table: the probe rows and the margin
    # row are the script's, verbatim.
    doc = (ROOT / "docs" / "fashion_mnist.md").read_text()
    printed = [line for line in out.splitlines()
               if line.startswith(("| raw pixels", "| random encoder", "| bigbigan",
                                   "| margin of"))]
    assert len(printed) == 6
    for line in printed:
        assert line in doc, f"docs/fashion_mnist.md lacks the seed table's row {line!r}"


def test_plot_learning_curve_table_is_the_docs(tmp_path):
    """The 3,000-step run's stored evaluations, laid out as its workdir: --table prints the
    table of docs/fashion_mnist.md's learning curve; --out draws the figure (matplotlib, the
    docs extra) or says in one line that it needs it."""
    workdir = tmp_path / "long"
    for report in (ROOT / "docs/fashion_mnist/long").glob("step_*_report.json"):
        if report.name.endswith("_run_report.json"):
            continue
        step = report.name.split("_")[1]
        (workdir / "eval" / f"step_{step}").mkdir(parents=True)
        shutil.copy(report, workdir / "eval" / f"step_{step}" / "report.json")
    baselines = ROOT / "docs/fashion_mnist/long/step_3000_run_report.json"
    out = run([PY, "scripts/plot_learning_curve.py", f"--workdir={workdir}",
               f"--baselines={baselines}", "--table"]).stdout
    rows = table_rows(out)
    assert rows[0][:3] == ["step", "bn_crelu test top-1 %", "latent corr, raw G"]
    assert [r[0] for r in rows[1:]] == ["375", "750", "1125", "1500", "1875", "2250", "2625",
                                        "3000"]
    doc_rows = table_rows((ROOT / "docs" / "fashion_mnist.md").read_text())
    for row in rows[1:]:
        assert row in doc_rows, f"docs/fashion_mnist.md's learning-curve table lacks {row}"
    figure = tmp_path / "curve.png"
    proc = run([PY, "scripts/plot_learning_curve.py", f"--workdir={workdir}",
                f"--out={figure}", f"--baselines={baselines}"], ok=False)
    if importlib.util.find_spec("matplotlib") is None:
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
            "--out needs matplotlib: .venv/bin/pip install -e '.[docs]'"), proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip() == str(figure)
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wall_time_study_table_is_the_docs(tmp_path):
    """`table` over the study's stored rows (docs/fashion_mnist/study/) prints the rows of
    docs/fashion_mnist.md's study table (the docs name the settings in words)."""
    dirs = []
    for row in sorted((ROOT / "docs/fashion_mnist/study").glob("*.json")):
        if row.name.endswith("_report.json"):
            continue
        (tmp_path / row.stem).mkdir()
        shutil.copy(row, tmp_path / row.stem / "study_row.json")
        dirs.append(str(tmp_path / row.stem))
    assert len(dirs) >= 4
    out = run([PY, "scripts/wall_time_study.py", "table", *dirs]).stdout
    rows = table_rows(out)
    assert rows[0][:3] == ["setting", "s/step", "steps in 20 min"]
    assert len(rows) == 1 + len(dirs)
    doc_rows = [r[1:] for r in table_rows((ROOT / "docs" / "fashion_mnist.md").read_text())]
    for row in rows[1:]:
        assert row[1:] in doc_rows, f"docs/fashion_mnist.md's study table lacks {row}"


@pytest.mark.slow  # the FID evaluator at N compiles the full-size Inception
def test_wall_time_study_run_trains_evaluates_a_row(tmp_path, compilation_cache):
    fashion_mnist_or_skip()
    root = tmp_path / "study"
    # The script sets the steps, the checkpoints and the evaluators' schedules itself.
    short = [o for o in FASHION_MNIST_SHORT if "every_steps" not in o and "num_steps" not in o
             and "checkpoint_every" not in o]
    out = run([PY, "scripts/wall_time_study.py", "run", str(root), "tiny", "--minutes=0",
               "--steps_probe=4", *short, "--config.eval.fid.num_samples=10",
               "--config.eval.batch_size=10",
               f"--config.train.compilation_cache_dir={compilation_cache}"]).stdout
    row = json.loads(out.strip().splitlines()[-1])
    assert row["name"] == "tiny" and row["steps"] == 8 and row["s_per_step"] > 0
    assert json.loads((root / "tiny" / "study_row.json").read_text()) == row
    table = run([PY, "scripts/wall_time_study.py", "table", str(root / "tiny")]).stdout
    assert table_rows(table)[1][:3] == ["tiny", f"{row['s_per_step']:.2f}", "8"]


def test_coupling_check_prints_latent_recovery():
    # The documented frozen-G game (z = 4) on the smoke networks, 2 steps, a line per step.
    proc = run([PY, "scripts/coupling_check.py", "--config=experiments/smoke.py",
                "--game=frozen_g", "--steps=2", "--every=1", "--config.model.z_dim=4"])
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert line["game"] == "frozen_g"
        assert -1 <= line["latent_recovery_corr"] <= 1 and line["z_stdev_mean"] > 0
        assert np.isfinite(line["d_loss"]) and any(k.startswith("mean_score") for k in line)


# --- benchmarks ----------------------------------------------------------------------------------

def test_benchmark_prints_the_step_and_its_pieces():
    # docs/performance.md's command with 1 timed step instead of 10.
    out = run([PY, "-m", "bbg_jax.benchmark", "--config", "experiments/smoke.py", "--steps", "1",
               "--pieces"]).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    step, *pieces = rows
    assert step["what"] == "train_step" and step["batch"] == 8 and step["all_finite"] is True
    assert step["median_s"] > 0 and step["images_per_s"] > 0 and step["xla_flops"] > 0
    assert {"d_loss", "g_loss", "e_loss"} <= set(step["final_losses"])
    assert {"G_forward", "D_forward", "E_forward", "D_update", "GE_update",
            "D_spectral_norm_iterations"} <= {p["what"] for p in pieces}
    assert all(p["median_s"] > 0 for p in pieces)
    # The human-readable table: one "what=..., ..." line per row before the JSON.
    assert sum(line.startswith("what=") for line in out.splitlines()) == len(rows)


def test_restart_benchmark_times_first_start_and_resume():
    # One mode of the two, 1 step per start: a first start that compiles into WORKDIR's cache,
    # then a resume to step 2 that loads from it.
    out = run([PY, "scripts/restart_benchmark.py", "--steps=1", "--modes=cache"]).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1
    assert rows[0]["mode"] == "cache" and rows[0]["steps_per_start"] == 1
    assert rows[0]["first_start_s"] > 0 and rows[0]["restart_s"] > 0
    assert rows[0]["config"] == "experiments/smoke.py"


def test_vs_biggan_pytorch_dry_run_prints_the_protocol(tmp_path):
    """Without torch and the peer checkout (neither is on this machine): the protocol, the host,
    the command of every row (pinned, in a clean environment) and what the torch Python and
    the peer lack."""
    peer = tmp_path / "BigGAN-PyTorch"
    peer.mkdir()
    (peer / "BigGAN.py").write_text("")
    out = run([PY, "scripts/vs_biggan_pytorch.py", f"--peer={peer}", f"--torch_python={PY}",
               "--rounds=6", "--steps=3", "--threads=2", "--devices=2", "--dry_run"]).stdout
    lines = out.splitlines()
    assert lines[0].startswith("protocol: 6 rounds in ABBA order") and "3 timed" in lines[0]
    rows = lines[1:8]
    assert [r.split(": (cd")[0] for r in rows] == [
        "BigGAN-PyTorch", "BigGAN-PyTorch channels_last",
        "bbg-jax as shipped (Winograd where it pays)",
        "bbg-jax conv_weight_grad=einsum (no Winograd)", "bbg-jax on 1 device",
        "BigGAN-PyTorch, 4 D steps", "bbg-jax as shipped, 4 D steps"]
    for row in rows:  # the same pinning and thread counts on both sides, nothing inherited
        assert "env -i" in row and "OMP_NUM_THREADS=2 MKL_NUM_THREADS=2" in row
        assert shutil.which("taskset") is None or "taskset -c 0-1" in row
    assert (f"biggan_pytorch_iteration.py {peer} steps=3 num_D_steps=1 threads=2 "
            "interop_threads=1 channels_last=1" in rows[1])
    assert "--config.train.conv_weight_grad=einsum" in rows[3]
    assert "--xla_force_host_platform_device_count=1" in rows[4]
    assert "--config.train.n_d_steps=4" in rows[6] and "num_D_steps=4" in rows[5]
    host = json.loads(lines[8])["host"]
    assert host["cores"] == os.cpu_count() and host["peer_commit"] == "not a git checkout"
    assert len(host["bbg_jax_commit"]) == 40 and "cpu" in host and "isa" in host
    peer_env = json.loads(lines[-2])
    assert peer_env["who"] == "BigGAN-PyTorch" and peer_env["dry_run"] is True
    assert peer_env["steps"] == 3 and peer_env["batch"] == 50
    assert peer_env["interop_threads"] == 1 and peer_env["threads"] == 2
    assert peer_env["peer_missing"] == ["train_fns.py", "utils.py", "layers.py"]
    has_torch = importlib.util.find_spec("torch") is not None
    assert peer_env["torch_importable"] is has_torch
    assert lines[-1].startswith("not ready: ") and "lacks train_fns.py" in lines[-1]


def test_vs_biggan_pytorch_pairs_ratios_within_clean_rounds():
    """The paired ratio: each row over the same round's peer row with its D steps; a round with
    one noisy measurement is left out whole."""
    vs = load_script("vs_biggan_pytorch")
    rows = []
    for k, (peer, jax_row, noisy) in enumerate([(10, 15, False), (10, 12, False), (5, 50, True)]):
        rows += [{"round": k, "row": "BigGAN-PyTorch", "d_steps": 1, "images_per_s": peer,
                  "noisy": False},
                 {"round": k, "row": "bbg-jax as shipped", "d_steps": 1,
                  "images_per_s": jax_row, "noisy": noisy}]
    assert vs.paired_ratios(rows) == {"BigGAN-PyTorch": [1.0, 1.0],
                                      "bbg-jax as shipped": [1.5, 1.2]}


# BigGAN-PyTorch's CIFAR model (scripts/launch_cifar_ema.sh, commit 98459431), counted by
# `scripts/biggan_pytorch_iteration.py PEER --count` under torch 2.13.0+cpu (no torch here).
PEER_CIFAR_COUNTS = {"G_params": 4_304_387, "D_params": 4_207_361,
                     "G_flops": 3_362_258_944, "D_flops": 2_162_033_152}


def test_the_cifar_model_is_the_peers():
    """``--parity``'s bbg-jax side against the peer's counts: D's parameters equal, G's differ
    by the 10 x 10 class table (BigGAN-PyTorch feeds the one-hot class to each BN's maps), and
    forward FLOPs within 1 % (bbg-jax's count adds spectral norm's sigma, one matvec per weight
    per call, counted at batch 1)."""
    vs = load_script("vs_biggan_pytorch")
    mine = vs.bbg_jax_counts()
    lines, ok = vs.parity_table(PEER_CIFAR_COUNTS, mine)
    print("\n".join(lines))
    assert ok, lines
    assert mine["D_params"] == PEER_CIFAR_COUNTS["D_params"]
    assert mine["G_params"] == PEER_CIFAR_COUNTS["G_params"] + 10 * 10
    assert not vs.parity_table(PEER_CIFAR_COUNTS, {**mine, "D_flops": mine["D_flops"] * 1.02})[1]


def test_biggan_pytorch_iteration_dry_run_and_bad_settings(tmp_path):
    out = run([PY, "scripts/biggan_pytorch_iteration.py", str(tmp_path), "steps=2", "G_ch=32",
               "--dry_run"]).stdout
    line = json.loads(out)
    assert line["steps"] == 2 and line["G_ch"] == 32 and line["D_ch"] == 64
    assert line["peer_missing"] == ["BigGAN.py", "train_fns.py", "utils.py", "layers.py"]
    proc = run([PY, "scripts/biggan_pytorch_iteration.py", str(tmp_path), "stepz=2",
                "--dry_run"], ok=False)
    assert proc.returncode == 1 and "unknown setting 'stepz'" in proc.stderr


def test_data_benchmark_prints_rates_and_cores():
    out = run([PY, "-m", "bbg_jax.data.benchmark", "--images", "4", "--seconds", "0.2"]).stdout
    lines = out.splitlines()
    assert lines[0].startswith("4 synthetic JPEGs 500x375, mean ")
    assert re.fullmatch(r"1 thread: +[\d.]+ images/s  \(= per core\)", lines[1]), lines[1]
    assert re.fullmatch(rf"{os.cpu_count()} threads: +[\d.]+ images/s  \([\d.]+ per core\)",
                        lines[2]), lines[2]
    assert re.fullmatch(r"cores to feed batch 2048 every 1 s: \d+ \(at [\d.]+ images/s per "
                        r"core, file reading not included\)", lines[3]), lines[3]


@pytest.mark.slow  # the full-size FID Inception compiles
def test_inception_benchmark_and_fid_sanity():
    fashion_mnist_or_skip()
    out = run([PY, "-m", "bbg_jax.evaluation.inception.benchmark", "--batch_size=2",
               "--num_images=2", "--resolution=32"]).stdout
    assert re.fullmatch(r".+: [\d.]+ images/s \(batch 2, 32px -> 299\)\n", out), out
    out = run([PY, "-m", "bbg_jax.evaluation.inception.fid_sanity", "--n", "4",
               "--batch_size=4"]).stdout.splitlines()
    assert out[0].startswith("N=4 per set (")
    same, noise = (float(line.rsplit("=", 1)[1]) for line in out[1:3])
    assert 0 <= same < noise


def test_logits_head_writes_the_npz(tmp_path):
    """The converter's command on a graph holding the two softmax constants it reads."""
    tf = pytest.importorskip("tensorflow")
    kernel = np.arange(2048 * 3, dtype=np.float32).reshape(2048, 3)
    graph = tf.Graph()
    with graph.as_default():
        tf.constant(kernel, name="softmax/weights")
        tf.constant(np.ones(3, np.float32), name="softmax/biases")
    (tmp_path / "graph.pb").write_bytes(graph.as_graph_def().SerializeToString())
    out = run([PY, "-m", "bbg_jax.evaluation.inception.logits_head", "--graph",
               str(tmp_path / "graph.pb"), "--out", str(tmp_path / "head.npz")]).stdout
    assert out.strip() == f"{tmp_path / 'head.npz'}: kernel (2048, 3), bias (3,)"
    head = np.load(tmp_path / "head.npz")
    np.testing.assert_array_equal(head["kernel"], kernel)


@pytest.mark.slow  # the full-size TorchScript Inception, under torch (absent here: skipped)
def test_make_inception_reference_rewrites_the_stored_features(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "reference.npz"
    printed = run([PY, "scripts/make_inception_reference.py", f"--out={out}"]).stdout
    assert printed.startswith(f"{out}: ") and "torch " in printed
    ours = np.load(out)
    assert any(k.startswith("features_") for k in ours.files)


# --- shell wrappers ------------------------------------------------------------------------------

def test_compile_table_sh_renders_the_docs_table(tmp_path):
    """Every row's report already there (the stored ones): no compile, and the table printed is
    docs/paper_configs.md's."""
    rows = tmp_path / "rows"
    shutil.copytree(ROOT / "docs" / "compile_table", rows)
    proc = run(["bash", "launch/compile_table.sh", str(rows)], env={"PY": PY})
    assert "compiling" not in proc.stderr, proc.stderr
    table = proc.stdout.strip()
    assert table.count("\n") >= 20
    assert table in (ROOT / "docs" / "paper_configs.md").read_text()


def test_device_check_sh_prepares_then_runs(tmp_path):
    """The wrapper's dispatch, in a copy of the repo whose PYTHON records its arguments (the
    device half itself: tests/test_device_check.py): --prepare, then a run that prepares first
    when build/device_check is missing."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "device_check.sh", tmp_path / "scripts")
    log = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                    'if [ "$3" = prepare ]; then mkdir -p build/device_check && '
                    'echo {} > build/device_check/manifest.json; fi\n')
    fake.chmod(0o755)
    env = {"PYTHON": str(fake)}
    run(["bash", "scripts/device_check.sh", "--prepare", "--num_images", "8"], cwd=tmp_path,
        env=env)
    shutil.rmtree(tmp_path / "build")
    run(["bash", "scripts/device_check.sh", "--cpu", "--only", "smoke"], cwd=tmp_path, env=env)
    run(["bash", "scripts/device_check.sh", "--cpu"], cwd=tmp_path, env=env)
    assert log.read_text().splitlines() == [
        "-m bbg_jax.device_check prepare --out build/device_check --num_images 8",
        "-m bbg_jax.device_check prepare --out build/device_check",
        "-m bbg_jax.device_check run --prepared build/device_check --cpu --only smoke",
        "-m bbg_jax.device_check run --prepared build/device_check --cpu"]


def test_test_sh_lints_then_runs_pytest():
    """scripts/test.sh on one small test file: set-up (a no-op), ruff over the tree, pytest's
    summary line."""
    skip_unless_set_up()
    fashion_mnist_or_skip()
    proc = run(["bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider",
                "tests/test_docs_links.py"])
    assert "All checks passed!" in proc.stdout  # ruff's line
    assert re.search(r"^\d+ passed.* in [\d.]+s", proc.stdout.splitlines()[-1]), proc.stdout
