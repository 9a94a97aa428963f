"""Bad command lines, configs and workdirs: one line each, before any compile, losing nothing.

Every row of ``ROWS`` runs ``bbg_jax.main`` in this process (``main.run``, fresh absl flags) and
must exit non-zero with exactly one line that names the field and what is allowed, with no
traceback; the row's directory (a fresh workdir, an earlier run's files, a file where the workdir
should be, ...) must be byte-for-byte unchanged, nothing may be traced or compiled by JAX, and
neither training nor evaluation may start. Two rows also run as real ``python -m bbg_jax.main``
processes. docs/configuration_errors.md is this table with the messages it produces:
regenerate it with ``BBG_WRITE_DOCS=1 .venv/bin/python -m pytest tests/test_bad_configs.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import jax
import numpy as np
import pytest

from bbg_jax import config_checks, main, sharding
from bbg_jax.configs import ConfigError, load_experiment

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration_errors.md"
SMOKE = "experiments/smoke.py"
SHOWN_ROOT = "/tmp/bad"  # each row's directory, as the doc shows it


class Row(NamedTuple):
    name: str
    args: tuple[str, ...]  # after `python -m bbg_jax.main`; {W} = the workdir, {R} = the row dir
    setup: str  # what is in the workdir before: a key of SETUPS
    expect: tuple[str, ...]  # substrings of the message: the field and what is allowed


def _row(name, args, setup="fresh", *expect):
    return Row(name, tuple(args.split()), setup, tuple(expect))


T = f"--config={SMOKE} --workdir={{W}}"  # a train command line on the smoke config
E = "--mode=eval --workdir={W}"

ROWS = [
    # --- the command line ---------------------------------------------------------------------
    _row("unknown override key", f"{T} --config.train.nmu_steps=5", "fresh",
         "train.nmu_steps", "allowed fields of train:", "num_steps"),
    _row("unknown section", f"{T} --config.optim.lr=0.1", "fresh",
         "--config.optim.lr", "allowed fields of the config: data, eval, model, train"),
    _row("wrong type: int", f"{T} --config.train.num_steps=abc", "fresh",
         "--config.train.num_steps='abc'", "allowed an integer"),
    _row("wrong type: float", f"{T} --config.train.lr_g=fast", "fresh",
         "--config.train.lr_g='fast'", "allowed a number"),
    _row("wrong type: bool", f"{T} --config.model.encoder.enabled=maybe", "fresh",
         "--config.model.encoder.enabled='maybe'", "allowed true or false"),
    _row("wrong type: tuple", f"{T} --config.model.encoder.stage_depths=(1,1)", "fresh",
         "model.encoder.stage_depths=(1, 1)", "allowed a tuple of 4 integers >= 1"),
    _row("unknown flag", "--config=experiments/smoke.py --wrokdir={W}", "fresh",
         "--wrokdir", "allowed --config, --workdir, --mode, --step", "--workdir?"),
    _row("unknown mode", f"{T} --mode=serve", "fresh", "--mode='serve'", "'train', 'eval'"),
    _row("no --workdir", "--config=experiments/smoke.py", "fresh", "--workdir is missing"),
    _row("train without --config", "--workdir={W}", "fresh", "--config is missing",
         "an experiment file"),
    _row("a stray argument", f"{T} smoke", "fresh", "'smoke'", "allowed flags only"),
    _row("--step in training", f"{T} --step=3", "fresh", "--step=3",
         "allowed only with --mode=eval"),
    _row("override without --config", f"{E} --config.train.num_steps=3", "earlier_run",
         "--config.train.num_steps='3'", "allowed only after --config=FILE"),
    # --- the config file ----------------------------------------------------------------------
    _row("config file missing", "--config={R}/nope.py --workdir={W}", "fresh",
         "--config='/tmp/bad/nope.py': no such file", "allowed an experiment file"),
    _row("config file does not parse", "--config={R}/files/broken.py --workdir={W}", "fresh",
         "--config='/tmp/bad/files/broken.py'", "does not parse",
         "allowed a Python file defining get_config()"),
    _row("config file without get_config", "--config={R}/files/noget.py --workdir={W}", "fresh",
         "--config='/tmp/bad/files/noget.py'", "allowed a Python file defining get_config"),
    _row("get_config returns a dict", "--config={R}/files/returns_dict.py --workdir={W}",
         "fresh", "--config='/tmp/bad/files/returns_dict.py'", "returned dict",
         "ml_collections.ConfigDict"),
    _row("unknown get_config argument", "--config=experiments/table1.py:nope --workdir={W}",
         "fresh", "--config='experiments/table1.py:nope'", "Unknown Table 1 variant",
         "base, deterministic_e"),
    _row("misspelt field in a config file", "--config={R}/files/typo.py --workdir={W}", "fresh",
         "train.num_step=5: unknown field", "allowed fields of train:",
         "did you mean train.num_steps?"),
    # --- values -------------------------------------------------------------------------------
    _row("zero steps", f"{T} --config.train.num_steps=0", "fresh",
         "train.num_steps=0", "allowed an integer >= 1"),
    _row("negative steps", f"{T} --config.train.num_steps=-5", "fresh",
         "train.num_steps=-5", "allowed an integer >= 1"),
    _row("zero D steps", f"{T} --config.train.n_d_steps=0", "fresh",
         "train.n_d_steps=0", "allowed an integer >= 1"),
    _row("zero batch", f"{T} --config.data.batch_size=0", "fresh",
         "data.batch_size=0", "allowed an integer >= 1"),
    _row("negative batch", f"{T} --config.data.batch_size=-8", "fresh",
         "data.batch_size=-8", "allowed an integer >= 1"),
    _row("negative G learning rate", f"{T} --config.train.lr_g=-0.001", "fresh",
         "train.lr_g=-0.001", "allowed a number > 0"),
    _row("zero D learning rate", f"{T} --config.train.lr_d=0", "fresh",
         "train.lr_d=0.0", "allowed a number > 0"),
    _row("zero E learning-rate multiplier", f"{T} --config.train.e_lr_multiplier=0", "fresh",
         "train.e_lr_multiplier=0.0", "allowed a number > 0"),
    _row("EMA decay 1", f"{T} --config.train.ema_decay=1", "fresh",
         "train.ema_decay=1.0", "allowed a number in [0, 1)"),
    _row("EMA decay negative", f"{T} --config.train.ema_decay=-0.5", "fresh",
         "train.ema_decay=-0.5", "allowed a number in [0, 1)"),
    _row("Adam beta2 1", f"{T} --config.train.adam_b2=1", "fresh",
         "train.adam_b2=1.0", "allowed a number in [0, 1)"),
    _row("keep no checkpoint", f"{T} --config.train.keep_last=0", "fresh",
         "train.keep_last=0", "allowed an integer >= 1"),
    _row("unsupported resolution", f"{T} --config.model.generator.resolution=48", "fresh",
         "model.generator.resolution=48", "allowed 32, 64, 128, 256, 512"),
    _row("D resolution differs from G", f"{T} --config.model.discriminator.resolution=64",
         "fresh", "model.discriminator.resolution=64", "allowed 32",
         "model.generator.resolution"),
    _row("data resolution differs from D", f"{T} --config.data.resolution_d=64", "fresh",
         "data.resolution_d=64", "allowed 32", "model.discriminator.resolution"),
    _row("data resolution differs from E", f"{T} --config.data.resolution_e=64", "fresh",
         "data.resolution_e=64", "allowed 32", "model.encoder.resolution"),
    _row("E resolution not a multiple of its stride",
         f"{T} --config.model.encoder.resolution=48 --config.data.resolution_e=48", "fresh",
         "model.encoder.resolution=48", "allowed a multiple of 32"),
    _row("z does not split into equal chunks", f"{T} --config.model.z_dim=10", "fresh",
         "model.z_dim=10", "allowed a multiple of 4", "hierarchical_z"),
    _row("unknown CBN map init", f"{T} --config.model.generator.cbn_map_init=ones", "fresh",
         "model.generator.cbn_map_init='ones'", "allowed 'orthogonal', 'zeros'"),
    _row("unknown joint projection", f"{T} --config.model.discriminator.joint_projection=pixels",
         "fresh", "model.discriminator.joint_projection='pixels'",
         "allowed 'none', 'feature_map', 'image'"),
    _row("z kept out of the blocks with hierarchical z",
         f"{T} --config.model.generator.z_in_blocks=False", "fresh",
         "model.generator.z_in_blocks=False", "allowed True", "hierarchical_z=False"),
    _row("D downsampling plan of the wrong length",
         f"{T} --config.model.discriminator.downsample=(True,True)", "fresh",
         "model.discriminator.downsample=(True, True)", "None or 4 booleans"),
    _row("unknown D shortcut rule", f"{T} --config.model.discriminator.conv_shortcut=always",
         "fresh", "model.discriminator.conv_shortcut='always'",
         "allowed 'channels', 'channels_or_down'"),
    _row("fractional encoder width", f"{T} --config.model.encoder.width=0.3", "fresh",
         "model.encoder.width=0.3", "64 x width a whole number"),
    _row("unknown loss terms", f"{T} --config.train.loss_terms=everything", "fresh",
         "train.loss_terms='everything'",
         "allowed 'all', 'no_z_unary', 'no_x_unary', 'joint_only', 'x_only'"),
    _row("GAN loss with an encoder", f"{T} --config.train.loss_terms=x_only", "fresh",
         "train.loss_terms='x_only'", "allowed 'all', 'no_z_unary', 'no_x_unary', 'joint_only'",
         "model.encoder.enabled=True"),
    _row("BigBiGAN D without an encoder",
         f"{T} --config.model.encoder.enabled=False --config.train.loss_terms=x_only", "fresh",
         "model.discriminator.kind='bigbigan'", "allowed 'gan'"),
    _row("unknown prior", f"{T} --config.train.prior=gaussian2", "fresh",
         "train.prior='gaussian2'", "allowed 'gaussian', 'uniform'"),
    _row("unknown dataset", f"{T} --config.data.dataset=imagenet", "fresh",
         "data.dataset='imagenet'",
         "allowed 'synthetic', 'imagenet2012', 'fashion_mnist', 'mnist', 'cifar10'"),
    _row("unknown trunk", f"{T} --config.model.encoder.trunk=resnet18", "fresh",
         "model.encoder.trunk='resnet18'", "allowed 'resnet50', 'resnet101', 'resnet152', "
         "'revnet50'"),
    _row("unknown dtype", f"{T} --config.model.dtype=float16", "fresh",
         "model.dtype='float16'", "allowed 'float32', 'bfloat16'"),
    _row("unknown augmentation", f"{T} --config.data.augmentation=random_crop", "fresh",
         "data.augmentation='random_crop'",
         "allowed 'resnet_crop', 'light_crop', 'centre_crop', 'pad'"),
    _row("two image channels", f"{T} --config.data.channels=2", "fresh",
         "data.channels=2", "allowed 1, 3"),
    _row("unknown convolution gradient", f"{T} --config.train.conv_weight_grad=cudnn", "fresh",
         "train.conv_weight_grad='cudnn'", "allowed 'xla', 'einsum', 'winograd', 'auto'"),
    _row("unknown evaluator", f"{T} --config.eval.evaluators=('samples','fd')", "fresh",
         "eval.evaluators=('samples', 'fd')",
         "allowed a subset of ('samples', 'fid', 'probe', 'diagnostics')"),
    _row("unknown eval generator", f"{T} --config.eval.generator=best", "fresh",
         "eval.generator='best'", "allowed 'ema', 'raw'"),
    _row("evaluation between checkpoints", f"{T} --config.eval.fid.every_steps=4", "fresh",
         "eval.fid.every_steps=4", "allowed 0 or a multiple of train.checkpoint_every=3"),
    _row("schedule for an evaluator left out", f"{T} --config.eval.fid.every_steps=3", "fresh",
         "eval.fid.every_steps=3",
         "allowed 0, or 3 with 'fid' added to eval.evaluators=('samples',)"),
    _row("pixel baselines on no images", f"{T} --config.eval.pixels_max_train=0", "fresh",
         "eval.pixels_max_train=0", "allowed an integer >= 1"),
    _row("latent recovery on one sample", f"{T} --config.eval.diagnostics.num_samples=1",
         "fresh", "eval.diagnostics.num_samples=1", "allowed an integer >= 2",
         "a correlation needs two samples"),
    _row("probe of an encoder EMA that is not kept",
         f"{T} --config.eval.evaluators=('probe',) --config.eval.probe.params=ema", "fresh",
         "eval.probe.params='ema'", "allowed 'raw'", "train.ema_encoder=False"),
    _row("init_from without a checkpoint", f"{T} --config.train.init_from={{R}}/nowhere",
         "fresh", "train.init_from='/tmp/bad/nowhere'", "holding a checkpoint"),
    # --- the workdir --------------------------------------------------------------------------
    _row("workdir is a file", T, "file", "--workdir='/tmp/bad/run': a file",
         "allowed a directory"),
    _row("workdir under a file", f"--config={SMOKE} --workdir={{W}}/sub", "file",
         "--workdir='/tmp/bad/run/sub'", "/tmp/bad/run is a file",
         "allowed a path whose existing part is a directory"),
    _row("resume with a different model", f"{T} --config.model.generator.ch=16", "earlier_run",
         "model.generator.ch=16", "allowed 8", "different model config"),
    _row("eval on an empty workdir", E, "empty", "--workdir='/tmp/bad/run': no checkpoint",
         "allowed the workdir of a training run"),
    _row("eval on a missing workdir", E, "fresh", "--workdir='/tmp/bad/run': no such directory",
         "allowed the workdir of a training run"),
    _row("eval of a step that was not saved", f"{E} --step=7", "earlier_run",
         "--step=7", "allowed 3, 6"),
    _row("eval with a different model", f"{E} --config={SMOKE} --config.model.z_dim=32",
         "earlier_run", "model.z_dim=32", "allowed 16", "different model config",
         "omit --config"),
    _row("config.json is not JSON", E, "bad_json", "config.json is not JSON",
         "allowed the config.json a training run wrote"),
    _row("config.json is not a config", E, "list_json", "config.json holds a list",
         "allowed the config.json a training run wrote"),
    _row("config.json is missing", E, "no_config_json", "no config.json",
         "allowed a training run's workdir", "--config=experiments/<name>.py"),
]

# --- the directories the rows start from --------------------------------------------------------


def _smoke():
    return load_experiment(str(ROOT / SMOKE))


def _checkpoint(workdir: Path, step: int) -> None:
    """The files a saved step leaves that the checks read (orbax's layout), and state bytes."""
    d = workdir / "checkpoints" / str(step)
    (d / "config").mkdir(parents=True)
    (d / "config" / "metadata").write_text(_smoke().to_json())
    (d / "state").mkdir()
    (d / "state" / "d").write_bytes(bytes(range(256)) * 4)


def _earlier_run(w: Path) -> None:
    w.mkdir()
    (w / "config.json").write_text(_smoke().to_json_best_effort(indent=2))
    (w / "metrics.jsonl").write_text('{"step": 1, "d_loss": 1.5}\n')
    for step in (3, 6):
        _checkpoint(w, step)


def _with_config_json(text: str | None):
    def setup(w: Path) -> None:
        w.mkdir()
        _checkpoint(w, 3)
        if text is not None:
            (w / "config.json").write_text(text)
    return setup


SETUPS = {
    "fresh": ("does not exist", lambda w: None),
    "empty": ("an empty directory", lambda w: w.mkdir()),
    "file": ("a file", lambda w: w.write_text("not a directory\n")),
    "earlier_run": ("an earlier smoke run: config.json, metrics.jsonl, checkpoints 3 and 6",
                    _earlier_run),
    "bad_json": ("checkpoint 3; config.json = `{not json`", _with_config_json("{not json")),
    "list_json": ("checkpoint 3; config.json = `[1, 2]`", _with_config_json("[1, 2]")),
    "no_config_json": ("checkpoint 3; no config.json", _with_config_json(None)),
}

CONFIG_FILES = {
    "broken.py": "def get_config(:\n",
    "noget.py": "X = 1\n",
    "returns_dict.py": "def get_config():\n    return {'model': {}}\n",
    "typo.py": ("from bbg_jax.configs import load_experiment\n\n\ndef get_config():\n"
                f"    config = load_experiment({str(ROOT / SMOKE)!r})\n"
                "    config.train.num_step = 5  # num_steps misspelt\n    return config\n"),
}


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory); Python's bytecode caches
    of the config files the row executes are not the run's doing."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


def _argv(row: Row, rowdir: Path) -> list[str]:
    return [a.replace("{W}", str(rowdir / "run")).replace("{R}", str(rowdir)) for a in row.args]


def _shown(text: str, rowdir: Path) -> str:
    return text.replace(str(rowdir), SHOWN_ROOT)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every row once, in this process: {name: (message, stderr, before, after)}."""
    cwd = os.getcwd()
    os.chdir(ROOT)  # the rows name experiments/ relative to the repository
    compiles, started = [], []

    def on_event(event, duration, **kwargs):
        if event.startswith("/jax/core/compile/"):
            compiles.append(event)

    def no_train(config, workdir):
        started.append(("train", workdir))

    def no_eval(config, workdir, step):
        started.append(("eval", workdir))

    saved = main._train, main._evaluate
    main._train, main._evaluate = no_train, no_eval
    jax.monitoring.register_event_duration_secs_listener(on_event)
    out = {}
    try:
        for i, row in enumerate(ROWS):
            rowdir = tmp_path_factory.mktemp(f"row{i}")
            files = rowdir / "files"
            files.mkdir()
            for name, text in CONFIG_FILES.items():
                (files / name).write_text(text)
            SETUPS[row.setup][1](rowdir / "run")
            before = _snapshot(rowdir)
            with pytest.raises(SystemExit) as exit_info:
                main.run(["bbg_jax.main", *_argv(row, rowdir)])
            code = exit_info.value.code
            out[row.name] = SimpleNamespace(code=code, message=_shown(str(code), rowdir),
                                            before=before, after=_snapshot(rowdir))
        out["(compiles)"], out["(started)"] = compiles, started
    finally:
        os.chdir(cwd)
        main._train, main._evaluate = saved
        jax.monitoring.unregister_event_duration_listener(on_event)
    return out


def test_table_is_large_enough():
    assert len(ROWS) >= 30 and len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_exits_with_one_line_and_changes_nothing(results, row):
    r = results[row.name]
    # sys.exit(str): exit status 1, the string on stderr.
    assert isinstance(r.code, str), r.code
    assert r.message.startswith("bbg_jax.main: ") and "\n" not in r.message, r.message
    assert "Traceback" not in r.message and 'File "' not in r.message
    for part in row.expect:
        assert part in r.message, (part, r.message)
    assert r.after == r.before  # an earlier run's files, or no workdir at all, as they were


def test_nothing_was_traced_compiled_or_started(results):
    assert results["(compiles)"] == [] and results["(started)"] == []


def render(results) -> str:
    """docs/configuration_errors.md from the table and the messages it produced."""
    lines = [
        "# Configuration errors",
        "",
        "`python -m bbg_jax.main` checks the command line, the config and the workdir before it "
        "creates, writes or compiles anything (`bbg_jax/config_checks.py`). A bad input stops "
        "it with exit status 1 and one line on stderr that names the field, the value and what "
        "is allowed; the workdir is left as it was.",
        "",
        "Each row below is a case of `tests/test_bad_configs.py`, which runs it and checks that "
        "this file holds the message it produced (regenerate with `BBG_WRITE_DOCS=1 "
        ".venv/bin/python -m pytest tests/test_bad_configs.py`). `WORKDIR` is "
        f"`{SHOWN_ROOT}/run`; `{SHOWN_ROOT}/files/` holds small broken config files.",
        "",
        "| case | arguments after `python -m bbg_jax.main` | workdir before | stderr |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        args = " ".join(row.args).replace("{W}", "WORKDIR").replace("{R}", SHOWN_ROOT)
        cells = [row.name, f"`{args}`", SETUPS[row.setup][0],
                 f"`{results[row.name].message}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def test_doc_is_the_table(results):
    text = render(results)
    if os.environ.get("BBG_WRITE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.read_text() == text, (
        "docs/configuration_errors.md differs from the table's messages: regenerate it with "
        "BBG_WRITE_DOCS=1 .venv/bin/python -m pytest tests/test_bad_configs.py")


def test_a_good_config_reaches_training(tmp_path, monkeypatch):
    """The harness above would notice a run that starts: a valid command line gets there."""
    monkeypatch.chdir(ROOT)
    started = []
    monkeypatch.setattr(main, "_train", lambda config, workdir: started.append(workdir))
    main.run(["bbg_jax.main", f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}",
              "--config.train.num_steps=2"])
    assert started == [str(tmp_path / "run")]
    # Only the run's log file exists when training starts (the checks wrote nothing).
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["log.txt"]


def test_every_experiment_passes_the_checks():
    sys.path.insert(0, str(ROOT / "experiments"))
    import table1

    for path in sorted((ROOT / "experiments").glob("*.py")):
        if path.name != "table1.py":
            config_checks.check(load_experiment(str(path)), "train")
    for variant in table1.VARIANTS:
        config_checks.check(table1.get_config(variant), "train")
    # A saved config.json (tuples become lists, FieldReferences plain values) passes in eval.
    saved = json.loads(_smoke().to_json_best_effort())
    config_checks.check(__import__("ml_collections").ConfigDict(saved), "eval")


def test_batch_that_does_not_split_over_the_devices_names_data_batch_size():
    mesh = SimpleNamespace(devices=np.empty(8))
    with pytest.raises(ConfigError) as e:
        sharding.check_batch_divisible(12, mesh)
    assert str(e.value) == ("data.batch_size=12: allowed a multiple of 8 (the global batch is "
                            "split evenly over the 8 devices)")
    sharding.check_batch_divisible(16, mesh)


# --- the real command line: one line on stderr, no traceback -----------------------------------

@pytest.mark.parametrize("args,expect", [
    ([f"--config={SMOKE}", "--config.train.prior=gaussian2"],
     "bbg_jax.main: train.prior='gaussian2': allowed 'gaussian', 'uniform'"),
    (["--config=experiments/no_such_experiment.py"],
     "bbg_jax.main: --config='experiments/no_such_experiment.py': no such file"),
], ids=["bad override", "missing config file"])
def test_cli_prints_one_line(tmp_path, args, expect):
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "bbg_jax.main", *args, f"--workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert not workdir.exists()
