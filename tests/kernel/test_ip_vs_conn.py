"""``/proc/net/ip_vs_conn`` as the kernel adapter reads it: captured text (no kernel) and live.

The captured rows follow ``ip_vs_conn_seq_show`` (``"%-3s %08X %04X %08X %04X %08X %04X %-11s
%7u%s\\n"``; IPv6 ``%pI6``, uncompressed);
the first one is the template measured in docs/architecture.md §6.7.
"""

from __future__ import annotations

import ipaddress

from harness.implementations.kernel import nft_fwmark_ruleset, parse_ip_vs_conn
from impl.types import IPV4, IPV6, FwmarkRule, Proto

CAPTURED = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A000100 0000 0A000064 0050 0A000202 0050 NONE            299
TCP 0A000102 C350 0A000064 0050 0A000202 0050 SYN_RECV         59
IP  C6121001 0000 00000003 0000 C612100C 0000 NONE             29
UDP C6121001 0035 C6130002 0035 C612100C 0035 UDP             299
IP  2001:0db8:00c0:0000:0000:0000:0000:0000 0000 0000:0007:0000:0000:0000:0000:0000:0000 0000 \
2001:0db8:000a:0000:0000:0000:0000:0011 0000 ASSURED         14
TCP 2001:0db8:00c0:0000:0000:0000:0000:0001 9C40 2001:0db8:000f:0000:0000:0000:0000:0001 01BB \
2001:0db8:000a:0000:0000:0000:0000:0011 01BB ESTABLISHED     899
UDP C6121001 0000 C6130002 13C4 C612100D 13C4 NONE             89 sip 1234@example
""".replace("\\\n", "")


def test_captured_v4_v6_fwmark_and_pe_templates_parse() -> None:
    templates, conns = parse_ip_vs_conn(CAPTURED)
    by_proto = {(t.proto, t.family, t.pe_name): t for t in templates}
    assert len(templates) == 4 and len(conns) == 3

    v4 = by_proto[(Proto.TCP, IPV4, "")]
    assert (str(v4.caddr), v4.cport, str(v4.vaddr), v4.vport, str(v4.daddr), v4.dport) == (
        "10.0.1.0",
        0,
        "10.0.0.100",
        80,
        "10.0.2.2",
        80,
    )
    assert v4.expires == 299 and v4.state == "NONE"

    fwm4 = by_proto[(Proto.IP, IPV4, "")]  # fwmark template: proto IP, vaddr 0.0.0.MARK
    assert fwm4.vaddr == ipaddress.ip_address("0.0.0.3") and fwm4.vport == 0
    assert fwm4.caddr == ipaddress.ip_address("198.18.16.1")

    fwm6 = by_proto[(Proto.IP, IPV6, "")]  # mark 7 in the first 32 bits of the address
    assert int(fwm6.vaddr) >> 96 == 7 and fwm6.state == "ASSURED"
    assert fwm6.caddr == ipaddress.ip_address("2001:db8:c0::")

    sip = by_proto[(Proto.UDP, IPV4, "sip")]
    assert sip.pe_data == "1234@example" and sip.vport == 5060

    states = sorted(c.state for c in conns)
    assert states == ["ESTABLISHED", "SYN_RECV", "UDP"]


def test_fwmark_ruleset_first_match_wins_and_covers_families() -> None:
    rules = (
        FwmarkRule(3, IPV4, ipaddress.ip_network("198.19.0.0/24")),
        FwmarkRule(4, IPV4, ipaddress.ip_network("198.19.0.0/24"), Proto.TCP, (8000, 8080)),
        FwmarkRule(7, IPV6, ipaddress.ip_network("2001:db8:f::/64"), None, (53, 53)),
    )
    text = nft_fwmark_ruleset(rules)
    lines = [ln.strip() for ln in text.splitlines() if "mark set" in ln]
    assert lines == [
        "meta nfproto ipv4 ip daddr 198.19.0.0/24 meta mark set 3 accept",
        "meta nfproto ipv4 ip daddr 198.19.0.0/24 meta l4proto tcp th dport 8000-8080 "
        "meta mark set 4 accept",
        "meta nfproto ipv6 ip6 daddr 2001:db8:f::/64 meta l4proto { tcp, udp, sctp } "
        "th dport 53 meta mark set 7 accept",
    ]
    assert "hook prerouting priority mangle" in text
