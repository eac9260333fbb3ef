"""Putting decided packets on the wire, one way per IPVS forwarding method.

- DR: the unchanged IP packet in an Ethernet frame to the real server's MAC, sent with an
  AF_PACKET socket on the director's segment device (what ip_vs_dr_xmit achieves by routing).
- TUN: IPIP (v4) / IPv6-in-IPv6 to the RIP. A raw socket of protocol IPIP/IPV6 lets the kernel
  build the outer header (source from the route: the DIP), so no ipip module is needed here.
- NAT, NAT replies and ICMP errors: a header-included raw socket (IPPROTO_RAW); the kernel routes
  it and resolves the neighbour. Any source address is allowed on such a socket.
- local: written back into the TUN, so the director's own stack receives it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from impl.types import IPAddress

_ETH_P = {4: b"\x08\x00", 6: b"\x86\xdd"}
_SIOCGIFHWADDR = 0x8927
_SIOCGIFMTU = 0x8921
_IP_MTU_DISCOVER, _IP_PMTUDISC_DONT = 10, 0
_OUTER = {4: 20, 6: 40}  # outer header bytes of IPIP / IPv6-in-IPv6
_IPPROTO_IPIP = 4
_IPPROTO_IPV6 = 41


class ForwardError(OSError):
    """A packet could not be sent (e.g. no MAC known for a DR real server)."""


def mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def interface_mac(name: str) -> bytes:
    """The MAC of interface ``name`` in the current namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), _SIOCGIFHWADDR, struct.pack("256s", name.encode()[:15]))
    return info[18:24]


def interface_mtu(name: str) -> int:
    """The MTU of interface ``name`` in the current namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), _SIOCGIFMTU, struct.pack("16si", name.encode()[:15], 0))
    return int(struct.unpack_from("i", info, 16)[0])


def _send_only(sock: socket.socket) -> socket.socket:
    # Raw sockets of a protocol also receive every packet of it; we never read, so make the
    # receive queue tiny instead of letting it pin memory.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    return sock


class Senders:
    """The sockets of one datapath process (created in the director namespace)."""

    def __init__(self, tun_fd: int, segment_if: str, rs_macs: dict[IPAddress, str]) -> None:
        self.tun_fd = tun_fd
        self.raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.ipip = _send_only(socket.socket(socket.AF_INET, socket.SOCK_RAW, _IPPROTO_IPIP))
        # an inner packet without DF may be carried in fragments (IPVS copies DF outwards);
        # packets that must not be fragmented never reach this socket (see tunnel_mtu)
        self.ipip.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
        self.ip6ip6 = _send_only(socket.socket(socket.AF_INET6, socket.SOCK_RAW, _IPPROTO_IPV6))
        self.frames = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: send only
        try:
            self.frames.bind((segment_if, 0))
        except OSError as exc:
            self.close()
            raise ForwardError(
                exc.errno, f"cannot send frames on {segment_if}: {exc.strerror}"
            ) from None
        self.segment_if = segment_if
        self.segment_mtu = interface_mtu(segment_if)
        self.src_mac = interface_mac(segment_if)
        self.rs_macs = {addr: mac_bytes(mac) for addr, mac in rs_macs.items()}
        self._sockaddrs: dict[IPAddress, tuple[str, int] | tuple[str, int, int, int]] = {}

    def close(self) -> None:
        for s in (self.raw4, self.raw6, self.ipip, self.ip6ip6, self.frames):
            s.close()

    def local(self, data: bytes | bytearray) -> None:
        os.write(self.tun_fd, data)

    def _sockaddr(self, addr: IPAddress) -> tuple[str, int] | tuple[str, int, int, int]:
        sa = self._sockaddrs.get(addr)
        if sa is None:
            if len(self._sockaddrs) > 65536:
                self._sockaddrs.clear()
            text = str(addr)
            sa = self._sockaddrs[addr] = (text, 0) if addr.version == 4 else (text, 0, 0, 0)
        return sa

    def routed(self, data: bytes | bytearray, dst: IPAddress) -> None:
        (self.raw4 if dst.version == 4 else self.raw6).sendto(data, self._sockaddr(dst))

    def tunnel(self, data: bytes | bytearray, rip: IPAddress) -> None:
        (self.ipip if rip.version == 4 else self.ip6ip6).sendto(data, self._sockaddr(rip))

    def tunnel_mtu(self, version: int) -> int:
        """Largest inner packet that fits the tunnel to a real server on the segment."""
        return self.segment_mtu - _OUTER[version]

    def direct(self, data: bytes | bytearray, rip: IPAddress, version: int) -> None:
        mac = self.rs_macs.get(rip)
        if mac is None:
            raise ForwardError(
                f"no MAC known for DR real server {rip} on {self.segment_if}: "
                "add it to the config's rs_macs"
            )
        self.frames.send(mac + self.src_mac + _ETH_P[version] + bytes(data))
