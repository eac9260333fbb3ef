"""Real connections: a client socket through the director to a name server in a real server."""

from __future__ import annotations

import pytest

from harness.addresses import cip, rip, vip
from harness.topology import Net
from harness.traffic.engine import quiet_endpoints, send_flows
from harness.traffic.packets import TrafficError
from harness.traffic.servers import ask_name_udp, fetch_name, serve
from impl.types import IPV4, IPV6, Family, Flow, Proto

from .nets import dnat_script, load_director_nft, route_vip_to

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["v4", "v6"])
def test_tcp_through_dnat_returns_the_server_name(fresh_net: Net, family: Family) -> None:
    """NAT return path: the reply from the RIP is un-NATed by the director; the client's FIN
    closes the connection and the server sees it (servers.accepted)."""
    quiet_endpoints(fresh_net)  # real sockets must still work with the quiet rules in place
    load_director_nft(fresh_net, dnat_script(rs=1, vport=80, rport=8080))
    client = cip(family, 14, 3)
    with serve(fresh_net, tcp_ports=(8080,), udp_ports=(8080,)) as servers:
        assert fetch_name(fresh_net, vip(family, 0), 80, saddr=client, sport=41000) == "rs2"
        assert ask_name_udp(fresh_net, vip(family, 0), 80, saddr=client, sport=41001) == "rs2"
    tcp = [a for a in servers.accepted if a.proto == "tcp"]
    assert len(tcp) == 1
    assert (tcp[0].rs, tcp[0].peer, tcp[0].local) == (
        1,
        (str(client), 41000),
        (str(rip(family, 1)), 8080),
    )


def test_tcp_to_a_vip_routed_to_a_server_returns_its_name(fresh_net: Net) -> None:
    """DR-like path: the VIP is on the real server's lo, the reply (source VIP) goes back
    through the director."""
    route_vip_to(fresh_net, 2)
    with serve(fresh_net, tcp_ports=(80,)):
        for family in (IPV4, IPV6):
            assert fetch_name(fresh_net, vip(family, 0), 80, saddr=cip(family, 14, 4)) == "rs3"


def test_crafted_flows_and_real_connections_mix(fresh_net: Net) -> None:
    """A crafted SYN to a listening port is observed like any flow; the server's SYN-ACK is
    dropped by the quiet client, so the real connection that follows is undisturbed."""
    route_vip_to(fresh_net, 0)
    with serve(fresh_net, tcp_ports=(80,)):
        results = send_flows(
            fresh_net, [Flow(Proto.TCP, cip(IPV4, 14, 5), 42000, vip(IPV4, 0), 80)]
        )
        assert (results[0].outcome.kind, results[0].outcome.rs) == ("forward", 0)
        assert fetch_name(fresh_net, vip(IPV4, 0), 80, saddr=cip(IPV4, 14, 5)) == "rs1"


def test_no_server_means_a_clear_error(fresh_net: Net) -> None:
    route_vip_to(fresh_net, 0)
    quiet_endpoints(fresh_net)
    with pytest.raises(TrafficError, match="no answer"):
        fetch_name(fresh_net, vip(IPV4, 0), 81, saddr=cip(IPV4, 14, 6))


def test_udp_answer_comes_from_the_vip_on_a_dr_path(fresh_net: Net) -> None:
    """The client's socket is connected to the VIP: it accepts the answer only if the real
    server replies from the VIP (not from its RIP)."""
    route_vip_to(fresh_net, 1)
    with serve(fresh_net, tcp_ports=(), udp_ports=(5060,)) as servers:
        for family in (IPV4, IPV6):
            assert ask_name_udp(fresh_net, vip(family, 0), 5060, saddr=cip(family, 14, 7)) == "rs2"
    assert {a.local for a in servers.accepted} == {(str(vip(f, 0)), 5060) for f in (IPV4, IPV6)}
