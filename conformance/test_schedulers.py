"""Schedulers (docs/semantics.md §4, §8 cases 33-44).

Non-persistent services, or persistent ones where every flow needs a new template, so each
flow is a scheduling decision. Dests are added rs1, rs2, rs3 (indexes 0, 1, 2) unless a case
says otherwise; the kernel lists them newest first (rs3, rs2, rs1). The exact picks of every
scheduler are graded against the model (``assert_conforms``); each case additionally asserts
the scheduler's qualitative rule on the observed outcomes. sh and mh hash values are never
computed here: the model predicts them, the case checks what must hold whatever the hash.

§8 case 45 (OPS) lives in test_protocols.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter

from conformance.runner.case import Case
from conformance.runner.grading import CaseResult
from conformance.runner.rules import rule
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    Scenario,
    Send,
    ServiceConfig,
)
from impl.types import Dest, Flow, FwmarkRule, Proto, ProtoTimeouts, Service, SvcFlag

TCP, UDP = Proto.TCP, Proto.UDP


def picks(r: CaseResult, flows: range | list[int] | None = None) -> list[int | None]:
    """Observed real server of each flow (None: not forwarded)."""
    return [r.rs(i) for i in (flows if flows is not None else range(len(r.flows)))]


def new_flows(
    case: Case, proto: Proto, vip: int, dport: int, n: int, first: int = 0, net: int = 0
) -> tuple[Flow, ...]:
    """``n`` new connections from distinct clients (hosts first+1..) of client network ``net``."""
    return tuple(
        case.flow(proto, case.cip(net, first + i + 1), 40000 + first + i, case.vip(vip), dport)
        for i in range(n)
    )


@rule(
    "order",
    source="ip_vs_ctl.c __ip_vs_update_dest() 1084 list_add_rcu (6.12.117); "
    "ip_vs_rr.c ip_vs_rr_schedule() 53",
)
def test_order(case: Case) -> None:
    """Dests are inserted at the head of the service's list, so dests added A, B, C are listed
    C, B, A, and rr, whose pointer starts at the list head, picks C, B, A, then C again."""
    key = case.key(TCP, 80)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), case.dests(1, 1, 1)),),
        steps=(Send(new_flows(case, TCP, 0, 80, 4)),),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert picks(r) == [2, 1, 0, 2], "rr over dests added rs1, rs2, rs3: rs3, rs2, rs1"


@rule(
    "rr-add",
    source="ip_vs_rr.c ip_vs_rr_schedule() 53-98 (6.12.117): adding a dest does not "
    "move the pointer; the new dest is at the head, reached at the next wrap",
    diverges={
        "nftlb": "nftlb rr is one nft rule 'numgen inc mod N map {...}' (src/nft.c); a backend "
        "change re-renders it with the new N, so its counter restarts at the first backend "
        "(measured: the pick after AddDest repeats the first backend)",
    },
)
def test_rr_add(case: Case) -> None:
    """A dest added mid-sequence sits at the list head and does not move rr's pointer: the
    sequence continues with the remaining old dests, then wraps to the new one."""
    key = case.key(TCP, 80)
    a, b, c = case.dests(1, 1, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), (a, b)),),  # listed b, a
        steps=(
            Send(new_flows(case, TCP, 0, 80, 1)),
            AddDest(key, c),  # listed c, b, a; pointer still at b
            Send(new_flows(case, TCP, 0, 80, 3, first=1)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert picks(r) == [1, 0, 2, 1], "b, then a, then wrap to the new c, then b"


@rule(
    "rr-del",
    source="ip_vs_rr.c ip_vs_rr_del_dest() 33-46 (6.12.117): the pointer moves back "
    "to the entry before the deleted dest",
    diverges={
        "nftlb": "nftlb rr is one nft rule 'numgen inc mod N map {...}' (src/nft.c); deleting a "
        "backend re-renders it with the new N, so the walk restarts at the first backend "
        "instead of moving back before the deleted one (measured)",
    },
)
def test_rr_del(case: Case) -> None:
    """Deleting the dest rr just picked moves the pointer back one entry, so the next pick is
    the deleted dest's successor."""
    key = case.key(TCP, 80)
    ds = case.dests(1, 1, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), ds),),
        steps=(
            Send(new_flows(case, TCP, 0, 80, 2)),  # rs3, rs2
            DelDest(key, ds[1].addr, ds[1].port),  # delete rs2, just picked
            Send(new_flows(case, TCP, 0, 80, 2, first=2)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert picks(r) == [2, 1, 0, 2], "after deleting rs2 the next pick is rs1"


@rule(
    "rr-skip",
    source="ip_vs_rr.c 53, ip_vs_wrr.c 160, ip_vs_lc.c 24, ip_vs_wlc.c 29 "
    "(6.12.117): IP_VS_DEST_F_OVERLOAD and weight 0 are skipped",
)
def test_rr_skip(case: Case) -> None:
    """rr, wrr, lc and wlc never pick a weight-0 dest nor an OVERLOADed one: with rs2 at weight
    0 and rs1 at u_threshold 1, rs2 gets nothing and rs1 at most its one connection."""
    scheds = ("rr", "wrr", "lc", "wlc")
    configs = []
    steps = []
    for port, sched in enumerate(scheds, start=80):
        key = case.key(TCP, port)
        ds = (Dest(case.rip(0), u_threshold=1), Dest(case.rip(1), weight=0), Dest(case.rip(2)))
        configs.append(ServiceConfig(Service(key, sched), ds))
        steps.append(
            Send(
                tuple(
                    case.flow(TCP, case.cip(port - 80, h), 41000 + 10 * port + h, case.vip(0), port)
                    for h in range(1, 5)
                )
            )
        )
    scenario = Scenario(services=tuple(configs), steps=tuple(steps))
    r = case.play(scenario)
    r.assert_conforms()
    for n, sched in enumerate(scheds):
        got = picks(r, list(range(4 * n, 4 * n + 4)))
        assert None not in got, f"{sched}: every flow is balanced"
        assert 1 not in got, f"{sched}: the weight-0 rs2 is skipped"
        assert got.count(0) <= 1, f"{sched}: rs1 is skipped once overloaded"


@rule(
    "wrr",
    source="ip_vs_wrr.c ip_vs_wrr_schedule() 160-236, ip_vs_wrr_dest_changed() 138 (6.12.117)",
    diverges={
        "nftlb": "weighted nftlb rr is 'numgen inc mod <sum of weights> map { 0-3 : a, ... }' "
        "(src/nft.c): each cycle has the 4:3:2 proportions, but an edit that keeps the weight "
        "sum keeps the rule and its counter, so the walk does not restart at the head (measured)",
        "keepalived": "an edit that changes nothing (ipvsadm -e with the same values) never "
        "reaches IPVS through keepalived: a reload compares the new configuration with the old "
        "and sends only differences (keepalived/check/ipwrapper.c clear_diff_services), so "
        "ip_vs_wrr_dest_changed never runs and the walk does not restart at the head",
    },
)
def test_wrr(case: Case) -> None:
    """wrr with weights 4, 3, 2 in list order settles into the cycle A A B A B C A B C (each
    dest picked in proportion to its weight), and any dest edit restarts the walk from the list
    head: the pick right after an edit is A, where the unedited walk would give B."""
    key = case.key(UDP, 53)
    a, b, c = Dest(case.rip(0), weight=4), Dest(case.rip(1), weight=3), Dest(case.rip(2), weight=2)
    client = case.cip(0, 1)

    def datagrams(first: int, n: int) -> Send:
        return Send(
            tuple(
                case.flow(UDP, client, 40001 + i, case.vip(0), 53) for i in range(first, first + n)
            )
        )

    scenario = Scenario(
        services=(ServiceConfig(Service(key, "wrr"), (c, b, a)),),  # listed a, b, c
        steps=(datagrams(0, 14), EditDest(key, b), datagrams(14, 3)),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = picks(r)
    assert Counter(got[3:12]) == Counter({0: 4, 1: 3, 2: 2}), "one full cycle gives weights 4:3:2"
    assert got[14] == 0, "after an edit the walk restarts at the head (A)"


def _sh_clients(case: Case, vip: int, sports: tuple[int, ...]) -> Send:
    return Send(
        tuple(
            case.flow(UDP, case.cip(0, h), sport + h, case.vip(vip), 53)
            for h in range(1, 9)
            for sport in sports
        )
    )


@rule(
    "sh",
    source="ip_vs_sh.c ip_vs_sh_hashkey() 84, ip_vs_sh_get() 104, ip_vs_sh_get_fallback() "
    "121, ip_vs_sh_reassign() 163 (6.12.117)",
)
def test_sh(case: Case) -> None:
    """sh maps each client address to a bucket of a 256-bucket table filled by weight (1, 2, 1
    here): one client's flows share a server whatever the source port; with sh-port the source
    port enters the hash and spreads one client's flows; a bucket whose dest has weight 0 refuses
    the flow (ICMP unreachable) unless sh-fallback probes on to an available dest. The buckets
    themselves are the model's."""
    weights = (1, 2, 1)
    zero_mid = (1, 0, 1)
    svc = [case.key(UDP, 53, vip=i) for i in range(4)]
    scenario = Scenario(
        services=(
            ServiceConfig(Service(svc[0], "sh"), case.dests(*weights)),
            ServiceConfig(Service(svc[1], "sh", sched_flags=SvcFlag.SCHED2), case.dests(*weights)),
            ServiceConfig(Service(svc[2], "sh"), case.dests(*zero_mid)),
            ServiceConfig(Service(svc[3], "sh", sched_flags=SvcFlag.SCHED1), case.dests(*zero_mid)),
        ),
        steps=(
            _sh_clients(case, 0, (40000, 41000)),
            _sh_clients(case, 1, (42000, 43000)),
            _sh_clients(case, 2, (44000,)),
            _sh_clients(case, 3, (45000,)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = picks(r)
    plain, port, refuse, fallback = got[0:16], got[16:32], got[32:40], got[40:48]
    assert None not in plain and all(plain[i] == plain[i + 1] for i in range(0, 16, 2)), (
        "sh: a client's flows share a server whatever the source port"
    )
    assert None not in port and any(port[i] != port[i + 1] for i in range(0, 16, 2)), (
        "sh-port: the source port changes the mapping"
    )
    refused = [o.kind for o in r.observed[32:40] if o.kind != "forward"]
    assert 1 not in refuse and refused and set(refused) == {"unreachable"}, (
        "weight 0, no fallback: that bucket's clients get ICMP unreachable"
    )
    assert None not in fallback and 1 not in fallback, (
        "sh-fallback: every client lands on an available dest"
    )


@rule(
    "mh",
    source="ip_vs_mh.c ip_vs_mh_populate() 159, ip_vs_mh_get() 235, "
    "ip_vs_mh_get_fallback() 247 (6.12.117): the table uses last_weight",
)
def test_mh(case: Case) -> None:
    """mh keeps a 4093-slot Maglev table built from last_weight, so setting one dest's weight to
    0 does not rebuild anyone else's slots: with mh-fallback only that dest's clients move (to
    another dest), everyone else keeps their server. The slots themselves are the model's."""
    key = case.key(UDP, 53)
    ds = case.dests(1, 1, 1)
    n = 12

    def round_(sport: int) -> Send:
        return Send(
            tuple(
                case.flow(UDP, case.cip(0, h), sport + h, case.vip(0), 53) for h in range(1, n + 1)
            )
        )

    scenario = Scenario(
        services=(ServiceConfig(Service(key, "mh", sched_flags=SvcFlag.SCHED1), ds),),
        steps=(round_(40000), EditDest(key, dataclasses.replace(ds[1], weight=0)), round_(41000)),
    )
    r = case.play(scenario)
    r.assert_conforms()
    before, after = picks(r)[:n], picks(r)[n:]
    assert None not in before and None not in after
    assert 1 in before, "some client maps to rs2 (else the case shows nothing)"
    for h, (b, a) in enumerate(zip(before, after, strict=True), start=1):
        if b == 1:
            assert a != 1, f"client {h}: rs2 has weight 0, must move"
        else:
            assert a == b, f"client {h}: not on rs2, must keep its server"


@rule(
    "dh",
    source="ip_vs_dh.c ip_vs_dh_schedule() 213-237, ip_vs_dh_hashkey() 71 (6.12.117): "
    "the key is the packet's destination address",
)
def test_dh(case: Case) -> None:
    """dh hashes the packet's destination: every client of one VIP goes to the same server."""
    scenario = Scenario(
        services=tuple(
            ServiceConfig(Service(case.key(TCP, 80, vip=v), "dh"), case.dests(1, 1, 1))
            for v in (0, 1)
        ),
        steps=(Send(new_flows(case, TCP, 0, 80, 6) + new_flows(case, TCP, 1, 80, 6, net=1)),),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = picks(r)
    for v in (0, 1):
        one = got[6 * v : 6 * v + 6]
        assert None not in one and len(set(one)) == 1, f"VIP{v}: one server for all"


@rule(
    "lc-wlc",
    source="ip_vs_lc.c ip_vs_lc_schedule() 24, ip_vs_wlc.c ip_vs_wlc_schedule() 29, "
    "ip_vs.h ip_vs_dest_conn_overhead() 1876 (6.12.117; 6.1.192: 1746)",
)
def test_lc_wlc(case: Case) -> None:
    """lc and wlc weigh active connections 256 times inactive ones (active*256 + inactive or
    total, by stable level), ties keeping the earlier dest; UDP connections are never active.
    lc on a fwmark service that takes TCP and UDP keeps sending to the dest loaded only with UDP
    connections; wlc with weights 1, 2, 3 spreads six TCP connections 1:2:3."""
    fam = case.family
    lc_key = case.fwmark_key(4)
    wlc_key = case.key(TCP, 80, vip=1)
    vip0 = ipaddress.ip_network(f"{case.vip(0)}/{case.vip(0).max_prefixlen}")

    def f(proto: Proto, host: int) -> Flow:
        return case.flow(
            proto, case.cip(0, host), 40000 + host, case.vip(0), 80 if proto is TCP else 53
        )

    scenario = Scenario(
        services=(
            ServiceConfig(Service(lc_key, "lc"), case.dests(1, 1, 1)),
            ServiceConfig(Service(wlc_key, "wlc"), case.dests(1, 2, 3)),
        ),
        fwmark_rules=(FwmarkRule(4, fam, vip0),),
        steps=(
            Send(tuple(f(p, h) for h, p in enumerate((UDP, TCP, TCP, UDP, UDP), start=1))),
            Send(new_flows(case, TCP, 1, 80, 6, net=1)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = picks(r)
    assert None not in got
    assert got[0] == got[3] == got[4], (
        "lc: UDP-only load (inactive) stays below one active TCP connection"
    )
    assert len({got[0], got[1], got[2]}) == 3, "lc: the TCP flows spread out"
    assert Counter(got[5:11]) == Counter({0: 1, 1: 2, 2: 3}), (
        "wlc: six connections spread by weight 1:2:3"
    )


@rule(
    "sed-nq",
    source="ip_vs_nq.c ip_vs_nq_schedule() 53, ip_vs_sed.c ip_vs_sed_schedule() 57 "
    "(6.12.117): overhead = activeconns + 1",
)
def test_sed_nq(case: Case) -> None:
    """nq returns the first idle dest in list order at once, whatever the weights; sed ranks by
    (active + 1) / weight, so a weight-5 dest takes the first four connections before a
    weight-1 dest ties with it (ties keep the earlier dest)."""
    ws = (1, 5, 1)  # listed rs3 (1), rs2 (5), rs1 (1)
    scenario = Scenario(
        services=(
            ServiceConfig(Service(case.key(TCP, 80), "nq"), case.dests(*ws)),
            ServiceConfig(Service(case.key(TCP, 80, vip=1), "sed"), case.dests(*ws)),
        ),
        steps=(Send(new_flows(case, TCP, 0, 80, 3) + new_flows(case, TCP, 1, 80, 4, net=1)),),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = picks(r)
    assert got[:3] == [2, 1, 0], "nq: idle dests in list order, weights ignored"
    assert got[3:7] == [1, 1, 1, 1], "sed: the weight-5 dest first"


@rule(
    "fo-ovf",
    source="ip_vs_fo.c ip_vs_fo_schedule() 21, ip_vs_ovf.c ip_vs_ovf_schedule() 25 (6.12.117)",
)
def test_fo_ovf(case: Case) -> None:
    """fo always picks the available dest with the highest weight (the earlier one on ties);
    ovf does too but skips a dest whose active connections exceed its weight, so a weight-2 dest
    takes three connections and the fourth moves on."""
    scenario = Scenario(
        services=(
            ServiceConfig(Service(case.key(TCP, 80), "fo"), case.dests(1, 3, 3)),
            ServiceConfig(Service(case.key(TCP, 80, vip=1), "ovf"), case.dests(1, 1, 2)),
        ),
        steps=(Send(new_flows(case, TCP, 0, 80, 4) + new_flows(case, TCP, 1, 80, 4, net=1)),),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = picks(r)
    assert got[:4] == [2, 2, 2, 2], "fo: highest weight, first of the tie (rs3)"
    assert got[4:7] == [2, 2, 2] and got[7] not in (None, 2), (
        "ovf: rs3 (weight 2) takes 3 connections, then the next dest"
    )


@rule(
    "overload",
    source="ip_vs_ctl.c __ip_vs_dest_update_overload() 968 (6.12.117; 6.1: 872); "
    "ip_vs_conn.c ip_vs_check_template() ignores OVERLOAD",
)
def test_overload(case: Case) -> None:
    """With u_threshold=2 a dest stops receiving new clients once it holds 2 connections (its
    persistent clients keep arriving, past the threshold) and takes new clients again once its
    connections drop below the lower threshold (u - u/4 when l_threshold is 0)."""
    key = case.key(UDP, 53)
    ds = (Dest(case.rip(0)), Dest(case.rip(1)), Dest(case.rip(2), u_threshold=2))
    first = case.cip(0, 1)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr", timeout=30), ds),),
        timeouts=ProtoTimeouts(udp=2),
        steps=(
            Send(
                new_flows(case, UDP, 0, 53, 7)  # rs3, rs2, rs1, rs3 (now full), ...
                + (case.flow(UDP, first, 41000, case.vip(0), 53),)
            ),  # persistent client
            Advance(3.0),  # every UDP connection expires (2 s): rs3 drops below the threshold
            Send(new_flows(case, UDP, 0, 53, 3, first=7)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    got = picks(r)
    assert None not in got
    assert got[0] == got[3] == 2, "rs3 takes clients until it holds 2 connections"
    assert 2 not in got[4:7], "an overloaded rs3 gets no new client"
    assert got[7] == 2, "its persistent client still arrives"
    assert 2 in got[8:11], "below the lower threshold rs3 takes new clients again"
