"""The datapath's per-packet logic with a scripted model and a recording wire (no namespaces).

The stand-in model below only exists in this test: it returns the verdict the test scripts and
records the flows it was asked about, so every verdict kind can be driven deterministically.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.packet import Raw

from impl.datapath.engine import Engine
from impl.scenario import Scenario, ServiceConfig
from impl.types import (
    IPV4,
    IPV6,
    Decision,
    Flow,
    Fwd,
    FwmarkRule,
    IPAddress,
    Proto,
    Service,
    ServiceKey,
)

VIP4, CIP4, RIP4 = "198.19.0.1", "198.18.16.7", "198.18.10.11"
VIP6, CIP6, RIP6 = "2001:db8:f::1", "2001:db8:c0::7", "2001:db8:a::11"
A = ipaddress.ip_address


@dataclass
class ScriptedModel:
    verdict: Decision
    reply_verdict: Decision = Decision("local")
    seen: list[Flow] = field(default_factory=list)
    replies: list[Flow] = field(default_factory=list)

    def packet(self, flow: Flow, now: float) -> Decision:
        self.seen.append(flow)
        return self.verdict

    def reply(self, flow: Flow, now: float) -> Decision:
        self.replies.append(flow)
        return self.reply_verdict


@dataclass
class Recorder:
    sent: list[tuple[str, bytes, object]] = field(default_factory=list)

    def local(self, data: bytes | bytearray) -> None:
        self.sent.append(("local", bytes(data), None))

    def routed(self, data: bytes | bytearray, dst: IPAddress) -> None:
        self.sent.append(("routed", bytes(data), dst))

    def tunnel(self, data: bytes | bytearray, rip: IPAddress) -> None:
        self.sent.append(("tunnel", bytes(data), rip))

    def direct(self, data: bytes | bytearray, rip: IPAddress, version: int) -> None:
        self.sent.append(("direct", bytes(data), rip))

    def tunnel_mtu(self, version: int) -> int:
        return 1500 - (20 if version == 4 else 40)


LOCAL = Decision("local")
SCENARIO = Scenario(
    "t",
    (
        ServiceConfig(Service(ServiceKey(IPV4, Proto.TCP, A(VIP4), 80))),
        ServiceConfig(Service(ServiceKey(IPV6, Proto.TCP, A(VIP6), 80))),
    ),
    (),
)


def _engine(
    verdict: Decision, scenario: Scenario = SCENARIO, reply: Decision = LOCAL
) -> tuple[Engine, ScriptedModel, Recorder]:
    model, wire = ScriptedModel(verdict, reply), Recorder()
    targets = [ipaddress.ip_network(A(VIP4)), ipaddress.ip_network(A(VIP6))]
    targets += [r.daddr for r in scenario.fwmark_rules]
    return Engine(model, scenario, wire, targets, clock=lambda: 5.0), model, wire


SYN4 = bytes(IP(src=CIP4, dst=VIP4) / TCP(sport=40000, dport=80, flags="S"))
SYN6 = bytes(IPv6(src=CIP6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S"))


def test_dr_sends_the_unchanged_packet_to_the_dest() -> None:
    engine, model, wire = _engine(Decision("forward", A(RIP4), 80, Fwd.DR))
    assert engine.handle(SYN4) == "dr"
    assert wire.sent == [("direct", SYN4, A(RIP4))]
    assert model.seen == [Flow(Proto.TCP, A(CIP4), 40000, A(VIP4), 80, "syn")]


def test_tun_encapsulates_the_unchanged_packet() -> None:
    engine, _, wire = _engine(Decision("forward", A(RIP6), 80, Fwd.TUN))
    assert engine.handle(SYN6) == "tun"
    assert wire.sent == [("tunnel", SYN6, A(RIP6))]


def test_nat_rewrites_destination_and_routes_it() -> None:
    engine, _, wire = _engine(Decision("forward", A(RIP4), 8080, Fwd.NAT))
    assert engine.handle(SYN4) == "nat"
    ((how, data, dst),) = wire.sent
    out = IP(data)
    assert (how, dst, out.dst, out[TCP].dport, out.src, out[TCP].sport) == (
        "routed",
        A(RIP4),
        RIP4,
        8080,
        CIP4,
        40000,
    )


def test_nat_reply_gets_the_vip_as_source() -> None:
    engine, model, wire = _engine(Decision("drop"), reply=Decision("forward", A(VIP6), 80, Fwd.NAT))
    synack = bytes(IPv6(src=RIP6, dst=CIP6) / TCP(sport=8080, dport=40000, flags="SA"))
    assert engine.handle(synack) == "snat"
    ((how, data, dst),) = wire.sent
    out = IPv6(data)
    assert (how, dst, out.src, out[TCP].sport, out.dst) == ("routed", A(CIP6), VIP6, 80, CIP6)
    assert model.replies[0].kind == "synack" and model.seen == []


def test_reply_without_connection_is_routed_unchanged() -> None:
    engine, _, wire = _engine(Decision("drop"), reply=Decision("local"))
    pkt = bytes(IP(src=RIP4, dst=CIP4) / UDP(sport=53, dport=4000))
    assert engine.handle(pkt) == "routed"
    assert wire.sent == [("routed", pkt, A(CIP4))]


def test_unreachable_answers_the_client_from_the_vip() -> None:
    engine, _, wire = _engine(Decision("unreachable"))
    assert engine.handle(SYN4) == "unreachable"
    ((how, data, dst),) = wire.sent
    answer = IP(data)
    assert (how, dst, answer.src, answer.dst, answer[ICMP].type, answer[ICMP].code) == (
        "routed",
        A(CIP4),
        VIP4,
        CIP4,
        3,
        3,
    )
    # the quote is the packet as the director received it (before it was routed into the TUN)
    assert answer[IPerror].ttl == IP(SYN4).ttl + 1
    engine6, _, wire6 = _engine(Decision("unreachable"))
    engine6.handle(SYN6)
    assert IPv6(wire6.sent[0][1])[ICMPv6DestUnreach].code == 4


def test_local_and_drop() -> None:
    engine, _, wire = _engine(Decision("local"))
    assert engine.handle(SYN4) == "local"
    assert wire.sent == [("local", SYN4, None)]
    engine, _, wire = _engine(Decision("drop"))
    assert engine.handle(SYN4) == "drop" and wire.sent == []
    assert engine.stats == {"drop": 1}


def test_non_transport_packets_go_to_the_local_stack_unasked() -> None:
    engine, model, wire = _engine(Decision("drop"))
    ping = bytes(IP(src=CIP4, dst=VIP4) / ICMP())
    assert engine.handle(ping) == "local"
    assert model.seen == [] and wire.sent == [("local", ping, None)]


def test_fwmark_rules_mark_the_flow_before_the_model_sees_it() -> None:
    rule = FwmarkRule(7, IPV4, ipaddress.ip_network("198.19.0.0/24"), Proto.UDP, (1000, 2000))
    scenario = Scenario("m", (), (), fwmark_rules=(rule,))
    engine, model, _ = _engine(Decision("drop"), scenario)
    engine.handle(bytes(IP(src=CIP4, dst="198.19.0.5") / UDP(sport=5, dport=1500) / Raw(b"p")))
    engine.handle(bytes(IP(src=CIP4, dst="198.19.0.5") / UDP(sport=5, dport=2500)))
    engine.handle(
        bytes(IP(src=CIP4, dst="198.19.0.5") / SCTP(sport=5, dport=1500) / SCTPChunkInit())
    )
    assert [(f.mark, f.proto) for f in model.seen] == [
        (7, Proto.UDP),
        (0, Proto.UDP),
        (0, Proto.SCTP),
    ]


def test_udp_payload_reaches_the_model_only_for_a_persistence_engine() -> None:
    datagram = bytes(IP(src=CIP4, dst=VIP4) / UDP(sport=5060, dport=5060) / Raw(b"Call-ID: x"))
    plain, model, _ = _engine(Decision("drop"))
    plain.handle(datagram)
    sip_service = Service(ServiceKey(IPV4, Proto.UDP, A(VIP4), 5060), "rr", 60, pe="sip")
    sip_scenario = Scenario("sip", (ServiceConfig(sip_service),), ())
    sip, sip_model, _ = _engine(Decision("drop"), sip_scenario)
    sip.handle(datagram)
    sip.handle(datagram)
    assert model.seen[0].payload == b""
    assert [f.payload for f in sip_model.seen] == [b"Call-ID: x"] * 2


def test_errors_are_counted_not_raised() -> None:
    class Broken(ScriptedModel):
        def packet(self, flow: Flow, now: float) -> Decision:
            raise RuntimeError("model bug")

    wire = Recorder()
    engine = Engine(
        Broken(Decision("drop")), SCENARIO, wire, [ipaddress.ip_network(A(VIP4))], clock=lambda: 0.0
    )
    assert engine.handle(SYN4) == "model-error"
    assert engine.handle(b"\x45\x00") == "malformed"
    assert engine.stats == {"model-error": 1, "malformed": 1} and wire.sent == []


def test_packets_from_outside_the_server_networks_are_ignored_on_the_reply_path() -> None:
    model, wire = ScriptedModel(Decision("drop")), Recorder()
    engine = Engine(
        model,
        SCENARIO,
        wire,
        [ipaddress.ip_network(A(VIP4))],
        clock=lambda: 0.0,
        servers=[ipaddress.ip_network("198.18.10.0/24")],
    )
    mld = bytes(IPv6(src="::", dst="ff02::16") / ICMPv6DestUnreach())
    assert engine.handle(mld) == "ignored"
    assert engine.handle(bytes(IP(src=RIP4, dst=CIP4) / UDP(sport=1, dport=2))) == "routed"
    assert len(wire.sent) == 1 and model.replies[0].saddr == A(RIP4)


def test_tun_too_big_for_the_tunnel_answers_with_the_tunnel_mtu() -> None:
    big_df = bytes(
        IP(src=CIP4, dst=VIP4, flags="DF", ttl=63) / UDP(sport=1, dport=80) / Raw(b"x" * 1460)
    )
    engine, _, wire = _engine(Decision("forward", A(RIP4), 80, Fwd.TUN))
    assert engine.handle(big_df) == "too-big"
    ((how, data, dst),) = wire.sent
    answer = IP(data)
    assert (how, dst, answer.src, answer[ICMP].type, answer[ICMP].code) == (
        "routed",
        A(CIP4),
        VIP4,
        3,
        4,
    )
    assert answer[ICMP].nexthopmtu == 1480 and answer[IPerror].ttl == 64
    # without DF the packet goes into the tunnel (the outer header gets fragmented)
    engine, _, wire = _engine(Decision("forward", A(RIP4), 80, Fwd.TUN))
    big = bytes(IP(src=CIP4, dst=VIP4) / UDP(sport=1, dport=80) / Raw(b"x" * 1460))
    assert engine.handle(big) == "tun" and wire.sent[0][0] == "tunnel"
    # IPv6 is never fragmented on the way: packet too big with the 32-bit MTU
    engine, _, wire = _engine(Decision("forward", A(RIP6), 80, Fwd.TUN))
    big6 = bytes(IPv6(src=CIP6, dst=VIP6) / UDP(sport=1, dport=80) / Raw(b"x" * 1440))
    assert engine.handle(big6) == "too-big"
    ptb = IPv6(wire.sent[0][1])
    assert (ptb[ICMPv6PacketTooBig].type, ptb[ICMPv6PacketTooBig].mtu) == (2, 1460)
