"""End-to-end smoke through the kernel lane with real packets.

A persistent fwmark service (mark 3, set by nftables in the director's mangle prerouting) with
three DR real servers: three flows of one client to different VIPs, ports and protocols all
land on one real server, and the kernel holds exactly one template for them, printed as
``IP <client> 0000 00000003 0000 <rip> 0000 NONE ...`` (docs/semantics.md §2.2, §3.7).
"""

from __future__ import annotations

import ipaddress

import pytest

from harness.addresses import VIP_NET, cip, rip, vip
from harness.implementations.kernel import KernelIPVS, read_ip_vs_conn
from harness.topology import Topology, build
from harness.traffic import engine
from impl.scenario import Scenario, Send, ServiceConfig
from impl.types import IPV4, Dest, Flow, Fwd, FwmarkRule, Proto, Service, ServiceKey

pytestmark = [pytest.mark.kernel, pytest.mark.netns]

MARK = 3


def test_fwmark_persistence_sends_one_client_to_one_real_server() -> None:
    client = cip(IPV4, 0, 7)
    flows = (
        Flow(Proto.TCP, client, 40001, vip(IPV4, 0), 80),
        Flow(Proto.TCP, client, 40002, vip(IPV4, 1), 443),
        Flow(Proto.UDP, client, 40003, vip(IPV4, 2), 53),
    )
    key = ServiceKey(IPV4, fwmark=MARK)
    scenario = Scenario(
        "smoke-fwmark",
        (
            ServiceConfig(
                Service(key, "rr", timeout=60),
                tuple(Dest(rip(IPV4, i), 0, 1, Fwd.DR) for i in range(3)),
            ),
        ),
        (Send(flows),),
        fwmark_rules=(FwmarkRule(MARK, IPV4, VIP_NET[IPV4]),),
    )
    with (
        build(Topology(real_servers=3, families=(IPV4,))) as net,
        KernelIPVS().install(net, scenario) as director,
    ):
        results = engine.send_flows(net, flows)
        raw = read_ip_vs_conn(net.director.netns)
        templates = director.templates()

    outcomes = [r.outcome for r in results]
    assert all(o.kind == "forward" for o in outcomes), [str(r) for r in results]
    assert len({o.rs for o in outcomes}) == 1, [str(r) for r in results]
    chosen = rip(IPV4, outcomes[0].rs or 0)

    assert templates is not None and len(templates) == 1, raw
    t = templates[0]
    assert (t.proto, t.caddr, t.cport, t.vaddr, t.vport, t.daddr, t.dport) == (
        Proto.IP,
        client,
        0,
        ipaddress.ip_address(f"0.0.0.{MARK}"),
        0,
        chosen,
        0,
    ), raw
    row = f"IP  {int(client):08X} 0000 {MARK:08X} 0000 {int(chosen):08X} 0000 NONE"
    assert any(line.startswith(row) for line in raw.splitlines()), raw
