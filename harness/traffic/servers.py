"""Small servers in the real-server namespaces that answer with their name, for real connections.

One selector thread in the test process serves every listener of every real server (a socket
keeps the namespace it was created in, so no process per namespace). A TCP server sends its
name (``rs1\\n``) when it accepts, then waits for the client to close first — so a client FIN
starts the connection's teardown, as lifecycle cases want — and closes its side on EOF. A UDP
server answers each datagram with its name.

Client side: :func:`fetch_name` connects from the client namespace (any pool address and port,
full handshake through the VIP, NAT return path through the director), reads the name and
closes (client FIN); :func:`ask_name_udp` does the same with one datagram.

    with serve(net, tcp_ports=(80,)) as servers:
        assert fetch_name(net, vip(IPV4), 80) == "rs2"
        servers.accepted  # [(rs index, peer, local address)]
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.addresses import cip
from harness.traffic.engine import slowdown
from harness.traffic.packets import TrafficError
from impl.types import Family, IPAddress

if TYPE_CHECKING:
    from harness.topology import Net

#: seconds a client helper waits for the server's answer (times the slowdown)
ANSWER_TIMEOUT = 2.0
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h


@dataclass(frozen=True, slots=True)
class Accepted:
    """One connection or datagram a real server answered."""

    rs: int
    proto: str
    peer: tuple[str, int]
    local: tuple[str, int]


@dataclass(eq=False)
class NameServers:
    """The running servers; stopped (thread joined, sockets closed) by :meth:`stop`."""

    net: Net
    tcp_ports: Sequence[int]
    udp_ports: Sequence[int]
    accepted: list[Accepted] = field(default_factory=list)
    _sel: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    _owned: list[socket.socket] = field(default_factory=list)
    _wake: tuple[socket.socket, socket.socket] | None = None
    _thread: threading.Thread | None = None
    _stopping: bool = False
    _error: BaseException | None = None

    def start(self) -> None:
        families = self.net.topology.families
        for i, node in enumerate(self.net.rs):
            name = f"rs{i + 1}".encode()
            for fam in families:
                af = socket.AF_INET if fam is Family.IPV4 else socket.AF_INET6
                for port in self.tcp_ports:
                    s = self._listener(node.socket(af, socket.SOCK_STREAM), af, port, i)
                    s.listen(128)
                    self._sel.register(s, selectors.EVENT_READ, ("listen", i, name))
                for port in self.udp_ports:
                    s = self._listener(node.socket(af, socket.SOCK_DGRAM), af, port, i)
                    if af == socket.AF_INET:
                        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                    else:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                    self._sel.register(s, selectors.EVENT_READ, ("udp", i, name))
        self._wake = socket.socketpair()
        self._owned.extend(self._wake)
        self._sel.register(self._wake[0], selectors.EVENT_READ, ("wake", -1, b""))
        self._thread = threading.Thread(target=self._loop, name="lvsconf-name-servers", daemon=True)
        self._thread.start()

    def _listener(self, s: socket.socket, af: int, port: int, rs: int) -> socket.socket:
        self._owned.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if af == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", port))
        except OSError as exc:
            raise TrafficError(
                f"rs{rs + 1}: cannot listen on port {port}: {exc.strerror}; "
                "is another server running there?"
            ) from exc
        s.setblocking(False)
        return s

    def _loop(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._sel.select():
                    role, rs, name = key.data
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if role == "wake":
                        return
                    if role == "listen":
                        self._accept(sock, rs, name)
                    elif role == "udp":
                        self._answer_udp(sock, rs, name)
                    else:
                        self._read_until_eof(sock)
        except BaseException as exc:  # reported by stop(), not lost in the thread
            self._error = exc

    def _accept(self, listener: socket.socket, rs: int, name: bytes) -> None:
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            return
        self.accepted.append(Accepted(rs, "tcp", peer[:2], conn.getsockname()[:2]))
        conn.setblocking(False)
        conn.send(name + b"\n")  # a few bytes always fit an empty send buffer
        self._sel.register(conn, selectors.EVENT_READ, ("conn", rs, name))

    def _answer_udp(self, sock: socket.socket, rs: int, name: bytes) -> None:
        try:
            _data, ancdata, _flags, peer = sock.recvmsg(2048, socket.CMSG_SPACE(64))
        except BlockingIOError:
            return
        # answer from the address the datagram was sent to (the VIP for DR/TUN, the RIP for
        # NAT): a wildcard-bound socket would otherwise pick the route's source, the RIP
        reply_cmsg = []
        local = ""
        for level, kind, data in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                local = socket.inet_ntop(socket.AF_INET, data[8:12])
                reply_cmsg = [(level, kind, b"\0" * 4 + data[8:12] + b"\0" * 4)]
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                local = socket.inet_ntop(socket.AF_INET6, data[:16])
                reply_cmsg = [(level, kind, data[:16] + b"\0" * 4)]
        self.accepted.append(Accepted(rs, "udp", peer[:2], (local, sock.getsockname()[1])))
        sock.sendmsg([name + b"\n"], reply_cmsg, 0, peer)

    def _read_until_eof(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if not data:  # the client's FIN (or a reset): close our side
            self._sel.unregister(conn)
            conn.close()

    def stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=10 * slowdown())
        for key in list(self._sel.get_map().values()):
            sock = key.fileobj
            if isinstance(sock, socket.socket) and sock not in self._owned:
                sock.close()
        self._sel.close()
        for s in self._owned:
            s.close()
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def serve(
    net: Net, tcp_ports: Sequence[int] = (80,), udp_ports: Sequence[int] = ()
) -> Iterator[NameServers]:
    """Run name servers on every real server (all families of the topology); stop on exit."""
    servers = NameServers(net, tuple(tcp_ports), tuple(udp_ports))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def _client_socket(
    net: Net, daddr: IPAddress, kind: int, saddr: IPAddress | None, sport: int
) -> socket.socket:
    fam = Family.of(daddr)
    af = socket.AF_INET if fam is Family.IPV4 else socket.AF_INET6
    src = saddr if saddr is not None else cip(fam, 15, 1)
    if Family.of(src) is not fam:
        raise TrafficError(f"source {src} and destination {daddr} differ in family; use one family")
    if sport == 20:
        raise TrafficError(
            "source port 20 is never scheduled by IPVS (docs/semantics.md §1.5); "
            "pick another source port"
        )
    s = net.client.socket(af, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((str(src), sport))  # the pool is AnyIP on the client: any address binds
        s.settimeout(ANSWER_TIMEOUT * slowdown())
    except BaseException:
        s.close()
        raise
    return s


def _read_line(s: socket.socket, deadline: float) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        if time.monotonic() > deadline:
            break
        chunk = s.recv(64)
        if not chunk:
            break
        data += chunk
    return data


def fetch_name(
    net: Net, daddr: IPAddress, dport: int, saddr: IPAddress | None = None, sport: int = 0
) -> str:
    """Connect from the client (``saddr``:``sport``, default a pool address of client network
    15 and any port) to ``daddr``:``dport``, return the name the server sends, close first."""
    s = _client_socket(net, daddr, socket.SOCK_STREAM, saddr, sport)
    timeout = ANSWER_TIMEOUT * slowdown()
    with s:
        try:
            s.connect((str(daddr), dport))
            data = _read_line(s, time.monotonic() + timeout)
        except (TimeoutError, ConnectionError) as exc:
            raise TrafficError(
                f"tcp {daddr}:{dport}: no answer ({exc.__class__.__name__}); "
                "is a server listening and the path balanced?"
            ) from exc
        s.shutdown(socket.SHUT_WR)  # the client's FIN first
    return data.decode().strip()


def ask_name_udp(
    net: Net, daddr: IPAddress, dport: int, saddr: IPAddress | None = None, sport: int = 0
) -> str:
    """Send one datagram from the client to ``daddr``:``dport``; return the name that answers."""
    s = _client_socket(net, daddr, socket.SOCK_DGRAM, saddr, sport)
    with s:
        s.connect((str(daddr), dport))  # only an answer from daddr:dport is accepted
        s.send(b"who?\n")
        try:
            data = s.recv(64)
        except TimeoutError as exc:
            raise TrafficError(
                f"udp {daddr}:{dport}: no answer within {ANSWER_TIMEOUT * slowdown():.1f}s"
            ) from exc
    return data.decode().strip()
