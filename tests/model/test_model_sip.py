"""SIP persistence engine (docs/semantics.md §2.3; §8 case 20)."""

from __future__ import annotations

import ipaddress

from model_support import cip, dests, director, key, tcp, udp

from impl import sip
from impl.procfs import render_ip_vs_conn
from impl.types import Proto, Service

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.1.1:5060\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 1 INVITE\r\n\r\n"
)


def sip_director():  # type: ignore[no-untyped-def]
    return director((Service(key(5060, Proto.UDP), "rr", timeout=300, pe="sip"), dests(5060)))


def test_callid_extraction() -> None:
    assert sip.callid(INVITE) == b"a84b4c76e66710@pc33.example.com"
    assert sip.callid(b"INVITE x SIP/2.0\r\ni: abc\r\n") == b"abc"  # compact form
    assert sip.callid(b"INVITE x SIP/2.0\r\ncall-id:   abc\n") == b"abc"  # case, LF only
    assert sip.callid(b"Call-ID: first-line-is-not-a-header\r\n") is None
    assert sip.callid(b"INVITE x SIP/2.0\r\nCall-ID: abc") is None  # no line terminator
    assert sip.callid(b"INVITE x SIP/2.0\r\nCall-ID: abc@\r\n") is None  # empty domain
    assert sip.callid(b"INVITE x SIP/2.0\r\nCall-IDx: abc\r\nCall-ID: d\r\n") is None  # stops
    assert sip.callid(b"INVITE x SIP/2.0\r\nCall-ID: " + b"a" * 256 + b"\r\n") is None
    assert sip.callid(b"") is None
    assert sip.callid(b"X\r\ni: \xe9t\xe9\r\n") == b"\xe9t\xe9"  # lib/ctype.c: Latin-1 letters
    assert sip.callid(b"X\r\ni: a\x80b\r\n") is None  # 0x80 ends the word, no CR/LF follows
    assert sip.callid(b"INVITE x SIP/2.0\r\nCall-ID:\r\n abc\r\n") == b"abc"  # continuation


def test_sip_same_callid_different_networks() -> None:
    """§8.20: two clients in different networks with one Call-ID get separate templates."""
    d = sip_director()
    d.packet(udp(cip(1), 5060, dport=5060, payload=INVITE), 0.0)
    d.packet(udp(ipaddress.IPv4Address("10.9.9.9"), 5060, dport=5060, payload=INVITE), 0.0)
    assert len(d.templates(0)) == 2


def test_sip_callid_keys_persistence() -> None:
    """Same client, other Call-ID: another template (and with rr another server)."""
    d = sip_director()
    a = d.packet(udp(cip(1), 5060, dport=5060, payload=INVITE), 0.0)
    other = INVITE.replace(b"a84b4c76e66710", b"zzz")
    b = d.packet(udp(cip(1), 5061, dport=5060, payload=other), 0.0)
    c = d.packet(udp(cip(1), 5062, dport=5060, payload=INVITE), 0.0)
    assert a.dest == c.dest != b.dest


def test_sip_drop_without_callid_and_tcp() -> None:
    """§8.20: a datagram without Call-ID is dropped; so is any TCP flow on the service."""
    d = sip_director()
    assert d.packet(udp(cip(1), 5060, dport=5060, payload=b"hello\r\n"), 0.0).kind == "drop"
    t = director((Service(key(5060), "rr", timeout=300, pe="sip"), dests(5060)))
    assert t.packet(tcp(cip(1), 40000, dport=5060), 0.0).kind == "drop"


def test_sip_proc_row() -> None:
    d = sip_director()
    d.packet(udp(cip(1), 5060, dport=5060, payload=INVITE), 0.0)
    text = render_ip_vs_conn(d.templates(0.5), [])
    assert text.splitlines()[1] == (
        "UDP 0A000101 0000 0A000064 13C4 0A000203 13C4 NONE        "
        "    299 sip a84b4c76e66710@pc33.example.com"
    )
