"""How an invalidated template is marked, and which later lookups can still find it: the one
template-lifecycle rule that differs between Debian kernels (docs/kernel-differences.md).

Up to 6.12, ip_vs_check_template() (net/netfilter/ipvs/ip_vs_conn.c) unhashes an invalid
template and rehashes it with vport = dport = 0xFFFF, so only a lookup for vport 65535 can meet
it again. From 7.2 it only sets dport = 0xFFFF: the template keeps its key and its place, and
ip_vs_ct_in_get() skips templates whose dport is 0xFFFF, while the SIP persistence engine's
ct_match does not look at dport. Each case below holds on every kernel against the model of
that kernel's level; the assertions name the behaviour each level must show on packets.
"""

from __future__ import annotations

import dataclasses

from conformance.runner.case import Case
from conformance.runner.grading import CaseResult
from conformance.runner.rules import rule
from conformance.test_persistence_keys import sip_invite
from impl.scenario import AddDest, Advance, DelDest, EditDest, Scenario, Send, ServiceConfig
from impl.types import Dest, Proto, ProtoTimeouts, Service, Sysctls

TCP, UDP = Proto.TCP, Proto.UDP


def _on_port(dests: tuple[Dest, ...], port: int) -> tuple[Dest, ...]:
    return tuple(dataclasses.replace(d, port=port) for d in dests)


def _server_by_level(case: Case, r: CaseResult, flow: int, servers: tuple[int, int]) -> None:
    """Flow ``flow`` reached ``servers[0]`` (index) where invalid templates are marked by dport
    alone (7.2), ``servers[1]`` where they were re-keyed to vport 0xFFFF (up to 6.12)."""
    new = case.level.invalidate_by_dport
    want = servers[0] if new else servers[1]
    kernel = "7.2 and later" if new else "up to 6.12"
    assert r.rs(flow) == want, f"{kernel}: flow {flow} reaches rs{want + 1}"


@rule(
    "invalidated-later-flows",
    source="ip_vs_conn.c ip_vs_check_template() and ip_vs_ct_in_get() (6.12.118: rehash to "
    "vport/dport 0xFFFF; 7.2.13: dport 0xFFFF only, skipped by the lookup); ip_vs_ctl.c "
    "ip_vs_trash_get_dest() (revive)",
)
def test_invalidated_later_flows(case: Case) -> None:
    """After a removed dest invalidated a client's template, the client's later flows follow
    its new template, and still do once the old dest is re-added from the trash: the dead
    template is never found again on any kernel (6.x: re-keyed to vport 0xFFFF; 7.2: kept on
    its vport but skipped for its dport 0xFFFF). A client that never looked its template up
    while the dest was gone is revived onto it."""
    key = case.key(TCP, 80)
    dests = case.dests()
    moved, kept = case.cip(0, 1), case.cip(1, 1)
    vip = case.vip(0)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=60), dests),),
        steps=(
            Send((case.flow(TCP, moved, 40001, vip, 80),)),  # rr: rs3
            Send((case.flow(TCP, kept, 40002, vip, 80),)),  # rr: rs2
            Send((case.flow(TCP, kept, 40003, vip, 80),)),  # sticks to rs2
            DelDest(key, dests[2].addr, dests[2].port),
            Send((case.flow(TCP, moved, 40004, vip, 80),)),  # invalidates, rescheduled
            Send((case.flow(TCP, moved, 40005, vip, 80),)),  # follows the new template
            AddDest(key, dests[2]),
            Send((case.flow(TCP, moved, 40006, vip, 80),)),  # still the new template
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2 and r.rs(1) == 1 and r.rs(2) == 1, "rr: rs3, then rs2"
    assert r.rs(3) not in (None, 2), "removed server: rescheduled"
    assert r.rs(4) == r.rs(3) and r.rs(5) == r.rs(3), (
        "later flows follow the new template, also after the re-add"
    )
    observed = r.templates_observed[5]
    if observed is not None:
        dead = [t for t in observed if t.caddr == moved and t.invalidated]
        want = 80 if case.level.invalidate_by_dport else 0xFFFF
        assert [(t.daddr, t.vport) for t in dead] == [(case.rip(2), want)], (
            f"one dead template, vport {want:#x} on kernel {case.level.label}"
        )


@rule(
    "dest-port-65535",
    source="ip_vs_core.c ip_vs_sched_persist() (template dport = dest->port) and ip_vs_conn.c "
    "ip_vs_ct_in_get() (7.2.13: a template with dport 0xFFFF is skipped)",
)
def test_dest_port_65535(case: Case) -> None:
    """A persistent service whose real servers listen on port 65535 gives its templates dport
    0xFFFF, the mark 7.2 uses for an invalid template: from 7.2 the lookup never finds them and
    each new connection of a client is scheduled afresh (rr moves on, one template per
    connection); up to 6.12 the client sticks to its server."""
    key = case.key(TCP, 65535)
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=60), _on_port(case.dests(), 65535)),),
        steps=(
            Send((case.flow(TCP, client, 40001, case.vip(0), 65535),)),  # rr: rs3
            Send((case.flow(TCP, client, 40002, case.vip(0), 65535),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2, "rr's first pick is rs3"
    _server_by_level(case, r, 1, (1, 2))  # 7.2: invisible template, rr moves on; else sticky


@rule(
    "ffff-key-lookup",
    source="ip_vs_conn.c ip_vs_check_template() (6.12.118: rehash with vport 0xFFFF; 7.2.13: "
    "vport kept) and ip_vs_ct_in_get(); ip_vs_core.c ip_vs_sched_persist() (dport = "
    "dest->port when dst_port == svc->port)",
    diverges={
        "nftlb": "each nftlb farm keeps its own persistence map (persist-<farm>, src/nft.c), so "
        "the port-65535 farm never finds an entry the port-80 farm left behind: it schedules "
        "among its own backends, as 7.2 does, where the 6.x model follows the 0xFFFF template"
    },
)
def test_ffff_key_lookup(case: Case) -> None:
    """Up to 6.12 an invalidated template sits under vport 0xFFFF, which is the key a
    persistent service on port 65535 looks up: once its dest is back from the trash, that
    template is valid again and sends the client's flow to VIP:65535 to the other service's real
    server, on that server's port 80. From 7.2 the dead template keeps vport 80 and is skipped:
    the port-65535 service schedules among its own servers."""
    k80 = case.key(TCP, 80)
    khigh = case.key(TCP, 65535)
    dests = case.dests()
    client = case.cip(0, 1)
    vip = case.vip(0)
    scenario = Scenario(
        services=(
            ServiceConfig(Service(k80, "rr", timeout=60), _on_port(dests, 80)),
            ServiceConfig(Service(khigh, "rr", timeout=60), _on_port(dests[:2], 65535)),
        ),
        steps=(
            Send((case.flow(TCP, client, 40001, vip, 80),)),  # rr: rs3
            DelDest(k80, dests[2].addr, 80),
            Send((case.flow(TCP, client, 40002, vip, 80),)),  # invalidates, rescheduled
            AddDest(k80, dataclasses.replace(dests[2], port=80)),
            Send((case.flow(TCP, client, 40003, vip, 65535),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2 and r.rs(1) not in (None, 2), "rs3, then rescheduled"
    _server_by_level(case, r, 2, (1, 2))  # 7.2: its own rr (rs2); else the FFFF template (rs3)


@rule(
    "sip-invalidated-revive",
    source="ip_vs_pe_sip.c ip_vs_sip_ct_match() (no dport test); ip_vs_conn.c "
    "ip_vs_check_template() (7.2.13: dport 0xFFFF only; 6.12.118: rehash with vport 0xFFFF), "
    "ip_vs_conn_expire() (a template that controls a connection is extended)",
)
def test_sip_invalidated_revive(case: Case) -> None:
    """SIP pe with expire_quiescent_template: a Call-ID's template on a weight-0 server is
    invalidated and the call moves on; that second connection (UDP timeout 6 s) dies before its
    own template (14 s), which then expires, while packets of the first connection keep the
    invalidated template alive. With the server's weight back, the same Call-ID comes again: on
    7.2 the SIP lookup still finds the invalidated template and the call returns to its first
    server; up to 6.12 that template was re-keyed away and rr picks the next server."""
    key = case.key(UDP, 5060)
    dests = case.dests()
    client, vip = case.cip(0, 1), case.vip(0)

    def call(sport: int, branch: str) -> Send:
        flow = case.flow(UDP, client, sport, vip, 5060, payload=sip_invite("call-1", branch))
        return Send((flow,))

    keepalive: list[Advance | Send] = []
    # The first connection lives on (its last packet at ~12 s, UDP timeout 6 s), so its template
    # is extended when its 14 s timer fires. No template table is read near 14 s: there both
    # timers are due, and a table read while the kernel has not run them yet (TCG) is a race.
    for n in range(6):
        keepalive += [Advance(2.0), call(40001, f"k{n}")]
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=14, pe="sip"), dests),),
        sysctls=Sysctls(expire_quiescent_template=1),
        timeouts=ProtoTimeouts(udp=6),
        steps=(
            call(40001, "a"),  # rr: rs3
            EditDest(key, dataclasses.replace(dests[2], weight=0)),
            call(40002, "b"),  # invalidates the template: rs2
            *keepalive,
            Advance(5.0),  # ~17 s: past the 14 s deadlines plus the timer's slack (1/8)
            EditDest(key, dests[2]),
            call(40003, "c"),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    last = len(r.flows) - 1
    assert r.rs(0) == 2 and r.rs(1) == 1, "rs3, then rs2 (rs3 quiesced)"
    assert all(r.rs(i) == 2 for i in range(2, last)), "keepalives reach rs3"
    _server_by_level(case, r, last, (2, 0))  # 7.2: the dead template revives; else rr: rs1
