"""The two hash functions IPVS schedulers use, bit-exact with the kernel.

* :func:`hash_32` is ``include/linux/hash.h`` ``hash_32(val, bits)`` (generic C version):
  multiply by ``GOLDEN_RATIO_32`` modulo 2**32 and keep the top ``bits`` bits (sh, dh).
* :func:`hsiphash_u32` is ``lib/siphash.c`` ``hsiphash(&v, 4, key)`` **on 64-bit kernels**,
  where "half SipHash" is really SipHash-1-3 with 64-bit key words, truncated to 32 bits
  (``HPOSTAMBLE`` returns ``(v0 ^ v1) ^ (v2 ^ v3)`` as u32). ip_vs_mh.c hashes one u32 this way.
"""

from __future__ import annotations

from impl.types import IPAddress

GOLDEN_RATIO_32 = 0x61C88647
_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1

# "somepseudorandomlygeneratedbytes" (lib/siphash.c SIPHASH_CONST_0..3)
_C0 = 0x736F6D6570736575
_C1 = 0x646F72616E646F6D
_C2 = 0x6C7967656E657261
_C3 = 0x7465646279746573


def hash_32(val: int, bits: int) -> int:
    """``hash_32(val, bits)``: ``(val * 0x61C88647 mod 2**32) >> (32 - bits)``."""
    return (((val & _M32) * GOLDEN_RATIO_32) & _M32) >> (32 - bits)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash(data: bytes, key: tuple[int, int], c_rounds: int = 2, d_rounds: int = 4) -> int:
    """SipHash-c-d with a 128-bit key given as two little-endian u64 words; 64-bit result."""
    k0, k1 = key[0] & _M64, key[1] & _M64
    v0, v1, v2, v3 = _C0 ^ k0, _C1 ^ k1, _C2 ^ k0, _C3 ^ k1
    n = len(data)
    full = n - (n % 8)
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        for _ in range(c_rounds):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    for _ in range(c_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(d_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """Kernel ``hsiphash(data, len, key)`` on 64-bit: SipHash-1-3, low 32 bits of the result."""
    return siphash(data, key, 1, 3) & _M32


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """``hsiphash(&v, sizeof(u32), key)`` for a host-order u32 ``v`` on little-endian x86-64."""
    return hsiphash((value & _M32).to_bytes(4, "little"), key)


def fold_addr(addr: IPAddress) -> int:
    """Host-order u32 the sh/dh/mh schedulers hash: the IPv4 address, or for IPv6 the XOR of
    its four 32-bit words (``addr->ip6[0]^...^ip6[3]`` then ``ntohl``; XOR commutes with it)."""
    v = int(addr)
    if addr.version == 4:
        return v
    return (v >> 96 ^ v >> 64 ^ v >> 32 ^ v) & _M32
