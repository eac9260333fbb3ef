"""SipHash/hash_32 as the kernel computes them (check values from docs/semantics.md §4)."""

from __future__ import annotations

import ipaddress

from impl.siphash import fold_addr, hash_32, hsiphash_u32, siphash

KEY = (int.from_bytes(bytes(range(8)), "little"), int.from_bytes(bytes(range(8, 16)), "little"))


def test_siphash24_reference_vectors() -> None:
    # The SipHash paper's vectors (key 00..0f, message 00..n-1) pin the round structure.
    assert siphash(b"", KEY) == 0x726FDB47DD0E0E31
    assert siphash(bytes(range(15)), KEY) == 0xA129CA6149BE45E5
    assert siphash(bytes(range(8)), KEY) == 0x93F5F5799A932462


def test_hsiphash_mh_check_values() -> None:
    a = int(ipaddress.ip_address("10.0.0.1"))
    assert hsiphash_u32(a, (2654435761, 2654435761)) == 50859236
    assert 50859236 % 4093 == 3711


def test_hash_32_sh_check_values() -> None:
    a = int(ipaddress.ip_address("10.0.0.1"))
    assert hash_32(a, 8) == 39
    assert hash_32(a + 1234, 8) == 128


def test_fold_ipv6_xors_words() -> None:
    addr = ipaddress.ip_address("2001:db8::1")
    assert fold_addr(addr) == 0x20010DB8 ^ 0 ^ 0 ^ 1
    assert fold_addr(ipaddress.ip_address("10.0.0.1")) == 0x0A000001
