"""Entry point: ``python -m bbg_jax.main --config=experiments/<name>.py --workdir=DIR``.

``--mode=eval --workdir=DIR [--step=N]`` evaluates a checkpoint instead.

Overrides: ``--config.train.num_steps=100`` and the like. Everything else lives in the library.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bbg_jax import loop, sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming from the workdir); eval: evaluate a checkpoint "
                          "and write WORKDIR/eval/step_N/report.json.")
_STEP = flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: latest).")


class _QuietOrbax(logging.Filter):
    """Orbax logs every file it writes at INFO; keep its warnings, drop the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    del argv
    absl_logging.get_absl_handler().addFilter(_QuietOrbax())
    try:
        sharding.maybe_initialize_distributed()
    except sharding.DistributedConfigError as e:
        sys.exit(f"bbg_jax.main: {e}")  # one line, no traceback: the launch environment is wrong
    if _MODE.value == "train":
        if _CONFIG.value is None:
            raise app.UsageError("--mode=train needs --config=experiments/<name>.py")
        loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
        from bbg_jax.evaluation import standalone

        # Without --config, the config the run saved in WORKDIR/config.json is used.
        standalone.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
