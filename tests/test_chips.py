"""One chip table: the device kinds jax reports resolve to the chip the compile check names."""

import pytest

from bbg_jax import chips, compile_check


@pytest.mark.parametrize("device_kind, name", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100_pcie"),
    ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100"), ("TPU v4", "v4"),
    ("TPU v5 lite", "v5e"), ("TPU v5p", "v5p"), ("TPU v6 lite", "v6e"), ("TPU v3", "v3"),
])
def test_device_kind_names_the_chip(device_kind, name):
    assert chips.from_device_kind(device_kind) is chips.BY_NAME[name]


def test_cpu_and_unknown_kinds_have_no_chip():
    assert chips.from_device_kind("cpu") is None
    assert chips.from_device_kind("NVIDIA GeForce RTX 4090") is None


def test_paper_topology_prefix_is_a_chip():
    assert compile_check.PAPER_TOPOLOGY.split(":")[0] in chips.BY_NAME
    assert chips.BY_NAME["v5p"].hbm_bytes == 95 * chips.GIB
