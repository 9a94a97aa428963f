"""XLA_FLAGS for the processes the tests start.

XLA's compile time dominates this suite on a 2-core CPU: a narrow BigBiGAN step compiles in about
30 s and then runs in 0.3 s. LLVM at optimisation level 0 compiles it in two thirds of that time
and runs it as fast (the narrow shuffled-pairs run: first call 30 s -> 20.5 s, the next 31 steps
11.9 s -> 10.9 s; docs/testing.md). It changes the machine code, not what the programs compute.
``BBG_TEST_XLA_FLAGS`` replaces the setting (empty: XLA's defaults); tests/conftest.py applies it
to the test processes themselves.
"""

import os

TEST_XLA_FLAGS = os.environ.get("BBG_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")


def cpu_devices(n: int) -> str:
    """XLA_FLAGS for a process that simulates ``n`` CPU devices."""
    return f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={n}".strip()
