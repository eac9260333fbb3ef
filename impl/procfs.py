"""Render and parse ``/proc/net/ip_vs_conn`` and ``/proc/net/ip_vs`` exactly as Linux does.

The formats are the same from 5.10 to 7.2; only the table size in the ip_vs header differs
(:func:`conn_tab_size`).

Formats are the ``seq_printf`` strings of ``ip_vs_conn_seq_show`` (conn.c 1108) and
``ip_vs_info_seq_show`` (ctl.c 2216), Debian build (HZ=250, IP_VS_TAB_BITS=12). Quirks kept:
IPv4 addresses are 8 uppercase hex digits of the host-order value; IPv6 is ``%pI6`` (8 groups of
4 lowercase digits, never compressed); the persistence timeout in ``ip_vs`` is in jiffies; an
IPv6 service's netmask (a prefix length stored raw) is printed through ``ntohl``, so /64 shows
``40000000`` on little-endian hosts; the ``ops`` tag only exists for IPv4 and fwmark services.

Row order: the kernel prints in hash-bucket order, which the model does not reproduce; compare
tables as multisets. A row is a template when its proto is ``IP``, or when its client port is
0 and its state is ``NONE``/``ASSURED``, or when it carries a PE name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from impl.errors import ProcParseError
from impl.types import (
    Connection,
    Dest,
    Family,
    Fwd,
    IPAddress,
    Proto,
    Service,
    ServiceKey,
    SvcFlag,
    Template,
    full_netmask,
)

if TYPE_CHECKING:
    from impl.director import Director

HZ = 250
CONN_TAB_SIZE = 1 << 12  # the global table, IP_VS_TAB_BITS=12 (before 7.2)
#: 7.2's per-netns table (KernelLevel.conn_tab_per_netns) starts at 1 << IP_VS_CONN_TAB_MIN_BITS
#: buckets and grows by delayed work once the entries pass size >> 2 (conn_lfactor -2 in a
#: non-init netns: ip_vs_conn_default_load_factor, ip_vs_conn.c 7.2.13); growth is not modelled.
NETNS_CONN_TAB_MIN = 1 << 8
CONN_HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
INFO_HEADER = (
    f"IP Virtual Server version 1.2.1 (size={CONN_TAB_SIZE})\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
)
_FWD_NAME = {Fwd.NAT: "Masq", Fwd.LOCAL: "Local", Fwd.TUN: "Tunnel", Fwd.DR: "Route"}
_FWD_BY_NAME = {v: k for k, v in _FWD_NAME.items()}
_PROTO_BY_NAME = {"IP": Proto.IP, "TCP": Proto.TCP, "UDP": Proto.UDP, "SCTP": Proto.SCTP}


def _addr(a: IPAddress) -> str:
    if isinstance(a, ipaddress.IPv4Address):
        return f"{int(a):08X}"
    return ":".join(f"{(int(a) >> (112 - 16 * i)) & 0xFFFF:04x}" for i in range(8))


def _row(
    proto: Proto,
    caddr: IPAddress,
    cport: int,
    vaddr: IPAddress,
    vport: int,
    daddr: IPAddress,
    dport: int,
    state: str,
    expires: int | None,
    pe: str,
) -> str:
    return (
        f"{proto.name:<3} {_addr(caddr)} {cport:04X} {_addr(vaddr)} {vport:04X} "
        f"{_addr(daddr)} {dport:04X} {state:<11} {expires or 0:7d}{pe}\n"
    )


def render_ip_vs_conn(templates: Iterable[Template], connections: Iterable[Connection]) -> str:
    """The whole file: header, then templates, then connections (see module note on order)."""
    out = [CONN_HEADER]
    for t in templates:
        pe = f" {t.pe_name} {t.pe_data}" if t.pe_name else ""
        out.append(
            _row(
                t.proto,
                t.caddr,
                t.cport,
                t.vaddr,
                t.vport,
                t.daddr,
                t.dport,
                t.state,
                t.expires,
                pe,
            )
        )
    for c in connections:
        out.append(
            _row(
                c.proto,
                c.caddr,
                c.cport,
                c.vaddr,
                c.vport,
                c.daddr,
                c.dport,
                c.state,
                c.expires,
                "",
            )
        )
    return "".join(out)


def _parse_addr(text: str, line: str) -> IPAddress:
    try:
        if ":" in text:
            return ipaddress.IPv6Address(text)
        if len(text) != 8:
            raise ValueError(text)
        return ipaddress.IPv4Address(int(text, 16))
    except ValueError:
        raise ProcParseError(
            f"bad address {text!r} in line {line!r}; expected 8 hex digits or a full IPv6 address"
        ) from None


def _parse_port(text: str, line: str) -> int:
    if len(text) != 4:
        raise ProcParseError(f"bad port {text!r} in line {line!r}; expected 4 hex digits")
    try:
        return int(text, 16)
    except ValueError:
        raise ProcParseError(f"bad port {text!r} in line {line!r}") from None


def parse_ip_vs_conn(text: str) -> tuple[list[Template], list[Connection]]:
    """Parse the file (header optional) into templates and connections."""
    templates: list[Template] = []
    conns: list[Connection] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Pro "):
            continue
        parts = line.split(maxsplit=10)
        if len(parts) not in (9, 11):
            raise ProcParseError(
                f"line {line!r} has {len(parts)} fields; /proc/net/ip_vs_conn "
                "rows have 9 (11 with PEName PEData)"
            )
        pname, c, cp, v, vp, d, dp, state, exp = parts[:9]
        proto = _PROTO_BY_NAME.get(pname)
        if proto is None:
            raise ProcParseError(f"unknown protocol {pname!r} in line {line!r}")
        caddr, vaddr, daddr = (_parse_addr(x, line) for x in (c, v, d))
        cport, vport, dport = (_parse_port(x, line) for x in (cp, vp, dp))
        if not exp.isdigit():
            raise ProcParseError(f"bad Expires {exp!r} in line {line!r}")
        family = Family.of(caddr)
        pe_name, pe_data = (parts[9], parts[10]) if len(parts) == 11 else ("", "")
        if proto is Proto.IP or pe_name or (cport == 0 and state in ("NONE", "ASSURED")):
            if state not in ("NONE", "ASSURED"):
                raise ProcParseError(
                    f"template state {state!r} in line {line!r}; expected NONE or ASSURED"
                )
            templates.append(
                Template(
                    family,
                    proto,
                    caddr,
                    cport,
                    vaddr,
                    vport,
                    daddr,
                    dport,
                    "ASSURED" if state == "ASSURED" else "NONE",
                    int(exp),
                    pe_name,
                    pe_data,
                )
            )
        else:
            conns.append(
                Connection(family, proto, caddr, cport, vaddr, vport, daddr, dport, state, int(exp))
            )
    return templates, conns


def _netmask_field(service: Service) -> int:
    if service.family is Family.IPV4:
        return service.mask & 0xFFFFFFFF
    # prefix length stored raw, printed through ntohl (x86: byte-swapped)
    return int.from_bytes(service.mask.to_bytes(4, "little"), "big")


def render_service(service: Service, dests: Iterable[tuple[Dest, int, int]]) -> str:
    """One service block; ``dests`` are (dest, activeconns, inactconns) in list order."""
    ops = "ops " if service.ops else ""
    sched = service.scheduler
    k = service.key
    if k.fwmark:
        head = f"FWM  {k.fwmark:08X} {sched} {ops}"
    elif service.family is Family.IPV6:
        assert k.vaddr is not None
        head = f"{k.proto.name}  [{_addr(k.vaddr)}]:{k.vport:04X} {sched} "
    else:
        assert k.vaddr is not None
        head = f"{k.proto.name}  {_addr(k.vaddr)}:{k.vport:04X} {sched} {ops} "
    if service.persistent:
        assert service.timeout is not None
        head += f"persistent {service.timeout * HZ} {_netmask_field(service):08X}\n"
    else:
        head += "\n"
    out = [head]
    for d, active, inact in dests:
        host = f"[{_addr(d.addr)}]" if d.family is Family.IPV6 else _addr(d.addr)
        out.append(
            f"  -> {host}:{d.port:04X}      {_FWD_NAME[d.fwd]:<7} {d.weight:<6d} "
            f"{active:<10d} {inact:<10d}\n"
        )
    return "".join(out)


def conn_tab_size(director: Director) -> int:
    """The ``size=`` of the /proc/net/ip_vs header: the global 4096 before 7.2; on 7.2 the
    netns's own table (ip_vs_info_seq_show -> get_conn_tab_size, ip_vs_ctl.c 7.2.13): 0 until
    the first service attaches it, then its bucket count."""
    if not director.level.conn_tab_per_netns:
        return CONN_TAB_SIZE
    return NETNS_CONN_TAB_MIN if director.conn_tab_attached else 0


def render_ip_vs(director: Director) -> str:
    """``/proc/net/ip_vs`` for a model director: address services first, then fwmark ones
    (6.x walks its two hash tables in that order; 7.2 has one table, in hash order)."""
    out = [INFO_HEADER.replace(f"size={CONN_TAB_SIZE})", f"size={conn_tab_size(director)})")]
    blocks = []
    for service, _ in director.services():
        states = director.dest_state(service.key)
        rows = [(s.as_dest(), s.activeconns, s.inactconns) for s in states]
        blocks.append((bool(service.key.fwmark), render_service(service, rows)))
    out += [b for fw, b in blocks if not fw] + [b for fw, b in blocks if fw]
    return "".join(out)


def parse_ip_vs(text: str) -> list[tuple[Service, list[Dest]]]:
    """Services and dests (list order) from ``/proc/net/ip_vs``. Counters are dropped.

    An IPv6 fwmark service looks like an IPv4 one in this file; its family is taken from its
    dests (IPv4 when it has none). Thresholds are not shown, so they parse as 0.
    """
    result: list[tuple[Service, list[Dest]]] = []
    for line in text.splitlines():
        if (
            not line.strip()
            or line.startswith("IP Virtual Server")
            or line.startswith("Prot ")
            or line.startswith("  -> RemoteAddress")
        ):
            continue
        if line.startswith("  -> "):
            if not result:
                raise ProcParseError(f"dest line {line!r} before any service line")
            parts = line.split()
            if len(parts) != 6:
                raise ProcParseError(
                    f"dest line {line!r}: expected '-> ADDR:PORT Forward "
                    "Weight ActiveConn InActConn'"
                )
            hostport, fwd_name, weight = parts[1], parts[2], parts[3]
            host, _, port = hostport.rpartition(":")
            addr = _parse_addr(host.strip("[]"), line)
            fwd = _FWD_BY_NAME.get(fwd_name)
            if fwd is None:
                raise ProcParseError(f"unknown forwarding method {fwd_name!r} in {line!r}")
            result[-1][1].append(Dest(addr, _parse_port(port, line), int(weight), fwd))
            continue
        result.append((_parse_service_line(line), []))
    return [(_fix_family(s, ds), ds) for s, ds in result]


def _parse_service_line(line: str) -> Service:
    parts = line.split()
    if len(parts) < 3:
        raise ProcParseError(f"service line {line!r}: expected 'PROT ADDR:PORT SCHED [flags]'")
    ops = "ops" in parts[3:]
    timeout: int | None = None
    netmask_raw: int | None = None
    if "persistent" in parts:
        i = parts.index("persistent")
        if len(parts) < i + 3:
            raise ProcParseError(f"service line {line!r}: 'persistent' needs TIMEOUT NETMASK")
        timeout = int(parts[i + 1]) // HZ
        netmask_raw = int(parts[i + 2], 16)
    sched = parts[2]
    if parts[0] == "FWM":
        key = ServiceKey(Family.IPV4, Proto.TCP, None, 0, int(parts[1], 16))
    else:
        proto = _PROTO_BY_NAME.get(parts[0])
        if proto is None or proto is Proto.IP:
            raise ProcParseError(f"unknown protocol {parts[0]!r} in {line!r}")
        host, _, port = parts[1].rpartition(":")
        addr = _parse_addr(host.strip("[]"), line)
        key = ServiceKey(Family.of(addr), proto, addr, _parse_port(port, line))
    netmask = None
    if netmask_raw is not None:
        netmask = (
            netmask_raw
            if key.family is Family.IPV4
            else int.from_bytes(netmask_raw.to_bytes(4, "big"), "little")
        )
        if netmask == full_netmask(key.family):
            netmask = None
    return Service(key, sched, timeout, netmask, ops, SvcFlag.NONE)


def _fix_family(service: Service, dests: list[Dest]) -> Service:
    k = service.key
    if not k.fwmark or not dests or dests[0].family is k.family:
        return service
    fam = dests[0].family
    mask = service.netmask
    if mask is not None:  # it was decoded as IPv4; re-read the raw field as a prefix length
        mask = int.from_bytes(mask.to_bytes(4, "big"), "little")
        if mask == full_netmask(fam):
            mask = None
    return Service(
        ServiceKey(fam, k.proto, None, 0, k.fwmark),
        service.scheduler,
        service.timeout,
        mask,
        service.ops,
        service.sched_flags,
        service.pe,
    )
