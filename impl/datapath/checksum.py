"""Checksums the datapath must keep right when it rewrites packets.

Internet checksum (RFC 1071) for IPv4 headers, ICMP/ICMPv6 and full TCP/UDP recomputation;
incremental update (RFC 1624, eq. 3) for NAT rewrites, so a rewrite costs the same whatever the
payload size; CRC32c (RFC 3309/9260) for SCTP, which has no incremental form.
"""

from __future__ import annotations

import array
import struct
import sys

_LITTLE = sys.byteorder == "little"


def inet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The one's complement checksum of ``data`` as a host int, ready for ``struct.pack('!H')``."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    # Summing native-order words is fine: the one's complement sum is byte-order independent
    # (RFC 1071 §2(B)), so swap once at the end instead of per word.
    total = sum(array.array("H", bytes(data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    total = ~total & 0xFFFF
    if _LITTLE:
        total = ((total & 0xFF) << 8) | (total >> 8)
    return total


_FMT = {n: f"!{n // 2}H" for n in (2, 4, 6, 16, 18)}


def csum_replace(csum: int, old: bytes, new: bytes) -> int:
    """Checksum ``csum`` after the even-length field ``old`` became ``new`` (RFC 1624 eq. 3)."""
    if len(old) != len(new) or len(old) % 2:
        raise ValueError("csum_replace needs two fields of the same even length")
    fmt = _FMT.get(len(old)) or f"!{len(old) // 2}H"
    # sum(~m) over n words = n*0xFFFF - sum(m): one C-level sum per field instead of a loop
    olds: tuple[int, ...] = struct.unpack(fmt, old)
    news: tuple[int, ...] = struct.unpack(fmt, new)
    total = (~csum & 0xFFFF) + len(olds) * 0xFFFF - sum(olds) + sum(news)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The TCP/UDP/ICMPv6 pseudo-header for IPv4 (4-byte addresses) or IPv6 (16-byte)."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32c of ``data`` (the SCTP checksum; stored little-endian in the common header)."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
