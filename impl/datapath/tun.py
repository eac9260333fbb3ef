"""The TUN device through which packets for the VIPs reach the datapath process.

``IFF_TUN | IFF_NO_PI``: each read is one IP packet, each write injects one IP packet into the
director's stack as if it arrived on the device (the "local" verdict uses that). The device is
not persistent: it disappears when the process's descriptor closes, however the process ends.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class TunError(OSError):
    """The TUN device could not be created (message names the device and the fix)."""


def open_tun(name: str) -> int:
    """Create TUN device ``name`` in the current network namespace; return its non-blocking fd."""
    if not 0 < len(name.encode()) <= 15:
        raise TunError(f"TUN name {name!r} must be 1..15 bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunError("/dev/net/tun missing: modprobe tun (CONFIG_TUN) and retry") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise TunError(
            f"cannot create TUN device {name}: {exc.strerror} "
            "(name taken in this namespace, or not root)"
        ) from None
    return fd


def read_batch(fd: int, limit: int = 256, size: int = 65535) -> list[bytes]:
    """Up to ``limit`` packets that are waiting (non-blocking; empty list when none)."""
    out: list[bytes] = []
    for _ in range(limit):
        try:
            out.append(os.read(fd, size))
        except BlockingIOError:
            break
    return out
