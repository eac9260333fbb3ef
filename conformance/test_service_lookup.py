"""Service lookup and scheduling triggers (docs/semantics.md §1, §8 cases 1-12).

Which service, if any, a packet reaches: fwmark first (per family), then the exact
<proto, VIP, port>, then the FTP fallback, then port zero; which packets may create a connection
at all; what happens when no dest can take a flow. Every case also checks its own claim on the
observed outcomes (packets), so a wrong model cannot make a wrong case pass.

Case 7 (source port 20) runs with the traffic engine's explicit opt-in (``allow_ftpdata``: it
refuses port 20 otherwise); case 11 (ICMP echo) is in test_protocols.py (``icmp``).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from conformance.runner.case import Case
from conformance.runner.rules import rule
from harness import addresses
from harness.addresses import VIP_NET
from impl.scenario import EditDest, Scenario, Send, ServiceConfig, SetSysctl
from impl.types import IPV4, IPV6, Dest, FwmarkRule, Proto, Service, ServiceKey

TCP, UDP = Proto.TCP, Proto.UDP


def _edit_weight(key: ServiceKey, dest: Dest, weight: int) -> EditDest:
    """``ipvsadm -e`` of ``dest`` with only its weight changed."""
    return EditDest(key, dataclasses.replace(dest, weight=weight))


def _host_net(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The one-address network of ``addr`` (a fwmark rule that covers a single VIP)."""
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


@rule("fwmark-wins", source="ip_vs_ctl.c ip_vs_service_find() 457-502 (6.12.117; 6.1: 417)")
def test_fwmark_wins(case: Case) -> None:
    """A packet carrying a mark is looked up as a fwmark service first: the fwmark service
    catches TCP and UDP to any port of the marked VIP, and an exact <TCP, VIP, 80> service is
    not used while the mark is set (ip_vs_service_find tries ``skb->mark`` before the tuple).
    An unmarked VIP still reaches its own exact service (the control)."""
    fam = case.family
    fw_key = case.fwmark_key(7)
    marked_exact = case.key(TCP, 80)
    control_exact = case.key(TCP, 80, vip=1)
    scenario = Scenario(
        services=(
            ServiceConfig(Service(fw_key, "rr"), (Dest(case.rip(0)), Dest(case.rip(1)))),
            ServiceConfig(Service(marked_exact, "rr"), (Dest(case.rip(2)),)),
            ServiceConfig(Service(control_exact, "rr"), (Dest(case.rip(2)),)),
        ),
        # only VIP0 is marked: VIP1 is the unmarked control
        fwmark_rules=(FwmarkRule(7, fam, _host_net(case.vip(0))),),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 2), 40002, case.vip(0), 80),
                    case.flow(UDP, case.cip(0, 3), 40003, case.vip(0), 53),
                    case.flow(TCP, case.cip(0, 4), 40004, case.vip(0), 8080),
                    case.flow(TCP, case.cip(0, 5), 40005, case.vip(1), 80),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    marked = [r.rs(i) for i in range(4)]
    assert all(rs in (0, 1) for rs in marked), (
        f"marked flows must reach the fwmark service's servers rs1/rs2, got {marked}"
    )
    assert r.rs(4) == 2, "the unmarked control must reach its exact service (rs3)"


@rule(
    "fwmark-af",
    source="ip_vs_ctl.c __ip_vs_svc_fwm_find() 436-453 (6.12.117): svc->af == af",
    families=(IPV4,),
)
def test_fwmark_af(case: Case) -> None:
    """The fwmark lookup matches the address family too: IPv6 traffic carrying mark 5 does not
    hit the IPv4 fwmark service with mark 5; it falls through to the exact IPv6 service.
    Runs once (parametrised as IPv4): the case itself sends both families."""
    v4, v6 = IPV4, IPV6
    vip6 = addresses.vip(v6, 0)
    scenario = Scenario(
        services=(
            ServiceConfig(Service(ServiceKey(v4, fwmark=5), "rr"), (Dest(addresses.rip(v4, 0)),)),
            ServiceConfig(
                Service(ServiceKey(v6, TCP, vip6, 80), "rr"), (Dest(addresses.rip(v6, 1)),)
            ),
        ),
        fwmark_rules=(FwmarkRule(5, v4, VIP_NET[v4]), FwmarkRule(5, v6, VIP_NET[v6])),
        steps=(
            Send(
                (
                    case.flow(TCP, addresses.cip(v6, 0, 1), 40001, vip6, 80),
                    case.flow(TCP, addresses.cip(v4, 0, 1), 40002, addresses.vip(v4, 0), 80),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 1, "marked IPv6 flow must use the IPv6 exact service (rs2)"
    assert r.rs(1) == 0, "marked IPv4 flow must use the IPv4 fwmark service (rs1)"


@rule(
    "ftp-fallback",
    source="ip_vs_ctl.c ip_vs_service_find() 478-487 (6.12.117): FTP fallback "
    "for vport 20 or >= ip_unprivileged_port_start; ip_vs_core.c ip_vs_sched_persist() 305-338",
)
def test_ftp_fallback(case: Case) -> None:
    """With a persistent TCP service on VIP:21 and no VIP:5000 service, a SYN to VIP:5000 is
    balanced by the :21 service under the <TCP, client, VIP, 0> key it shares with the client's
    FTP control connection: it lands on that connection's real server, forwarded to port 5000."""
    key = case.key(TCP, 21)
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(key, "rr", timeout=60),
                case.dests(),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 21),
                    # a second client moves rr on: a fresh pick for the next flow would differ
                    case.flow(TCP, case.cip(1, 1), 40002, case.vip(0), 21),
                    case.flow(TCP, case.cip(0, 1), 40003, case.vip(0), 5000),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.observed[2].kind == "forward", "VIP:5000 must be balanced"
    assert r.rs(2) == r.rs(0), "VIP:5000 must follow the client's :21 server"
    assert r.observed[2].port == 5000, "the data port is kept (5000)"


@rule(
    "ftp-fallback-nonpersistent",
    source="ip_vs_core.c ip_vs_schedule() 508-521 and "
    "ip_vs_leave() 585-671 (6.12.117): svc->port 21, dport != 21 -> NF_ACCEPT",
)
def test_ftp_fallback_nonpersistent(case: Case) -> None:
    """The FTP fallback finds a non-persistent :21 service for a SYN to VIP:5000, but a
    non-persistent service schedules only its own port: ip_vs_leave hands the packet to the
    director's own stack (not balanced), while VIP:21 itself is balanced."""
    key = case.key(TCP, 21)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), (Dest(case.rip(0)), Dest(case.rip(1)))),),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 21),
                    case.flow(TCP, case.cip(0, 1), 40002, case.vip(0), 5000),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.observed[0].kind == "forward", "VIP:21 must be balanced"
    assert r.observed[1].kind == "local", "VIP:5000 must reach the director's stack"


@rule(
    "ftp-vs-portzero",
    source="ip_vs_ctl.c ip_vs_service_find() 478-495 (6.12.117); "
    "ip_vs_core.c ip_vs_sched_persist() 305-338, template found 340-350",
)
def test_ftp_vs_portzero(case: Case) -> None:
    """With persistent :21 and persistent :0 TCP services on one VIP, ports 20 and >= 1024 are
    served by the :21 service (FTP fallback comes before port zero) and ports 1-1023 other than
    20 by the :0 service; all of them key templates on <TCP, client, VIP, 0>, so one client's
    flows share one template (and its server) across both services."""
    ftp = case.key(TCP, 21)
    zero = case.key(TCP, 0)
    # disjoint dest sets make the serving service visible: :21 -> rs1, :0 -> rs3
    scenario = Scenario(
        services=(
            ServiceConfig(Service(ftp, "rr", timeout=60), (Dest(case.rip(0)),)),
            ServiceConfig(Service(zero, "rr", timeout=60), (Dest(case.rip(2)),)),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 5000),  # FTP fallback
                    case.flow(TCP, case.cip(0, 2), 40002, case.vip(0), 20),  # FTP fallback
                    case.flow(TCP, case.cip(0, 3), 40003, case.vip(0), 22),  # port zero
                    case.flow(TCP, case.cip(0, 4), 40004, case.vip(0), 1023),  # port zero
                    # one client through both services: :0 first, then :21 and :6000 follow it
                    case.flow(TCP, case.cip(0, 5), 40005, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 5), 40006, case.vip(0), 21),
                    case.flow(TCP, case.cip(0, 5), 40007, case.vip(0), 6000),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert [r.rs(i) for i in range(4)] == [0, 0, 2, 2], (
        "ports 5000 and 20 -> :21 service (rs1), 22 and 1023 -> :0 service (rs3)"
    )
    assert r.rs(4) == r.rs(5) == r.rs(6) == 2, "one client shares one template across :0 and :21"
    observed = r.templates_observed[0]
    if observed is not None:
        mine = [t for t in observed if t.caddr == case.cip(0, 5) and not t.invalidated]
        assert len(mine) == 1 and mine[0].vport == 0, (
            "exactly one <TCP, client, VIP, 0> template for the client"
        )


@rule(
    "nonpersist-port0",
    source="ip_vs_core.c ip_vs_schedule() 508-521 (6.12.117): "
    "'port zero only supported in persistent services'; ip_vs_leave() 585",
)
def test_nonpersist_port0(case: Case) -> None:
    """A non-persistent port-zero service never balances: its vport (0) never equals the
    packet's, so ip_vs_schedule creates no connection and ip_vs_leave answers with ICMP port
    unreachable, for TCP and UDP alike."""
    scenario = Scenario(
        services=(
            ServiceConfig(
                Service(case.key(TCP, 0), "rr"),
                (Dest(case.rip(0)), Dest(case.rip(1))),
            ),
            ServiceConfig(
                Service(case.key(UDP, 0), "rr"),
                (Dest(case.rip(0)), Dest(case.rip(1))),
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 1), 40002, case.vip(0), 3306),
                    case.flow(UDP, case.cip(0, 1), 40003, case.vip(0), 53),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert [o.kind for o in r.observed] == ["unreachable"] * 3


@rule(
    "ftpdata-sport",
    source="ip_vs_core.c ip_vs_schedule() 453 (*ignored = 1) and 479-483 (cport == FTPDATA: "
    "'Not scheduling FTPDATA', no connection, so conn_schedule returns NF_ACCEPT) (6.12.117)",
    diverges={
        "nftlb": "nftlb has no FTP-data exception: its farm map 'ip protocol . ip daddr . th "
        "dport vmap' (src/nft.c) balances every packet to vip:vport whatever its source port",
    },
)
def test_ftpdata_sport(case: Case) -> None:
    """A packet from client source port 20 (FTPDATA) is never scheduled: ip_vs_schedule returns
    no connection with ``ignored = 1`` before any scheduler or template lookup, and the packet
    goes to the director's own stack (a SYN gets a RST, a UDP datagram an ICMP port
    unreachable). This holds on a persistent service too, where no template is created for the
    client. The same services balance the same flows from another source port (the controls)."""
    web = case.key(TCP, 80)
    sticky = case.key(TCP, 80, vip=1)
    dns = case.key(UDP, 53)
    dests = case.dests()
    ftpdata = [case.cip(0, 1), case.cip(0, 2), case.cip(0, 3)]
    controls = [case.cip(0, 4), case.cip(0, 5), case.cip(0, 6)]
    scenario = Scenario(
        services=(
            ServiceConfig(Service(web, "rr"), dests),
            ServiceConfig(Service(sticky, "rr", timeout=60), dests),
            ServiceConfig(Service(dns, "rr"), dests),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, ftpdata[0], 20, case.vip(0), 80),
                    case.flow(TCP, ftpdata[1], 20, case.vip(1), 80),
                    case.flow(UDP, ftpdata[2], 20, case.vip(0), 53),
                    case.flow(TCP, controls[0], 40004, case.vip(0), 80),
                    case.flow(TCP, controls[1], 40005, case.vip(1), 80),
                    case.flow(UDP, controls[2], 40006, case.vip(0), 53),
                )
            ),
        ),
    )
    r = case.play(scenario, allow_ftpdata=True)
    r.assert_conforms()
    assert [o.kind for o in r.observed[:3]] == ["local", "local", "unreachable"], (
        "source port 20 reaches the director's stack (RST, RST, ICMP port unreachable)"
    )
    assert all(r.rs(i) is not None for i in range(3, 6)), (
        "the same services balance other source ports"
    )
    tables = [r.templates_expected[0]]
    if r.templates_observed[0] is not None:
        tables.append(r.templates_observed[0])
    for table in tables:
        assert not [t for t in table if t.caddr in ftpdata], (
            "no template for a source port 20 client"
        )
        assert [t.caddr for t in table] == [controls[1]], (
            "exactly the persistent control's template"
        )


@rule(
    "tcp-nonsyn",
    source="ip_vs_proto_tcp.c tcp_conn_schedule() 36-102 (6.12.117): SYN needed unless sloppy_tcp",
)
def test_tcp_nonsyn(case: Case) -> None:
    """Only a SYN creates a TCP connection: a bare ACK with no connection goes to the
    director's own stack (sloppy_tcp=0, answered with a RST) but is scheduled once
    sloppy_tcp=1."""
    key = case.key(TCP, 80)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), (Dest(case.rip(0)), Dest(case.rip(1)))),),
        steps=(
            Send((case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80, kind="ack"),)),
            SetSysctl("sloppy_tcp", 1),
            Send((case.flow(TCP, case.cip(0, 1), 40002, case.vip(0), 80, kind="ack"),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.observed[0].kind == "local", "ACK without sloppy_tcp: not balanced"
    assert r.observed[1].kind == "forward", "ACK with sloppy_tcp=1: balanced"


@rule(
    "tcp-rst-never",
    source="ip_vs_proto_tcp.c tcp_conn_schedule() 36-102 (6.12.117): "
    "th->rst -> no connection, sloppy or not",
)
def test_tcp_rst_never(case: Case) -> None:
    """A RST with no connection is never scheduled, with sloppy_tcp=0 or 1: it reaches the
    director's own stack, which does not answer a RST (so nothing comes back)."""
    key = case.key(TCP, 80)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), (Dest(case.rip(0)), Dest(case.rip(1)))),),
        steps=(
            Send((case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80, kind="rst"),)),
            SetSysctl("sloppy_tcp", 1),
            Send((case.flow(TCP, case.cip(0, 1), 40002, case.vip(0), 80, kind="rst"),)),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert [o.kind for o in r.observed] == ["dropped", "dropped"], (
        "a RST is never balanced and never answered"
    )


@rule(
    "udp-any",
    source="ip_vs_proto_udp.c udp_conn_schedule() 32 (6.12.117); "
    "ip_vs_core.c ip_vs_in_hook() conn_in_get 2008",
    diverges={
        "nftlb": "nftlb dsr farms run in the netdev ingress hook (table netdev nftlb, src/nft.c), "
        "before conntrack: a non-persistent farm runs 'numgen inc' for every packet, so the "
        "datagrams of one flow spread over backends",
    },
)
def test_udp_any(case: Case) -> None:
    """Any UDP datagram can create a connection, and later datagrams of the same 5-tuple follow
    that connection instead of being scheduled again (rr would have moved on)."""
    key = case.key(UDP, 53)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), case.dests()),),
        steps=(
            Send(
                (
                    case.flow(UDP, case.cip(0, 1), 40001, case.vip(0), 53, payload=b"first"),
                    case.flow(UDP, case.cip(0, 2), 40002, case.vip(0), 53),
                )
            ),
            # the same 5-tuples again: separate step so each Send has unique (client, sport)
            Send(
                (
                    case.flow(UDP, case.cip(0, 1), 40001, case.vip(0), 53, payload=b"second"),
                    case.flow(UDP, case.cip(0, 2), 40002, case.vip(0), 53),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) is not None and r.rs(1) is not None
    assert r.rs(0) != r.rs(1), "rr spreads two new connections"
    assert (r.rs(2), r.rs(3)) == (r.rs(0), r.rs(1)), "datagrams follow their connection"


@rule(
    "conn-sticks",
    source="ip_vs_core.c ip_vs_in_hook() 2008-2067 (6.12.117): an existing "
    "connection is followed; weight changes have no hook on connections",
    diverges={
        "nftlb": "nftlb dsr farms run in the netdev ingress hook (table netdev nftlb, src/nft.c), "
        "before conntrack: a non-persistent farm schedules every packet, so the ACK of an "
        "existing connection can reach another backend",
    },
)
def test_conn_sticks(case: Case) -> None:
    """Once a connection exists its later packets follow it, even after its real server's
    weight drops to 0 (only new connections see the new weights)."""
    key = case.key(TCP, 80)
    dests = case.dests()
    first = case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), dests),),
        steps=(
            Send((first,)),
            # rr picks the newest dest first: rs3 (index 2) gets weight 0 now
            _edit_weight(key, dests[2], 0),
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80, kind="ack"),
                    case.flow(TCP, case.cip(0, 2), 40002, case.vip(0), 80),
                    case.flow(TCP, case.cip(0, 3), 40003, case.vip(0), 80),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert r.rs(0) == 2, "rr's first pick is the newest dest (rs3)"
    assert r.rs(1) == r.rs(0), "the ACK follows its connection to the weight-0 server"
    assert r.rs(0) not in (r.rs(2), r.rs(3)), "new connections avoid the weight-0 server"


@rule(
    "no-dest",
    source="ip_vs_core.c ip_vs_leave() 585-671 (6.12.117): ICMP port unreachable; "
    "svc->port 21 with dport != 21 -> NF_ACCEPT",
)
def test_no_dest(case: Case) -> None:
    """When the scheduler finds no dest (every weight 0), ip_vs_leave answers with ICMP port
    unreachable, for TCP too; a persistent FTP service with no dest hands a flow to a data port
    (>= 1024, via the FTP fallback) to the director's stack instead, while its port 21 gets the
    ICMP unreachable."""
    web = case.key(TCP, 80)
    dns = case.key(UDP, 53)
    ftp = case.key(TCP, 21, vip=1)
    zero = (Dest(case.rip(0), weight=0), Dest(case.rip(1), weight=0))
    scenario = Scenario(
        services=(
            ServiceConfig(Service(web, "rr"), zero),
            ServiceConfig(Service(dns, "rr"), zero),
            ServiceConfig(Service(ftp, "rr", timeout=60), ()),
        ),
        steps=(
            Send(
                (
                    case.flow(TCP, case.cip(0, 1), 40001, case.vip(0), 80),
                    case.flow(UDP, case.cip(0, 1), 40002, case.vip(0), 53),
                    case.flow(TCP, case.cip(0, 1), 40003, case.vip(1), 5000),
                    case.flow(TCP, case.cip(0, 1), 40004, case.vip(1), 21),
                )
            ),
        ),
    )
    r = case.play(scenario)
    r.assert_conforms()
    assert [o.kind for o in r.observed] == ["unreachable", "unreachable", "local", "unreachable"]
