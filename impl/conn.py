"""Connection and template entries, their timers, and the protocol state machines.

Mirrors ``ip_vs_conn.c`` (tables, ``ip_vs_conn_expire``, bind/unbind counters) and the state
tables of ``ip_vs_proto_tcp.c`` / ``_udp.c`` / ``_sctp.c`` (Linux 6.1.192, docs/semantics.md §3).
Times are float seconds on the caller's clock; a timer "fires" when ``expire(now)`` reaches its
deadline. Entries are mutable; the public, frozen views are ``impl.types.Template`` and
``Connection``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from impl.kernel_level import KernelLevel
from impl.schedulers.base import DestState
from impl.types import (
    Connection,
    Family,
    Fwd,
    IPAddress,
    PacketKind,
    Proto,
    ProtoTimeouts,
    Template,
)

# Directions of ip_vs_set_state (IP_VS_DIR_*), plus the TCP/SCTP INPUT_ONLY table used while a
# connection still has NOOUTPUT (DR/TUN: the director never sees replies).
INPUT, OUTPUT, INPUT_ONLY = 0, 1, 2

EXTENSION = 60.0  # ip_vs_conn_expire "expire_later": cp->timeout = 60*HZ

# ---------------------------------------------------------------- TCP (ip_vs_proto_tcp.c)
NO, ES, SS, SR, FW, TW, CL, CW, LA, LI, SA = range(11)
TCP_NAMES = (
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
)
_TCP_TIMEOUTS = (2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120)
_TCP_ACTIVE = frozenset({ES, SS, SR, SA})
# tcp_states[]: [direction*4 + event][state]; events syn, fin, ack, rst (tcp_state_idx).
_TCP_TABLE = (
    # INPUT
    (SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR),
    (CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, TW),
    (ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES),
    (CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, SR),
    # OUTPUT
    (SS, ES, SS, SR, SS, SS, SS, SS, SS, LI, SR),
    (TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW),
    (ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES),
    (CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL),
    # INPUT_ONLY
    (SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR),
    (CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW),
    (ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES),
    (CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL),
)


# tcp_state_idx: rst, then syn (SYN-ACK too), then fin, then ack; a kind not here: no flag.
_TCP_EVENTS: dict[str, int] = {"rst": 3, "syn": 0, "synack": 0, "fin": 1, "ack": 2, "data": 2}


# ---------------------------------------------------------------- SCTP (ip_vs_proto_sctp.c)
(sNO, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL) = range(14)
SCTP_NAMES = (
    "NONE",
    "INIT1",
    "INIT",
    "C-SENT",
    "C-REPLIED",
    "C-WAIT",
    "COOKIE",
    "C-ECHOED",
    "ESTABLISHED",
    "S-SENT",
    "S-RECEIVED",
    "S-ACK-SENT",
    "REJECTED",
    "CLOSED",
)
_SCTP_TIMEOUTS = (2, 4, 61, 61, 61, 61, 61, 61, 900, 61, 61, 61, 4, 61)
# Only the events a Flow can express: DATA (data/ack/...), INIT, ABORT.
_SCTP_TABLE = {
    (INPUT, "d"): (sES, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL),
    (INPUT, "i"): (sI1, sIN, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sIN, sIN),
    (INPUT, "ab"): (sCL, sCL, sCL, sCL, sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
    (OUTPUT, "d"): (sES, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL),
    (OUTPUT, "i"): (sCW, sCW, sCW, sCW, sCW, sCW, sCW, sCW, sES, sCW, sCW, sCW, sCW, sCW),
    (OUTPUT, "ab"): (sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
    (INPUT_ONLY, "d"): (sES, sI1, sIN, sCS, sCR, sES, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL),
    (INPUT_ONLY, "i"): (sI1, sIN, sIN, sIN, sIN, sIN, sCO, sCE, sES, sSS, sSR, sSA, sIN, sIN),
    (INPUT_ONLY, "ab"): (sCL, sCL, sCL, sCL, sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
}


_SCTP_EVENTS: dict[str, str] = {"init": "i", "abort": "ab"}


def _sctp_event(kind: PacketKind) -> str:
    return _SCTP_EVENTS.get(kind, "d")


UDP_TIMEOUT_DEFAULT = 300

#: The connection table key: af, proto, caddr, cport, vaddr, vport with the addresses as ints
#: (an int hashes several times faster than an ipaddress object, whose __hash__ is Python code).
ConnKey = tuple[Family, Proto, int, int, int, int]


@dataclass(eq=False, slots=True)
class Entry:
    """One ``struct ip_vs_conn``: a connection, or a template when ``template`` is set."""

    family: Family
    proto: Proto
    caddr: IPAddress
    cport: int
    vaddr: IPAddress
    vport: int
    daddr: IPAddress
    dport: int
    dest: DestState | None
    template: bool
    timeout: float  # cp->timeout: the next re-arm interval
    deadline: float = math.inf
    state: int = 0  # protocol state index; for templates 0 NONE / 1 ASSURED
    control: Entry | None = None
    n_control: int = 0
    inactive: bool = True  # IP_VS_CONN_F_INACTIVE (dest conn_flags always carry it)
    nooutput: bool = False  # IP_VS_CONN_F_NOOUTPUT (not NAT)
    fwd: Fwd | None = None
    pe_data: bytes | None = None
    pe_name: str = ""
    bypass: bool = False  # cache_bypass connection: no dest, forwards to the original daddr
    fwmark: int = 0
    ops: bool = False  # IP_VS_CONN_F_ONE_PACKET: never hashed, gone after its packet
    linked: bool = False  # in the connection/template table

    @property
    def assured(self) -> bool:
        return self.template and self.state == 1

    @property
    def conn_key(self) -> ConnKey:
        return (self.family, self.proto, int(self.caddr), self.cport, int(self.vaddr), self.vport)

    def state_name(self) -> str:
        """ip_vs_state_name()."""
        if self.template:
            return "ASSURED" if self.state == 1 else "NONE"
        if self.proto is Proto.TCP:
            return TCP_NAMES[self.state]
        if self.proto is Proto.SCTP:
            return SCTP_NAMES[self.state]
        if self.proto is Proto.UDP:
            return "UDP"
        return "NONE"

    def expires(self, now: float) -> int:
        """Whole seconds left, as seq_show prints them (jiffies_delta_to_msecs clamps at 0)."""
        left = self.deadline - now
        return max(0, math.floor(left + 1e-9))

    def as_template(self, now: float) -> Template:
        return Template(
            self.family,
            self.proto,
            self.caddr,
            self.cport,
            self.vaddr,
            self.vport,
            self.daddr,
            self.dport,
            "ASSURED" if self.state == 1 else "NONE",
            self.expires(now),
            self.pe_name if self.pe_data is not None else "",
            (self.pe_data or b"").decode("latin-1"),
        )

    def as_connection(self, now: float) -> Connection:
        return Connection(
            self.family,
            self.proto,
            self.caddr,
            self.cport,
            self.vaddr,
            self.vport,
            self.daddr,
            self.dport,
            self.state_name(),
            self.expires(now),
        )


def assure_control(cp: Entry) -> None:
    """ip_vs_control_assure_ct: a controlling template becomes ASSURED."""
    ct = cp.control
    if ct is not None and ct.template:
        ct.state = 1


def _set_active(cp: Entry, active: bool) -> None:
    """Move the dest's activeconns when a state change crosses active/inactive."""
    if cp.dest is None:
        return
    if not cp.inactive and not active:
        cp.dest.activeconns -= 1
        cp.inactive = True
    elif cp.inactive and active:
        cp.dest.activeconns += 1
        cp.inactive = False


def set_state(cp: Entry, direction: int, kind: PacketKind, timeouts: ProtoTimeouts) -> None:
    """ip_vs_set_state: the protocol's state_transition; sets cp.timeout (not the deadline)."""
    if cp.proto is Proto.TCP:
        off = direction
        if cp.nooutput:
            if direction == OUTPUT:
                cp.nooutput = False
            else:
                off = INPUT_ONLY
        event = _TCP_EVENTS.get(kind)
        # tcp_state_idx < 0 (no SYN/FIN/ACK/RST) jumps to the end with new_state = CLOSE.
        new = _TCP_TABLE[off * 4 + event][cp.state] if event is not None else CL
        if new != cp.state:
            _set_active(cp, new in _TCP_ACTIVE)
            if new == ES:
                assure_control(cp)
        cp.state = new
        cp.timeout = tcp_timeout(new, timeouts)
    elif cp.proto is Proto.UDP:
        cp.timeout = float(timeouts.udp)
        if direction == OUTPUT:
            assure_control(cp)
    elif cp.proto is Proto.SCTP:
        d = direction
        if cp.nooutput:
            if direction == OUTPUT:
                cp.nooutput = False
            else:
                d = INPUT_ONLY
        new = _SCTP_TABLE[(d, _sctp_event(kind))][cp.state]
        if new != cp.state:
            _set_active(cp, new == sES)
            if new == sES:
                assure_control(cp)
        cp.state = new
        cp.timeout = float(_SCTP_TIMEOUTS[new])


def tcp_timeout(state: int, timeouts: ProtoTimeouts) -> float:
    """The per-netns TCP timeout table: only ESTABLISHED and FIN_WAIT are settable."""
    if state == ES:
        return float(timeouts.tcp)
    if state == FW:
        return float(timeouts.tcpfin)
    return float(_TCP_TIMEOUTS[state])


def is_new_conn_expected(cp: Entry, conn_reuse_mode: int) -> bool:
    """core.c is_new_conn_expected: only uncontrolled connections in a closing state."""
    if cp.control is not None:
        return False
    if cp.proto is Proto.TCP:
        return cp.state in (TW, CL) or (
            bool(conn_reuse_mode & 2) and cp.state == FW and cp.nooutput
        )
    if cp.proto is Proto.SCTP:
        return cp.state == sCL
    return False


# ---------------------------------------------------------------- counters (conn.c 578-738)
def update_overload(dest: DestState, mode: int, level: KernelLevel) -> None:
    """__ip_vs_dest_update_overload (6.1.183+): hysteresis between l_threshold_val and u."""
    u = dest.u_threshold
    if not u:
        dest.overloaded = False
        return
    low = l_threshold_val(dest)
    conns = dest.totalconns
    if conns >= (low if mode > 0 else u):
        dest.overloaded = True
        return
    if conns >= (u if mode < 0 else low):
        return
    dest.overloaded = False


def l_threshold_val(dest: DestState) -> int:
    """Low threshold in use: l_threshold, or 75% of u (u - u/4) when l is 0."""
    return dest.l_threshold or (dest.u_threshold - (dest.u_threshold >> 2))


def bind_dest(cp: Entry, level: KernelLevel) -> None:
    """ip_vs_bind_dest: counters of a new entry."""
    dest = cp.dest
    if dest is None:
        return
    if cp.template:
        dest.persistconns += 1
        return
    if not cp.inactive:
        dest.activeconns += 1
    dest.totalconns += 1
    total, u = dest.totalconns, dest.u_threshold
    # Either level acts only when total reaches u (u=0: no threshold, and total >= 1 here);
    # testing that first spares the level property (Python code) on almost every bind.
    if total != u and not (u and total >= u):
        return
    if level.overload_rework:
        if total == u:
            update_overload(dest, 1, level)
    elif u and total >= u:
        dest.overloaded = True  # pre-6.1.183: re-set at every bind at or above u


def unbind_dest(cp: Entry, level: KernelLevel) -> None:
    """ip_vs_unbind_dest: counters of an entry going away."""
    dest = cp.dest
    if dest is None:
        return
    if cp.template:
        dest.persistconns -= 1
        return
    if not cp.inactive:
        dest.activeconns -= 1
    old = dest.totalconns
    dest.totalconns -= 1
    if level.overload_rework:
        if old == l_threshold_val(dest):
            update_overload(dest, -1, level)
        return
    # Pre-6.1.183 ip_vs_unbind_dest.
    if dest.l_threshold:
        if dest.totalconns < dest.l_threshold:
            dest.overloaded = False
    elif dest.u_threshold:
        if dest.totalconns * 4 < dest.u_threshold * 3:
            dest.overloaded = False
    else:
        dest.overloaded = False
