"""Per-kernel differences of the model, one test per difference and release boundary
(docs/kernel-differences.md; each named property of impl.kernel_level.KernelLevel)."""

from __future__ import annotations

import pytest
from model_support import RIPS, VIP, cip, dests, key, tcp, udp
from test_model_sip import INVITE

from impl.director import Director
from impl.kernel_changes import differences
from impl.kernel_level import KernelLevel, parse_release
from impl.procfs import render_ip_vs
from impl.types import Dest, Proto, ProtoTimeouts, Service, Sysctls

OLD = parse_release("6.12.118")  # last series with the FFFF re-key
NEW = parse_release("7.2.13")
BULLSEYE = parse_release(
    "Linux version 5.10.0-32-amd64 (debian-kernel@lists.debian.org) (gcc-10 (Debian "
    "10.2.1-6) 10.2.1 20210110, GNU ld (GNU Binutils for Debian) 2.35.2) #1 SMP Debian "
    "5.10.223-1 (2024-07-19)"
)
SID = parse_release(
    "Linux version 7.2.13+deb14-amd64 (debian-kernel@lists.debian.org) (x86_64-linux-gnu-gcc-15 "
    "(Debian 15.2.0-9) 15.2.0, GNU ld (GNU Binutils for Debian) 2.45.50) #1 SMP "
    "PREEMPT_DYNAMIC Debian 7.2.13-1 (2026-10-28)"
)
K = key(80)


def build(level: KernelLevel, *services: tuple[Service, list[Dest]], **sysctls: int) -> Director:
    d = Director(level, Sysctls(**sysctls))
    for svc, ds in services:
        d.add_service(svc)
        for dest in ds:
            d.add_dest(svc.key, dest)
    return d


def test_debian_proc_version_levels() -> None:
    assert (BULLSEYE.major, BULLSEYE.minor, BULLSEYE.patch) == (5, 10, 223)
    assert (SID.major, SID.minor, SID.patch) == (7, 2, 13)


@pytest.mark.parametrize(
    ("release", "by_dport"),
    [("5.10.262", False), ("6.1.192", False), ("6.12.118", False), ("7.2.0", True), ("7.3", True)],
)
def test_invalidate_by_dport_starts_with_7_2(release: str, by_dport: bool) -> None:
    level = parse_release(release)
    assert level.invalidate_by_dport is by_dport
    assert level.conn_tab_per_netns is by_dport


@pytest.mark.parametrize(
    ("release", "totalconns", "invisible_fixed", "twos"),
    [
        ("5.10.223", False, False, False),  # bullseye: none of the 6.x stable IPVS updates
        ("5.10.262", False, False, False),
        ("6.1.176", False, False, False),
        ("6.1.192", True, True, False),  # ip_vs_twos.c exists, Debian 6.1 does not build it
        ("6.12.117", True, True, True),
        ("7.2.9", True, False, True),  # "do not create invisible templates" came with 7.2.10
        ("7.2.10", True, True, True),
    ],
)
def test_stable_level_boundaries(
    release: str, totalconns: bool, invisible_fixed: bool, twos: bool
) -> None:
    level = parse_release(release)
    assert level.totalconns is totalconns and level.overload_rework is totalconns
    assert level.no_invisible_templates is invisible_fixed
    assert level.has_twos is twos


def _invalidate(level: KernelLevel) -> tuple[Director, str | None, str | None]:
    """rr persistent on :80: the client lands on rs3, rs3 is removed, the client's next flow
    invalidates its template and is rescheduled."""
    d = build(level, (Service(K, "rr", timeout=300), dests(80)))
    a = d.packet(tcp(cip(1), 40000), 0.0)
    assert a.dest == RIPS[2]
    d.del_dest(K, RIPS[2], 80, 1.0)
    b = d.packet(tcp(cip(1), 40001), 2.0)
    return d, str(a.dest), str(b.dest)


@pytest.mark.parametrize(("level", "vport"), [(OLD, 0xFFFF), (NEW, 80)])
def test_invalidated_template_row(level: KernelLevel, vport: int) -> None:
    """6.x re-keys the dead template to vport/dport FFFF; 7.2 keeps vport 80, dport FFFF."""
    d, old, new = _invalidate(level)
    assert new != old
    dead = [t for t in d.templates(2.0) if t.invalidated]
    assert [(str(t.daddr), t.vport, t.dport) for t in dead] == [(old, vport, 0xFFFF)]


@pytest.mark.parametrize("level", [OLD, NEW])
def test_later_flow_after_invalidation(level: KernelLevel) -> None:
    """Both: the client's later flows follow the new template; the dead one is never found
    again, even once its dest is back (6.x: other key; 7.2: skipped by dport FFFF)."""
    d, _, new = _invalidate(level)
    assert str(d.packet(tcp(cip(1), 40002), 3.0).dest) == new
    d.add_dest(K, Dest(RIPS[2], 80), 4.0)  # revived from the trash, at the list head
    assert str(d.packet(tcp(cip(1), 40003), 5.0).dest) == new


@pytest.mark.parametrize(("level", "sticky"), [(OLD, True), (NEW, False)])
def test_dest_port_65535(level: KernelLevel, sticky: bool) -> None:
    """A template to a real server on port 65535 has dport 0xFFFF: 7.2's lookup skips it, so
    every new connection is scheduled afresh (rr moves on); 6.x finds it."""
    k = key(65535)
    d = build(level, (Service(k, "rr", timeout=300), dests(65535)))
    a = d.packet(tcp(cip(1), 40000, dport=65535), 0.0)
    b = d.packet(tcp(cip(1), 40001, dport=65535), 1.0)
    assert (a.dest == b.dest) is sticky
    assert len(d.templates(1.0)) == (1 if sticky else 2)


@pytest.mark.parametrize(("level", "revived"), [(OLD, True), (NEW, False)])
def test_port_65535_service_finds_ffff_template(level: KernelLevel, revived: bool) -> None:
    """6.x: a template invalidated on VIP:80 now has vport 0xFFFF, the key of a persistent
    service on VIP:65535; once its dest is back it is valid and sends that client to the :80
    service's real server at port 80. 7.2 keeps the dead template on vport 80: never found."""
    k2 = key(65535)
    d = build(
        level,
        (Service(K, "rr", timeout=300), dests(80)),
        (Service(k2, "rr", timeout=300), dests(65535, rips=RIPS[:2])),
    )
    d.packet(tcp(cip(1), 40000), 0.0)  # rs3 via the :80 service
    d.del_dest(K, RIPS[2], 80, 1.0)
    d.packet(tcp(cip(1), 40001), 2.0)  # invalidates the template
    d.add_dest(K, Dest(RIPS[2], 80), 3.0)
    c = d.packet(tcp(cip(1), 40002, dport=65535), 4.0)
    if revived:
        assert (c.dest, c.dport) == (RIPS[2], 80)
    else:
        assert (c.dest, c.dport) == (RIPS[1], 65535)  # the :65535 service's own rr: its head


def _sip(level: KernelLevel) -> list[str]:
    """SIP pe, expire_quiescent_template: Call-ID X lands on rs3; rs3 goes to weight 0, the
    next flow of X invalidates that template and goes to rs2; that connection (UDP 2 s) dies
    before its template (6 s), which then expires, while keepalives on the first connection
    keep the invalidated template alive; rs3 gets weight 1 back; X comes again."""
    k = key(5060, Proto.UDP)
    d = build(
        level, (Service(k, "rr", timeout=6, pe="sip"), dests(5060)), expire_quiescent_template=1
    )
    d.set_timeouts(ProtoTimeouts(udp=2))

    def call(sport: int, at: float) -> str:
        return str(d.packet(udp(cip(1), sport, dport=5060, payload=INVITE), at).dest)

    seen = [call(40001, 0.0)]
    d.edit_dest(k, Dest(RIPS[2], 5060, weight=0), 0.5)
    seen.append(call(40002, 1.0))
    for i in range(1, 6):  # the first connection stays, so its template is extended at 6 s
        assert call(40001, 1.5 * i) == seen[0]
    d.edit_dest(k, Dest(RIPS[2], 5060, weight=1), 8.5)
    seen.append(call(40003, 9.0))
    return seen


def test_sip_invalidated_template_revives_on_7_2() -> None:
    """The SIP ct_match does not test dport: on 7.2 the invalidated Call-ID template is found
    again and, its dest being valid again, takes the client back to rs3; 6.x re-keyed it to
    vport 0xFFFF, so rr picks the next server (rs1)."""
    rs1, rs2, rs3 = (str(r) for r in RIPS)
    assert _sip(OLD) == [rs3, rs2, rs1]
    assert _sip(NEW) == [rs3, rs2, rs3]


def test_proc_ip_vs_size() -> None:
    """/proc/net/ip_vs "size=": the global 4096 before 7.2; 7.2's per-netns table is absent
    (0) until the first service and 256 buckets after it."""
    old, new = Director(OLD), Director(NEW)
    assert "(size=4096)" in render_ip_vs(old)
    assert "(size=0)" in render_ip_vs(new)
    svc = Service(key(80, vaddr=VIP), "rr")
    old.add_service(svc)
    new.add_service(svc)
    assert "(size=4096)" in render_ip_vs(old)
    assert "(size=256)" in render_ip_vs(new)
    new.del_service(svc.key)
    assert "(size=256)" in render_ip_vs(new)  # attached for the netns's lifetime


def test_upgrade_reasons_name_the_7_2_change() -> None:
    """What `lvsconf diff` can cite as modelled for each Debian upgrade (impl.kernel_changes)."""
    bookworm, trixie = parse_release("6.1.192"), parse_release("6.12.118")
    assert [n for n, _ in differences(trixie, SID)] == ["invalidate_by_dport", "conn_tab_per_netns"]
    assert [n for n, _ in differences(bookworm, SID)] == [
        "has_twos",
        "invalidate_by_dport",
        "conn_tab_per_netns",
    ]
    assert [n for n, _ in differences(BULLSEYE, bookworm)] == [
        "totalconns",
        "overload_rework",
        "no_invisible_templates",
    ]
