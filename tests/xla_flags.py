"""XLA_FLAGS for the processes the tests start.

Most of those processes are short runs (a few steps of the smoke config, an evaluation) whose
time is XLA's compile on a 2-core CPU. LLVM at optimisation level 0 compiles in about two thirds
of the time (a narrow BigBiGAN D step: first call 30 s -> 20.5 s) and changes the machine code,
not what the programs compute. The test processes themselves, which run the joint-term games
(hundreds of steps), keep XLA's default (the suite: 30 min 25 s so, 33 min 8 s with level 0
everywhere): tests/conftest.py sets XLA_FLAGS for the children after its own backend started.
``BBG_TEST_XLA_FLAGS`` replaces the setting (empty: XLA's defaults everywhere); docs/testing.md.
"""

import os

TEST_XLA_FLAGS = os.environ.get("BBG_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")


def cpu_devices(n: int) -> str:
    """XLA_FLAGS for a process that simulates ``n`` CPU devices."""
    return f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={n}".strip()
