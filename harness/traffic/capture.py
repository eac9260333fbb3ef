"""AF_PACKET capture sockets with classic BPF filters, opened inside the topology's namespaces.

One socket per namespace, all owned by the calling process: a socket stays in the namespace it
was created in, so no helper process per namespace is needed. AF_PACKET taps frames before
netfilter, so a packet later dropped by a rule in that namespace is still seen.

The kernel filter keeps Python's per-frame work small (it matters ~20x in the VM lane): only
incoming frames (never our own sends), only IPv4/IPv6 with the transport protocols the
observer cares about, and only the first :data:`SNAPLEN` bytes (headers, plus the embedded
header of an ICMP error).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from harness.traffic.packets import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6

if TYPE_CHECKING:
    from harness.topology import Node

ETH_P_ALL: Final = 0x0003
SO_ATTACH_FILTER: Final = 26
SO_RCVBUFFORCE: Final = 33
PACKET_OUTGOING: Final = 4
SKF_AD_PKTTYPE: Final = 0xFFFFF000 + 4  # SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE, as u32
SNAPLEN: Final = 192
RCVBUF: Final = 32 * 1024 * 1024

#: what a real server's observer keeps: transport packets and tunnels (TUN)
RS_PROTOS: Final = (6, 17, 132, IPPROTO_IPIP, IPPROTO_IPV6)
#: plus ICMP: an echo request to the VIP that reaches a real server was forwarded (wrong, §1.8)
RS_PROTOS_V4: Final = (*RS_PROTOS, IPPROTO_ICMP)
RS_PROTOS_V6: Final = (*RS_PROTOS, IPPROTO_ICMPV6)
#: what the client's observer keeps: RSTs, ABORTs, ICMP errors and echo replies
CLIENT_PROTOS_V4: Final = (6, 132, IPPROTO_ICMP)
CLIENT_PROTOS_V6: Final = (6, 132, IPPROTO_ICMPV6)

# classic BPF opcodes (linux/bpf_common.h)
_LDB_ABS: Final = 0x30
_LDH_ABS: Final = 0x28
_JEQ_K: Final = 0x15
_RET_K: Final = 0x06


class CaptureError(OSError):
    """A capture socket could not be opened; the message names the namespace and interface."""


def bpf_program(
    v4_protos: Iterable[int], v6_protos: Iterable[int], snaplen: int = SNAPLEN
) -> list[tuple[int, int, int, int]]:
    """A classic BPF program: incoming IPv4 frames whose protocol is in ``v4_protos`` and
    IPv6 frames whose next header is in ``v6_protos``, truncated to ``snaplen``."""
    v4, v6 = list(v4_protos), list(v6_protos)
    # 0 ld pkttype | 1 outgoing? drop | 2 ld ethertype | 3 IPv4? | 4 IPv6? else drop
    # v4: ld proto, one test per protocol (match: accept), ret 0
    # v6: ld next header, one test per protocol (match: accept), drop: ret 0 | accept: ret snaplen
    v4_start = 5
    v6_start = v4_start + 1 + len(v4) + 1
    drop = v6_start + 1 + len(v6)
    accept = drop + 1
    prog: list[tuple[int, int, int, int]] = []

    def to(target: int) -> int:  # classic BPF jumps are relative to the next instruction
        return target - (len(prog) + 1)

    prog.append((_LDB_ABS, 0, 0, SKF_AD_PKTTYPE))
    prog.append((_JEQ_K, to(drop), 0, PACKET_OUTGOING))
    prog.append((_LDH_ABS, 0, 0, 12))
    prog.append((_JEQ_K, to(v4_start), 0, 0x0800))
    prog.append((_JEQ_K, to(v6_start), to(drop), 0x86DD))
    prog.append((_LDB_ABS, 0, 0, 14 + 9))
    for proto in v4:
        prog.append((_JEQ_K, to(accept), 0, proto))
    prog.append((_RET_K, 0, 0, 0))
    prog.append((_LDB_ABS, 0, 0, 14 + 6))
    for proto in v6:
        prog.append((_JEQ_K, to(accept), 0, proto))
    prog.append((_RET_K, 0, 0, 0))
    prog.append((_RET_K, 0, 0, snaplen))
    assert len(prog) == accept + 1
    return prog


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with ``prog`` (struct sock_fprog pointing at packed sock_filters)."""
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Capture:
    """A non-blocking, filtered AF_PACKET socket on one interface of one namespace.

    ``where`` is the observer's label: a real server index, or None for the client.
    """

    def __init__(
        self, node: Node, ifname: str, prog: list[tuple[int, int, int, int]], where: int | None
    ) -> None:
        self.where = where
        self.node = node
        self.ifname = ifname
        try:
            # protocol 0 receives nothing until bind(): the filter is in place before any frame
            sock = node.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise CaptureError(
                exc.errno,
                f"AF_PACKET socket in {node.netns}: {exc.strerror} (needs root / CAP_NET_RAW)",
            ) from exc
        try:
            attach_filter(sock, prog)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise CaptureError(
                exc.errno, f"capture on {ifname} in {node.netns}: {exc.strerror}"
            ) from exc
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, limit: int = 100_000) -> list[bytes]:
        """Every frame queued now (at most ``limit``), without blocking."""
        out: list[bytes] = []
        recv = self.sock.recv
        try:
            while len(out) < limit:
                out.append(recv(SNAPLEN))
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rs_capture(node: Node, ifname: str, index: int) -> Capture:
    """Real server ``index``'s observer: transport packets, ICMP(v6) (the parser keeps only
    echo requests) and tunnels arriving on ``ifname``."""
    return Capture(node, ifname, bpf_program(RS_PROTOS_V4, RS_PROTOS_V6), index)


def client_capture(node: Node, ifname: str) -> Capture:
    """The client's observer: answers (RST, ABORT, ICMP errors, echo replies) arriving on
    ``ifname``."""
    return Capture(node, ifname, bpf_program(CLIENT_PROTOS_V4, CLIENT_PROTOS_V6), None)
