"""The instance type as AWS describes it: architecture, a memory floor, and limits that fit."""

from __future__ import annotations

import pytest

from gitea_stack.sizing import HOST_RESERVE_MIB, InstanceTypeError, instance_facts, memory_limits_mib


@pytest.mark.parametrize("architectures, expected", [
    (["x86_64"], "x86_64"), (["i386", "x86_64"], "x86_64"), (["arm64"], "arm64")])
def test_the_architecture_is_the_one_aws_lists(architectures, expected):
    assert instance_facts("t3.medium", 4096, architectures).architecture == expected


def test_types_below_two_gib_are_refused_with_what_was_expected():
    with pytest.raises(InstanceTypeError, match="t3.micro has 1024 MiB of memory; expected at least 2048 MiB"):
        instance_facts("t3.micro", 1024, ["x86_64"])
    assert instance_facts("t3.small", 2048, ["x86_64"]).memory_mib == 2048


def test_types_without_an_ubuntu_architecture_are_refused():
    with pytest.raises(InstanceTypeError, match="mac2.metal runs arm64_mac; expected an instance type for x86_64 or arm64"):
        instance_facts("mac2.metal", 16384, ["arm64_mac"])


def test_limits_grow_with_memory_and_leave_the_host_its_reserve():
    small, large = memory_limits_mib(2048), memory_limits_mib(16384)
    assert large["gitea"] > small["gitea"] and large["postgres"] > small["postgres"]
    assert large["gitea"] + large["postgres"] <= 16384 - HOST_RESERVE_MIB
    assert small["nginx"] == large["nginx"]  # fixed caps for the small services
