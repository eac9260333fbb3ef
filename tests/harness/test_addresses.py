"""The addressing plan: rs_index inverts rip and owns nothing else."""

from __future__ import annotations

import ipaddress

import pytest

from harness.addresses import rip, rs_index, vip
from impl.types import IPV4, IPV6, Family


@pytest.mark.parametrize("family", [IPV4, IPV6])
def test_rs_index_inverts_rip(family: Family) -> None:
    assert [rs_index(rip(family, k)) for k in range(200)] == list(range(200))
    assert rs_index(vip(family, 0)) is None


@pytest.mark.parametrize(
    "addr", ["198.18.10.10", "198.18.10.211", "2001:db8:a::10", "2001:db8:a::1:11"]
)
def test_rs_index_of_an_address_outside_the_real_servers_is_none(addr: str) -> None:
    assert rs_index(ipaddress.ip_address(addr)) is None
