"""The ipvsadm rules parser: realistic rule sets, errors, render/parse round trips."""

from __future__ import annotations

import ipaddress

import pytest

from impl.ipvsadm import (
    AddDest,
    Clear,
    DelDest,
    EditService,
    RulesError,
    load_rules,
    parse_rules,
    render_rules,
)
from impl.types import IPV4, IPV6, Fwd, Proto, SvcFlag

KUBE = """\
# kube-proxy (ipvs mode) with sessionAffinity: ClientIP
-A -t 198.19.0.1:443 -s rr -p 10800
-a -t 198.19.0.1:443 -r 198.18.10.11:6443 -m -w 1
-a -t 198.19.0.1:443 -r 198.18.10.12:6443 -m -w 1
-A -u 198.19.0.2:53 -s rr -p 10800
-a -u 198.19.0.2:53 -r 198.18.10.13:53 -m -w 1
"""

FTP = """\
ipvsadm -A -t 198.19.0.1:21 -s wlc -p 360
ipvsadm -a -t 198.19.0.1:21 -r 198.18.10.11 -g
ipvsadm -A -t 198.19.0.1:0 -s wlc -p 360
ipvsadm -a -t 198.19.0.1:0 -r 198.18.10.11 -g
"""

FWMARK = """\
--add-service --fwmark-service 1 --scheduler sh --sched-flags sh-fallback,sh-port \
--persistent 600 --netmask 255.255.255.0
--add-server --fwmark-service 1 --real-server 198.18.10.11 --gatewaying --weight 2
--add-server --fwmark-service 1 --real-server 198.18.10.12:8080 --masquerading \
--u-threshold 100 --l-threshold 50
"""

IPV6_RULES = """\
-A -t [2001:db8:f::1]:80 -s mh -b mh-port -p 120 -M 64
-a -t [2001:db8:f::1]:80 -r [2001:db8:a::11]:80 -g -w 3
-a -t [2001:db8:f::1]:80 -r [2001:db8:a::12]:80 -i -w 0
-A -f 7 -6 -s rr -p -M 48
-a -f 7 -6 -r [2001:db8:a::13]:0 -g
"""


def test_kube_proxy_client_ip_affinity() -> None:
    cfgs = load_rules(KUBE, "kube.rules")
    assert [c.service.timeout for c in cfgs] == [10800, 10800]
    web = cfgs[0]
    assert web.service.key.proto is Proto.TCP and web.service.scheduler == "rr"
    assert [(str(d.addr), d.port, d.fwd) for d in web.dests] == [
        ("198.18.10.11", 6443, Fwd.NAT),
        ("198.18.10.12", 6443, Fwd.NAT),
    ]
    assert cfgs[1].service.key.proto is Proto.UDP


def test_ftp_with_port_zero_service_and_defaults() -> None:
    ftp, zero = load_rules(FTP, "ftp.rules")
    assert ftp.service.key.vport == 21 and zero.service.key.vport == 0
    assert ftp.service.scheduler == "wlc" and zero.service.timeout == 360
    assert ftp.dests[0].port == 21 and ftp.dests[0].weight == 1 and ftp.dests[0].fwd is Fwd.DR
    assert zero.dests[0].port == 0


def test_fwmark_group_long_options() -> None:
    (cfg,) = load_rules(FWMARK, "fw.rules")
    s = cfg.service
    assert s.key.fwmark == 1 and s.key.family is IPV4 and s.netmask == 0xFFFFFF00
    assert s.sched_flags == SvcFlag.SCHED1 | SvcFlag.SCHED2 and s.timeout == 600
    a, b = cfg.dests
    assert (a.port, a.weight, a.fwd) == (0, 2, Fwd.DR)
    assert (b.port, b.fwd, b.u_threshold, b.l_threshold) == (8080, Fwd.NAT, 100, 50)


def test_ipv6_prefix_and_ipv6_fwmark() -> None:
    web, fw = load_rules(IPV6_RULES, "v6.rules")
    assert web.service.family is IPV6 and web.service.netmask == 64
    assert web.service.sched_flags == SvcFlag.SCHED2
    assert [d.fwd for d in web.dests] == [Fwd.DR, Fwd.TUN] and web.dests[1].weight == 0
    assert fw.service.key.fwmark == 7 and fw.service.family is IPV6
    assert fw.service.timeout == 300 and fw.service.netmask == 48


@pytest.mark.parametrize("text", [KUBE, FTP, FWMARK, IPV6_RULES])
def test_render_then_load_is_identity(text: str) -> None:
    cfgs = load_rules(text, "in")
    assert load_rules(render_rules(cfgs), "out") == cfgs


def test_dr_dest_port_forced_to_service_port() -> None:
    (cfg,) = load_rules("-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.1:80 -r 198.18.10.11:8080 -g\n")
    assert cfg.dests[0].port == 80  # ipvsadm: DR/TUN dest port must equal the service port


def test_replay_edits_deletes_and_clear() -> None:
    text = """\
-A -t 198.19.0.1:80 -s rr -p 60
-a -t 198.19.0.1:80 -r 198.18.10.11 -w 5
-a -t 198.19.0.1:80 -r 198.18.10.12 -w 5
-e -t 198.19.0.1:80 -r 198.18.10.11 -m
-d -t 198.19.0.1:80 -r 198.18.10.12
-E -t 198.19.0.1:80 -s wrr
-A -u 198.19.0.1:53 -s rr
"""
    ops = parse_rules(text, "f")
    assert isinstance(ops[5], EditService) and ops[5].given == frozenset({"scheduler"})
    assert isinstance(ops[4], DelDest) and isinstance(ops[1], AddDest)
    web, dns = load_rules(text, "f")
    assert web.service.scheduler == "wrr" and web.service.timeout == 60  # -E keeps -p
    (d,) = web.dests
    assert (d.port, d.weight, d.fwd) == (80, 1, Fwd.NAT)  # -e resets unspecified options
    assert load_rules(text + "-C\n", "f") == ()
    assert isinstance(parse_rules("ipvsadm -C", "f")[0], Clear)


@pytest.mark.parametrize(
    "text, message",
    [
        ("-A -t 198.19.0.1:80 -s rr -x", "f:1: option -x needs a value (write -x VALUE)"),
        ("-A -t 198.19.0.1:80 --frobnicate", "f:1: unknown option '--frobnicate'"),
        ("-A -t 198.19.0.300:80", "f:1: bad virtual service address '198.19.0.300'"),
        ("-A -t www.example.com:80", "is a host name, and lvsconf does no DNS lookups"),
        (
            "-A -t 198.19.0.1:80 -p 0",
            "persistence timeout '0' is out of range (use a whole number 1..2678400)",
        ),
        ("-A -t 198.19.0.1:80 -p 2678401", "out of range"),
        ("-A -t 198.19.0.1:80 -p -M 255.0.255", "illegal IPv4 persistent netmask '255.0.255'"),
        ("-A -t [2001:db8::1]:80 -p -M 129", "illegal IPv6 netmask '129' (use a prefix length"),
        (
            "-a -t 198.19.0.1:80 -r 198.18.10.11",
            "f:1: no service TCP 198.19.0.1:80 (add it with -A",
        ),
        ("-A -t 198.19.0.1:80 -s xyz", "unknown scheduler 'xyz': IPVS knows rr, wrr"),
        (
            "-A -t 198.19.0.1:80\n-A -t 198.19.0.1:80",
            "f:2: service TCP 198.19.0.1:80 already exists",
        ),
        (
            "-A -t 198.19.0.1:80\n-a -t 198.19.0.1:80 -r 198.18.10.11\n-a -t 198.19.0.1:80 -r "
            "198.18.10.11",
            "f:3: real server 198.18.10.11:80 already exists",
        ),
        ("-A -t 198.19.0.1:0 -s rr", "port zero given for a non-persistent service"),
        ("-A -t 198.19.0.1:80 -o", "one-packet scheduling (-o) is only for UDP"),
        ("-A -t 198.19.0.1:80 -s rr -b mh-port", "does not fit scheduler 'rr'"),
        ("-A -t 198.19.0.1:80 -w 3", "option --weight does not apply to a service command"),
        ("-t 198.19.0.1:80", "no command on this line"),
        ("-A -t 198.19.0.1:80 --pe foo", "unknown persistence engine 'foo'"),
    ],
)
def test_errors_are_one_line_with_a_fix(text: str, message: str) -> None:
    with pytest.raises(RulesError) as info:
        load_rules(text, "f")
    msg = str(info.value)
    assert message in msg
    assert "\n" not in msg and msg.startswith("f:") and msg.endswith(")")


def test_ipv6_dest_without_port_takes_service_port() -> None:
    (cfg,) = load_rules(
        "-A -t [2001:db8:f::1]:443 -s rr\n-a -t [2001:db8:f::1]:443 -r [2001:db8:a::11] -m\n"
    )
    assert cfg.dests[0].addr == ipaddress.ip_address("2001:db8:a::11")
    assert cfg.dests[0].port == 443
