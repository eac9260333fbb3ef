"""/proc/net/ip_vs_conn and /proc/net/ip_vs, byte for byte (conn.c ip_vs_conn_seq_show,
ctl.c ip_vs_info_seq_show; docs/semantics.md §3.7, §7; §8 case 32)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_support import RIPS, RIPS6, VIP, VIP6, cip, dests, director, key, tcp

from impl.errors import ProcParseError
from impl.procfs import CONN_HEADER, parse_ip_vs, parse_ip_vs_conn, render_ip_vs, render_ip_vs_conn
from impl.types import (
    IPV4,
    IPV6,
    Connection,
    Dest,
    Family,
    Fwd,
    Proto,
    Service,
    ServiceKey,
    Template,
)

PAD = " " * 12  # "%-11s %7u" between NONE and a 3-digit number


def test_header_exact() -> None:
    assert CONN_HEADER == (
        "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
    )


def test_proc_format_ipv4_template() -> None:
    """§8.32, the row measured in docs/architecture.md §6.7:
    TCP 0A000100 0000 0A000064 0050 0A000202 0050 NONE 299."""
    d = director((Service(key(80), "rr", timeout=300, netmask=0xFFFFFF00), [Dest(RIPS[1], 80)]))
    d.packet(tcp(cip(5), 40000), 0.0)
    text = render_ip_vs_conn(d.templates(0.5), d.connections(0.5))
    assert text == (
        CONN_HEADER
        + f"TCP 0A000100 0000 0A000064 0050 0A000202 0050 NONE{PAD}299\n"
        + "TCP 0A000105 9C40 0A000064 0050 0A000202 0050 SYN_RECV"
        + " " * 9
        + "59\n"
    )


def test_proc_format_fwmark_template() -> None:
    d = director(
        (Service(ServiceKey(IPV4, fwmark=0x12345678), "rr", timeout=120), [Dest(RIPS[0], 0)])
    )
    d.packet(tcp(cip(1), 40000, mark=0x12345678), 0.0)
    (row,) = render_ip_vs_conn(d.templates(1.0), []).splitlines()[1:]
    assert row == "IP  0A000101 0000 12345678 0000 0A000201 0000 NONE" + PAD + "119"


def test_proc_format_ipv6_template() -> None:
    s = Service(ServiceKey(IPV6, Proto.TCP, VIP6, 443), "rr", timeout=60, netmask=48)
    d = director((s, [Dest(RIPS6[0], 443)]))
    d.packet(tcp(ipaddress.IPv6Address("2001:db8:1:2::7"), 40000, VIP6, 443), 0.0)
    (row,) = render_ip_vs_conn(d.templates(0.0), []).splitlines()[1:]
    assert row == (
        "TCP 2001:0db8:0001:0000:0000:0000:0000:0000 0000 "
        "2001:0db8:0000:0000:0000:0000:0000:0100 01BB "
        "2001:0db8:0002:0000:0000:0000:0000:0001 01BB NONE" + " " * 13 + "60"
    )


def test_proc_format_invalidated_and_assured() -> None:
    t = Template(IPV4, Proto.UDP, cip(1), 0, VIP, 0xFFFF, RIPS[0], 0xFFFF, "ASSURED", 5)
    c = Connection(IPV4, Proto.SCTP, cip(1), 1, VIP, 2, RIPS[0], 3, "ESTABLISHED", 899)
    lines = render_ip_vs_conn([t], [c]).splitlines()[1:]
    assert lines == [
        "UDP 0A000101 0000 0A000064 FFFF 0A000201 FFFF ASSURED           5",
        "SCTP 0A000101 0001 0A000064 0002 0A000201 0003 ESTABLISHED     899",
    ]


def test_parse_rejects_garbage() -> None:
    with pytest.raises(ProcParseError, match="fields"):
        parse_ip_vs_conn("TCP 0A000101 0000\n")
    with pytest.raises(ProcParseError, match="protocol"):
        parse_ip_vs_conn("XYZ 0A000101 0000 0A000064 0050 0A000201 0050 NONE 1\n")
    with pytest.raises(ProcParseError, match="address"):
        parse_ip_vs_conn("TCP 0A0001 0000 0A000064 0050 0A000201 0050 NONE 1\n")


def _addr(fam: Family) -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if fam is IPV4:
        return st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
    return st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def tables(draw):  # type: ignore[no-untyped-def]
    templates, conns = [], []
    for _ in range(draw(st.integers(0, 4))):
        fam = draw(st.sampled_from([IPV4, IPV6]))
        proto = draw(st.sampled_from([Proto.IP, Proto.TCP, Proto.UDP, Proto.SCTP]))
        sipdata = draw(st.sampled_from(["", "abc@host"])) if proto is Proto.UDP else ""
        templates.append(
            Template(
                fam,
                proto,
                draw(_addr(fam)),
                0,
                draw(_addr(fam)),
                draw(st.integers(0, 65535)),
                draw(_addr(draw(st.sampled_from([IPV4, IPV6])))),
                draw(st.integers(0, 65535)),
                draw(st.sampled_from(["NONE", "ASSURED"])),
                draw(st.integers(0, 10**6)),
                "sip" if sipdata else "",
                sipdata,
            )
        )
    for _ in range(draw(st.integers(0, 4))):
        fam = draw(st.sampled_from([IPV4, IPV6]))
        proto = draw(st.sampled_from([Proto.TCP, Proto.UDP]))
        state = (
            "UDP"
            if proto is Proto.UDP
            else draw(
                st.sampled_from(["SYN_RECV", "ESTABLISHED", "FIN_WAIT", "TIME_WAIT", "CLOSE"])
            )
        )
        conns.append(
            Connection(
                fam,
                proto,
                draw(_addr(fam)),
                draw(st.integers(1, 65535)),
                draw(_addr(fam)),
                draw(st.integers(0, 65535)),
                draw(_addr(fam)),
                draw(st.integers(0, 65535)),
                state,
                draw(st.integers(0, 10**6)),
            )
        )
    return templates, conns


@given(tables())
def test_proc_conn_round_trip(tc) -> None:  # type: ignore[no-untyped-def]
    templates, conns = tc
    assert parse_ip_vs_conn(render_ip_vs_conn(templates, conns)) == (templates, conns)


def test_proc_ip_vs_exact() -> None:
    d = director(
        (
            Service(key(80), "rr", timeout=300, netmask=0xFFFFFF00),
            [Dest(RIPS[0], 80, 1, Fwd.NAT), Dest(RIPS[1], 8080, 3)],
        ),
        (Service(ServiceKey(IPV4, fwmark=1), "wlc", ops=True), []),
        (
            Service(ServiceKey(IPV6, Proto.UDP, VIP6, 53), "sh", timeout=10, netmask=64),
            [Dest(RIPS6[0], 53, 2, Fwd.TUN)],
        ),
    )
    d.packet(tcp(cip(1), 40000), 0.0)
    assert render_ip_vs(d) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "TCP  0A000064:0050 rr  persistent 75000 FFFFFF00\n"
        "  -> 0A000202:1F90      Route   3      1          0         \n"
        "  -> 0A000201:0050      Masq    1      0          0         \n"
        "UDP  [2001:0db8:0000:0000:0000:0000:0000:0100]:0035 sh persistent 2500 40000000\n"
        "  -> [2001:0db8:0002:0000:0000:0000:0000:0001]:0035      Tunnel  2      0          "
        "0         \n"
        "FWM  00000001 wlc ops \n"
    )


def test_proc_ip_vs_round_trip() -> None:
    svcs = [
        (
            Service(key(80), "rr", timeout=300, netmask=0xFFFFFF00),
            [Dest(RIPS[0], 80, 1, Fwd.NAT), Dest(RIPS[1], 8080, 3)],
        ),
        (Service(ServiceKey(IPV4, fwmark=9), "wlc", ops=True), [Dest(RIPS[2], 0, 5)]),
        (Service(ServiceKey(IPV6, fwmark=2), "rr", timeout=30, netmask=56), [Dest(RIPS6[1], 0)]),
        (Service(ServiceKey(IPV6, Proto.TCP, VIP6, 80), "mh"), []),
    ]
    d = director(*svcs)
    expected = [(s, list(reversed(ds))) for s, ds in svcs]  # kernel list order: newest first
    got = parse_ip_vs(render_ip_vs(d))
    assert sorted(got, key=str) == sorted(expected, key=str)


def test_proc_services_order_is_list_order() -> None:
    d = director((Service(key(80), "rr"), dests(80)))
    assert [ds.addr for ds in parse_ip_vs(render_ip_vs(d))[0][1]] == [RIPS[2], RIPS[1], RIPS[0]]
