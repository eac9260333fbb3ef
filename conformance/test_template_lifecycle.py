"""Template lifecycle: refresh, expiry, the 60 s extension, dest removal and re-add, weight 0,
counters and the /proc rendering (docs/semantics.md §3, §8 cases 21-32).

Timing follows §3.3: persistence timeouts of 2-3 s, "still there" checks well below the
timeout and expiry checks at timeout + 1 s (kernel timers never fire early and fire late by at
most ~1/8 of the interval, 0.25 s here). Expiry is only tested where no controlled connection
can extend the template: UDP with OPS (no connection at all), or TCP connections closed by the
client's FIN with a 1 s FIN_WAIT timeout. Template-table claims are checked on the
implementation's own table when it exposes one (kernel: /proc/net/ip_vs_conn); the outcome
claims always hold on packets.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from conformance.runner.case import Case
from conformance.runner.rules import rule
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    Scenario,
    Send,
    ServiceConfig,
    SetSysctl,
)
from impl.types import (
    IPV4,
    Dest,
    Family,
    Flow,
    FwmarkRule,
    IPAddress,
    IPNetwork,
    PacketKind,
    Proto,
    ProtoTimeouts,
    Service,
    ServiceKey,
    Sysctls,
    Template,
)

TCP, UDP = Proto.TCP, Proto.UDP


def weight(key: ServiceKey, dest: Dest, w: int) -> EditDest:
    return EditDest(key, dataclasses.replace(dest, weight=w))


def of_client(templates: list[Template] | None, client: IPAddress) -> list[Template]:
    return [t for t in templates or [] if t.caddr == client]


def _host(addr: IPAddress) -> IPNetwork:
    """The one-address network of ``addr`` (a fwmark rule that covers a single VIP)."""
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


def mark_vaddr(family: Family, mark: int) -> IPAddress:
    """The vaddr of a fwmark template: the 32-bit mark in the address's first 32 bits."""
    if family is IPV4:
        return ipaddress.IPv4Address(mark)
    return ipaddress.IPv6Address(mark << 96)


@rule(
    "expiry-ops",
    source="ip_vs_conn.c ip_vs_conn_expire() 836-905 (6.12.117); OPS connections "
    "are never hashed (ip_vs_conn_put 477), so n_control is 0 between datagrams",
)
def test_expiry_ops(case: Case) -> None:
    """With persistent UDP, OPS and timeout T=2 s, each datagram refreshes the template: one
    sent 1 s after the last sticks, one sent after 3 s of silence is scheduled afresh (rr moves
    on to another server) because the template is gone from the table."""
    key = case.key(UDP, 53)
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=2, ops=True), case.dests()),),
        steps=(
            Send((case.flow(UDP, client, 40001, case.vip(0), 53),)),
            Advance(1.0),
            Send((case.flow(UDP, client, 40002, case.vip(0), 53),)),
            Advance(3.0),
            Send((case.flow(UDP, client, 40003, case.vip(0), 53),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(1) == r.rs(0), "within T: same server"
    assert r.rs(2) is not None and r.rs(2) != r.rs(0), (
        "after T of silence: scheduled afresh, rr moves on"
    )
    observed = r.templates_observed[2]
    if observed is not None:
        mine = of_client(observed, client)
        assert [t.daddr for t in mine] == [case.rip(r.rs(2) or 0)], (
            "only the new template is left for the client"
        )


@rule(
    "refresh-on-new-conn",
    source="ip_vs_core.c ip_vs_sched_persist() 412: ip_vs_conn_put(ct) "
    "re-arms the template only when a connection is created (6.12.117)",
)
def test_refresh_on_new_conn(case: Case) -> None:
    """New connections every T/2 keep a template alive for as long as they come (here 2 T,
    OPS datagrams each of which is a new connection), while packets of one long-lived
    connection do not refresh its template: 2 s after creation a T=5 s template fed only by its
    connection's packets shows at most 3 s left (about 2), not 4-5. T=5 keeps the check well
    before that template's own deadline, where an extension to 60 s would blur it."""
    ops_key = case.key(UDP, 53)
    conn_key = case.key(UDP, 53, vip=1)
    c_new, c_old = case.cip(0, 1), case.cip(1, 1)

    def tick(i: int) -> Send:
        flows = [case.flow(UDP, c_new, 40001 + i, case.vip(0), 53)]
        if i < 3:  # the long-lived connection: always the same 5-tuple
            flows.append(case.flow(UDP, c_old, 41000, case.vip(1), 53, payload=b"tick%d" % i))
        return Send(tuple(flows))

    steps: list[Send | Advance] = []
    for i in range(5):
        if i:
            steps.append(Advance(1.0))
        steps.append(tick(i))
    scenario = Scenario(
        services=(
            ServiceConfig(Service(ops_key, "rr", timeout=2, ops=True), case.dests()),
            ServiceConfig(Service(conn_key, "rr", timeout=5), case.dests()),
        ),
        steps=tuple(steps),
    )
    r = case.play(scenario)
    r.assert_conforms()
    new_rs = [o.rs for f, o in zip(r.flows, r.observed, strict=True) if f.saddr == c_new]
    assert new_rs[0] is not None and new_rs == [new_rs[0]] * 5, (
        "a new connection every T/2 keeps the template (4 s > T=2 s)"
    )
    observed = r.templates_observed[2]  # after the third tick, ~2 s after creation
    if observed is not None:
        old = of_client(observed, c_old)
        assert len(old) == 1 and old[0].expires is not None and old[0].expires <= 3, (
            "packets of an existing connection do not refresh its template"
        )


@rule(
    "extension-60s",
    source="ip_vs_conn.c ip_vs_conn_expire() 894-905 (6.12.117): "
    "n_control > 0 -> ct->timeout = 60*HZ, re-armed",
    diverges={
        "nftlb": "nftlb's persist-<farm> map entry has the farm's persist-ttl and is refreshed "
        "only by the client's packets ('update @persist-<farm>', src/nft.c); it knows nothing "
        "of open connections, so it expires persist-ttl after the last packet",
    },
)
def test_extension_60s(case: Case) -> None:
    """With T=2 s and a controlled connection still in the table (a SYN whose handshake never
    completes stays in SYN_RECV for 60 s), the template survives past T: a new connection 3 s
    later still reaches the same server, and the template's Expires shows about 60 s."""
    key = case.key(TCP, 80)
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=2), case.dests()),),
        steps=(
            Send((case.flow(TCP, client, 40001, case.vip(0), 80),)),
            Advance(3.0),
            Send((case.flow(TCP, client, 40002, case.vip(0), 80),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(1) == r.rs(0), (
        "the template outlives T while it controls a connection"
    )
    observed = r.templates_observed[1]
    if observed is not None:
        mine = of_client(observed, client)
        assert len(mine) == 1 and mine[0].expires is not None and 50 <= mine[0].expires <= 60, (
            "Expires jumps to about 60 s"
        )


@rule(
    "extension-sticky-60",
    source="ip_vs_conn.c ip_vs_conn_expire() 894-905 (6.12.117): the "
    "60 s is stored in ct->timeout, so later ip_vs_conn_put(ct) re-arms +60 s",
)
def test_extension_sticky_60(case: Case) -> None:
    """After one extension the template's timeout stays 60 s: a new connection re-arms it to
    60 s, not T. Here the re-arming connection is closed by the client's FIN (FIN_WAIT, 1 s), so
    a template re-armed to T=2 s would be gone 3 s later; re-armed to 60 s it still holds the
    client on its server."""
    key = case.key(TCP, 80)
    client = case.cip(0, 1)
    vip = case.vip(0)

    def conn(sport: int, *kinds: PacketKind) -> tuple[Flow, ...]:
        return tuple(case.flow(TCP, client, sport, vip, 80, kind=k) for k in kinds)

    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=2), case.dests()),),
        timeouts=ProtoTimeouts(tcpfin=1),
        steps=(
            Send(conn(40001, "syn", "ack")),  # t=0: template (T=2) + ESTABLISHED conn
            Advance(2.6),  # t=2: timer fires, conn alive -> 60 s
            Send(conn(40001, "fin")),  # FIN_WAIT 1 s: the conn is gone by t~3.6
            Advance(1.6),
            Send(conn(40002, "syn", "ack", "fin")),  # t~4.2: re-arms; conn gone by ~5.2
            Advance(3.0),
            Send(conn(40003, "syn")),  # t~7.2: past 4.2+T, well within 4.2+60
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    servers = {r.rs(i) for i in range(len(r.flows))}
    assert len(servers) == 1 and None not in servers, (
        "every connection of the client stays on one server"
    )
    observed = r.templates_observed[3]
    if observed is not None:
        mine = of_client(observed, client)
        assert len(mine) == 1 and mine[0].expires is not None and mine[0].expires >= 50, (
            "the re-armed template shows about 60 s, not T"
        )


@rule(
    "extension-expires",
    source="ip_vs_conn.c ip_vs_conn_expire() 836-905 (6.12.117): at the "
    "extended deadline with n_control == 0 the template is removed",
    slow=True,
)
def test_extension_expires(case: Case) -> None:
    """An extended template is not immortal: once its last controlled connection is gone (here
    closed by the client's FIN, FIN_WAIT 1 s), it is removed at its 60 s deadline and the
    client's next flow is scheduled afresh. Slow: waits out the 60 s extension (kernel timer
    slack is ~2 s at 60 s, so the check comes 5 s after the deadline)."""
    key = case.key(TCP, 80)
    client = case.cip(0, 1)
    vip = case.vip(0)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=2), case.dests()),),
        timeouts=ProtoTimeouts(tcpfin=1),
        steps=(
            Send(
                (
                    case.flow(TCP, client, 40001, vip, 80),
                    case.flow(TCP, client, 40001, vip, 80, kind="ack"),
                )
            ),
            Advance(3.0),  # t=2: the timer fires with the connection alive -> deadline t=62
            Send((case.flow(TCP, client, 40001, vip, 80, kind="fin"),)),  # gone by t~4
            Advance(64.0),  # t~67: past 62 (+~2 s slack)
            Send((case.flow(TCP, client, 40002, vip, 80),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(1) == r.rs(2) == r.rs(0)
    assert r.rs(3) is not None and r.rs(3) != r.rs(0), (
        "after the extended deadline the client is scheduled afresh"
    )
    observed = r.templates_observed[2]
    if observed is not None:
        assert [t.daddr for t in of_client(observed, client)] == [case.rip(r.rs(3) or 0)], (
            "only the new template is left"
        )


@rule(
    "removed-dest",
    source="ip_vs_conn.c ip_vs_check_template() 756-798 (6.12.117): dest not "
    "AVAILABLE -> rehashed with vport/dport 0xFFFF, timer unchanged",
)
def test_removed_dest(case: Case) -> None:
    """Removing a template's dest sends that client's next new flow to another server; the
    old template stays in the table with TPrt/DPrt FFFF until its own timer expires (OPS, T=2,
    so nothing extends it)."""
    key = case.key(UDP, 53)
    client = case.cip(0, 1)
    dests = case.dests()
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=2, ops=True), dests),),
        steps=(
            Send((case.flow(UDP, client, 40001, case.vip(0), 53),)),  # rr: rs3
            DelDest(key, dests[2].addr, dests[2].port),
            Send((case.flow(UDP, client, 40002, case.vip(0), 53),)),
            Advance(3.0),
            Send((case.flow(UDP, case.cip(1, 1), 40003, case.vip(0), 53),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2, "rr's first pick is rs3"
    assert r.rs(1) is not None and r.rs(1) != 2, "removed server: rescheduled"
    after_delete, later = r.templates_observed[1], r.templates_observed[2]
    if after_delete is not None and later is not None:
        dead = [t for t in of_client(after_delete, client) if t.invalidated]
        assert len(dead) == 1 and dead[0].daddr == case.rip(2) and dead[0].dport == 0xFFFF, (
            "the old template lingers with TPrt/DPrt FFFF"
        )
        assert not [t for t in later if t.invalidated], (
            "the invalidated template expires on its own timer"
        )


@rule(
    "revive",
    source="ip_vs_ctl.c ip_vs_trash_get_dest() 781, __ip_vs_update_dest() 1061-1084 "
    "(6.12.117): the same dest object returns, AVAILABLE, at the list head",
    diverges={
        "nftlb": "DELETE /farms/<f>/backends/<b> drops that backend's sessions (measured: GET "
        "/farms/<f>/sessions is empty right after), so a re-added backend gets no client back",
    },
)
def test_revive(case: Case) -> None:
    """Removing and re-adding the same dest before the client's next flow restores the client to
    its old server (its template was never looked up while the dest was gone, so it was never
    invalidated), and the re-added dest sits at the head of the list, where rr starts again."""
    key = case.key(TCP, 80)
    dests = case.dests()
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=30), dests),),
        steps=(
            Send((case.flow(TCP, client, 40001, case.vip(0), 80),)),  # rr: rs3
            DelDest(key, dests[2].addr, dests[2].port),
            AddDest(key, dests[2]),
            Send(
                (
                    case.flow(TCP, case.cip(1, 1), 40002, case.vip(0), 80),  # new client: head
                    case.flow(TCP, client, 40003, case.vip(0), 80),  # a fresh pick would be rs2
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2, "rr's first pick is rs3"
    assert r.rs(2) == 2, "the client returns to its revived server"
    assert r.rs(1) == 2, "the revived dest is at the head: rr picks it next"


@rule(
    "weight0-default",
    source="ip_vs_conn.c ip_vs_check_template() 756-798 and "
    "expire_quiescent_template 740 (6.12.117): weight 0 alone does not invalidate",
)
def test_weight0_default(case: Case) -> None:
    """With its dest at weight 0 and expire_quiescent_template=0, a persistent client keeps
    reaching its server, while new clients avoid it."""
    key = case.key(TCP, 80)
    dests = case.dests()
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=30), dests),),
        steps=(
            Send((case.flow(TCP, client, 40001, case.vip(0), 80),)),  # rr: rs3
            weight(key, dests[2], 0),
            Send(
                (
                    case.flow(TCP, client, 40002, case.vip(0), 80),
                    case.flow(TCP, case.cip(1, 1), 40003, case.vip(0), 80),
                    case.flow(TCP, case.cip(2, 1), 40004, case.vip(0), 80),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2 and r.rs(1) == 2, "the persistent client stays on rs3"
    assert r.rs(2) not in (None, 2) and r.rs(3) not in (None, 2), (
        "new clients avoid the weight-0 server"
    )


@rule(
    "weight0-quiescent",
    source="ip_vs_conn.c ip_vs_check_template() 756-798, expire_quiescent_template 740 (6.12.117)",
)
def test_weight0_quiescent(case: Case) -> None:
    """With expire_quiescent_template=1 a template whose dest has weight 0 is invalidated at the
    client's next new flow: the client is rescheduled to a server with weight > 0, and the old
    template lingers with TPrt/DPrt FFFF."""
    key = case.key(TCP, 80)
    dests = case.dests()
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=30), dests),),
        steps=(
            Send((case.flow(TCP, client, 40001, case.vip(0), 80),)),  # rr: rs3
            weight(key, dests[2], 0),
            SetSysctl("expire_quiescent_template", 1),
            Send((case.flow(TCP, client, 40002, case.vip(0), 80),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2, "rr's first pick is rs3"
    assert r.rs(1) not in (None, 2), "the client leaves the weight-0 server"
    observed = r.templates_observed[1]
    if observed is not None:
        assert [t.daddr for t in of_client(observed, client) if t.invalidated] == [case.rip(2)], (
            "the quiesced template is invalidated (FFFF)"
        )


@rule(
    "removed-dest-conn",
    source="ip_vs_core.c ip_vs_in_hook() 2045-2062 (6.12.117): dest not "
    "AVAILABLE -> NF_DROP, or with expire_nodest_conn expire the conn and schedule",
)
def test_removed_dest_conn(case: Case) -> None:
    """Packets of an existing connection whose dest was removed are dropped while
    expire_nodest_conn=0; with expire_nodest_conn=1 the next one expires the connection and is
    scheduled afresh (on a persistent service: a new template on a remaining server). UDP, so
    the retried packet may create a connection."""
    key = case.key(UDP, 53)
    dests = case.dests()
    client = case.cip(0, 1)

    def again(n: int) -> Send:
        return Send((case.flow(UDP, client, 40001, case.vip(0), 53, payload=b"again%d" % n),))

    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=30), dests),),
        steps=(
            Send((case.flow(UDP, client, 40001, case.vip(0), 53),)),  # rr: rs3
            DelDest(key, dests[2].addr, dests[2].port),
            again(1),
            SetSysctl("expire_nodest_conn", 1),
            again(2),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2, "rr's first pick is rs3"
    assert r.observed[1].kind == "dropped", "expire_nodest_conn=0: dropped"
    assert r.rs(2) not in (None, 2), "expire_nodest_conn=1: rescheduled"


@rule(
    "port-reuse",
    source="ip_vs_core.c ip_vs_in_hook() 2011-2044 and is_new_conn_expected() "
    "1103 (6.12.117): controlled connections are never expired for reuse",
)
def test_port_reuse(case: Case) -> None:
    """On a persistent service a SYN that reuses a client tuple still in the connection table
    follows that connection to its server, even though the client's template was invalidated
    meanwhile (weight 0 with expire_quiescent_template=1) and the client's other new connections
    go elsewhere."""
    key = case.key(TCP, 80)
    dests = case.dests()
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=30), dests),),
        sysctls=Sysctls(expire_quiescent_template=1),
        steps=(
            Send((case.flow(TCP, client, 40001, case.vip(0), 80),)),  # rr: rs3, SYN_RECV 60 s
            weight(key, dests[2], 0),
            Send((case.flow(TCP, client, 40002, case.vip(0), 80),)),  # invalidates the template
            Send((case.flow(TCP, client, 40001, case.vip(0), 80),)),  # reuses 40001's tuple
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2, "rr's first pick is rs3"
    assert r.rs(1) not in (None, 2), "the new connection is rescheduled"
    assert r.rs(2) == 2, "the reused tuple follows its connection to rs3"


@rule(
    "counters",
    source="ip_vs_conn.c ip_vs_bind_dest() 578-642 (6.12.117): templates count "
    "in persistconns only; no scheduler reads persistconns (ip_vs.h conn overhead)",
)
def test_counters(case: Case) -> None:
    """A template adds to PERSIST_CONNS only, which no scheduler reads: with lc, a client
    pinned by a template whose connection has expired does not make new clients avoid its
    server; its new connection then counts like any other."""
    key = case.key(UDP, 53)
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "lc", timeout=30), case.dests()),),
        timeouts=ProtoTimeouts(udp=1),
        steps=(
            Send((case.flow(UDP, client, 40001, case.vip(0), 53),)),  # lc tie: head, rs3
            Advance(2.0),  # the UDP connection expires (1 s), the template (30 s) stays
            Send(
                (
                    case.flow(UDP, case.cip(1, 1), 40002, case.vip(0), 53),
                    case.flow(UDP, client, 40003, case.vip(0), 53),
                    case.flow(UDP, case.cip(2, 1), 40004, case.vip(0), 53),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2 and r.rs(2) == 2, "the pinned client stays on rs3"
    assert r.rs(1) == 2, "the bare template does not load rs3 for lc"
    assert r.rs(3) not in (None, 2), "connections do load it"


@rule(
    "proc-format",
    source="ip_vs_conn.c ip_vs_conn_seq_show() 1108-1168 (6.12.117): template "
    "rows <proto, caddr, 0, vaddr|mark, vport, daddr, dport, NONE|ASSURED>",
)
def test_proc_format(case: Case) -> None:
    """The implementation's template rows carry exactly the kernel's fields: a normal persistent
    TCP service gives <TCP, client, 0, VIP, 80, RIP, 80>, ASSURED once its connection is
    ESTABLISHED; a fwmark service gives <IP, client, 0, mark, 0, RIP, 0>, NONE. (The rendering
    of these fields as /proc text is the implementation adapter's parser's job.)"""
    fam = case.family
    web = case.key(TCP, 80)
    fw = case.fwmark_key(9)
    client = case.cip(0, 1)
    scenario = Scenario(
        services=(
            ServiceConfig(Service(web, "rr", timeout=30), (Dest(case.rip(0), 80),)),
            ServiceConfig(Service(fw, "rr", timeout=30), (Dest(case.rip(1)),)),
        ),
        fwmark_rules=(FwmarkRule(9, fam, _host(case.vip(1))),),
        steps=(
            Send(
                (
                    case.flow(TCP, client, 40001, case.vip(0), 80),
                    case.flow(TCP, client, 40001, case.vip(0), 80, kind="ack"),
                    case.flow(TCP, client, 40002, case.vip(1), 443),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert (r.rs(0), r.rs(1), r.rs(2)) == (0, 0, 1)
    observed = r.templates_observed[0]
    if observed is None:
        pytest.skip(f"{case.impl.name} exposes no template table: only the outcomes were checked")
    rows = sorted(
        (t.proto, t.caddr, t.cport, t.vaddr, t.vport, t.daddr, t.dport, t.state) for t in observed
    )
    want = sorted(
        [
            (TCP, client, 0, case.vip(0), 80, case.rip(0), 80, "ASSURED"),
            (Proto.IP, client, 0, mark_vaddr(fam, 9), 0, case.rip(1), 0, "NONE"),
        ]
    )
    assert rows == want, "template rows differ from the kernel's fields"
