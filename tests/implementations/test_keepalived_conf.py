"""keepalived.conf as input and output: the virtual_server reader (groups, includes, defaults,
one-line errors, fuzzed), the writer used by --impl keepalived (round trip), what keepalived
cannot express, format detection and scaling onto the topology, and predict reading it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import addresses
from harness.implementations.keepalived import Keepalived, command
from harness.implementations.registry import DEFAULT_ORDER, resolve
from impl.ipvsadm import RulesError, load_rules, render_rules
from impl.keepalived import (
    as_programmed,
    looks_like_keepalived,
    parse_conf,
    render_conf,
    scale,
    to_ops,
    unexpressible,
)
from impl.scenario import AddDest, DelDest, Scenario, ServiceConfig
from impl.types import IPV4, IPV6, Dest, Fwd, Proto, ProtoTimeouts, ServiceKey
from lvsconf.realconf import read_rules, topology_rules

GROUPS = """\
! a director with a web group (two VIPs and a fwmark) and an IPv6 DNS service
global_defs {
   router_id LVS1
   lvs_timeouts tcp 7200 tcpfin 120 udp 300
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    virtual_ipaddress {
        192.0.2.10
    }
}
virtual_server_group web {
    192.0.2.10-11 80
    fwmark 7
}
virtual_server group web {
    delay_loop 6
    protocol TCP
    lb_algo wrr
    lb_kind DR
    persistence_timeout 600
    persistence_granularity 255.255.255.0
    real_server 10.1.0.1 80 {
        weight 3
        TCP_CHECK {
            connect_timeout 3
        }
    }
    real_server 10.1.0.2 80 { weight 1 }
}
include conf.d/*.conf
"""

DNS6 = """\
virtual_server 2001:db8:100::1 53 {
    protocol UDP
    lvs_sched sh
    sh-port
    lvs_method NAT
    persistence_timeout
    persistence_granularity 64
    real_server 2001:db8:200::1 5353 { weight 2 }
    real_server 2001:db8:200::2 5353 { weight 2 }
    real_server 2001:db8:200::3 5353 { weight 2 }
    real_server 2001:db8:200::4 5353 { weight 2 }
}
"""


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "dns6.conf").write_text(DNS6)
    main = tmp_path / "keepalived.conf"
    main.write_text(GROUPS)
    return main


# ---------------------------------------------------------------- reading


def test_groups_includes_and_defaults_become_ipvsadm_services(tmp_path: Path) -> None:
    rules = read_rules(str(_tree(tmp_path)))
    assert rules.format == "keepalived"
    assert rules.timeouts == ProtoTimeouts(7200, 120, 300)
    assert render_rules(rules.services) == (
        "-A -t 192.0.2.10:80 -s wrr -p 600 -M 255.255.255.0\n"
        "-a -t 192.0.2.10:80 -r 10.1.0.1:80 -g -w 3\n"
        "-a -t 192.0.2.10:80 -r 10.1.0.2:80 -g -w 1\n"
        "-A -t 192.0.2.11:80 -s wrr -p 600 -M 255.255.255.0\n"
        "-a -t 192.0.2.11:80 -r 10.1.0.1:80 -g -w 3\n"
        "-a -t 192.0.2.11:80 -r 10.1.0.2:80 -g -w 1\n"
        "-A -f 7 -s wrr -p 600 -M 255.255.255.0\n"
        "-a -f 7 -r 10.1.0.1:0 -g -w 3\n"  # keepalived clears a non-NAT port on fwmark
        "-a -f 7 -r 10.1.0.2:0 -g -w 1\n"
        # persistence_timeout without a value: keepalived's 6 minutes
        "-A -u [2001:db8:100::1]:53 -s sh -p 360 -M 64 -b sh-port\n"
        "-a -u [2001:db8:100::1]:53 -r [2001:db8:200::1]:5353 -m -w 2\n"
        "-a -u [2001:db8:100::1]:53 -r [2001:db8:200::2]:5353 -m -w 2\n"
        "-a -u [2001:db8:100::1]:53 -r [2001:db8:200::3]:5353 -m -w 2\n"
        "-a -u [2001:db8:100::1]:53 -r [2001:db8:200::4]:5353 -m -w 2\n"
    )
    assert len(rules.ops) == 4 + 10  # -A per service, -a per dest


def test_ipvsadm_text_still_reads_as_ipvsadm(tmp_path: Path) -> None:
    path = tmp_path / "rules"
    path.write_text("-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.1:80 -r 198.18.10.11 -g\n")
    rules = read_rules(str(path))
    assert rules.format == "ipvsadm" and len(rules.services) == 1


def test_defaults_nat_wlc_udp_weight_one_and_port_from_the_service() -> None:
    # keepalived -t: "no protocol set - defaulting to UDP", "no scheduler set, setting
    # default 'wlc'", "no forwarding method set, setting default NAT"
    conf = parse_conf("virtual_server 192.0.2.1 80 {\n real_server 10.0.0.1 {\n }\n}\n")
    (config,) = conf.services
    assert (config.service.scheduler, config.service.key.proto) == ("wlc", Proto.UDP)
    assert config.dests == (Dest(ipaddress.ip_address("10.0.0.1"), 80, 1, Fwd.NAT),)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("virtual_server 192.0.2.1 80 {\n lvs_sched fastest\n}\n", 2, "unknown scheduler"),
        ("virtual_server 192.0.2.1 80 {\n lvs_method DSR\n}\n", 2, "use NAT, DR or TUN"),
        ("virtual_server 192.0.2.1 {\n lvs_sched rr\n}\n", 1, "must be persistent"),
        ("virtual_server 192.0.2.1 80 {\n persistance_timeout 5\n}\n", 2, "unknown virtual_server"),
        (
            "virtual_server 192.0.2.1 80 {\n real_server 10.0.0.1 80 {\n weight -1\n }\n}\n",
            3,
            "weight",
        ),
        ("virtual_server 192.0.2.1 80 {\n real_server 2001:db8::1 80\n}\n", 2, "not ipv4"),
        ("virtual_server 192.0.2.1 80 {\n", 1, "never closed"),
        ("}\n", 1, "closes no block"),
        ("virtual_server group nope {\n}\n", 1, "no virtual_server_group 'nope'"),
        (
            "virtual_server 192.0.2.1 80 {\n protocol UDP\n}\nvirtual_server 192.0.2.1 80 {\n"
            " protocol UDP\n}\n",
            4,
            "also declared at",
        ),
        ("virtual_server 192.0.2.1 80 {\n protocol TCP\n ops\n}\n", 1, "only for UDP"),
        (
            "virtual_server 192.0.2.1 80 {\n persistence_granularity 255.0.255.0\n}\n",
            2,
            "contiguous",
        ),
        ("$PORT=80\n", 1, "not read"),
        ("virtual_server 300.1.1.1 80 {\n}\n", 1, "not an IP address"),
        ("include x.conf\n", 1, "include in text without files"),
    ],
)
def test_bad_input_is_one_line_with_file_line_and_fix(text: str, line: int, needle: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_conf(text, "k.conf")
    message = str(err.value)
    assert message.startswith(f"k.conf:{line}: ") and needle in message, message
    assert "\n" not in message and message.endswith(")")


def test_include_errors_name_the_including_file(tmp_path: Path) -> None:
    main = tmp_path / "k.conf"
    main.write_text("global_defs {\n}\ninclude missing/*.conf\n")
    with pytest.raises(RulesError, match=rf"^{main}:3: no file matches 'missing/\*.conf'"):
        read_rules(str(main))
    main.write_text("include k.conf\n")
    with pytest.raises(RulesError, match="includes itself"):
        read_rules(str(main))
    (tmp_path / "bad.conf").write_text("virtual_server 192.0.2.1 80 {\n  lb_algo nope\n}\n")
    main.write_text("include bad.conf\n")
    with pytest.raises(RulesError, match=rf"^{tmp_path / 'bad.conf'}:2: unknown scheduler"):
        read_rules(str(main))


WORDS = [
    "virtual_server", "virtual_server_group", "real_server", "group", "fwmark", "{", "}",
    "lvs_sched", "lb_algo", "rr", "wrr", "sh", "lvs_method", "lb_kind", "DR", "NAT", "TUN",
    "protocol", "TCP", "UDP", "SCTP", "persistence_timeout", "persistence_granularity",
    "persistence_engine", "sip", "ops", "flag-1", "sh-port", "weight", "uthreshold",
    "ip_family", "inet6", "global_defs", "lvs_timeouts", "tcp", "TCP_CHECK", "delay_loop",
    "192.0.2.1", "192.0.2.1-3", "10.0.0.1", "2001:db8::1", "255.255.255.0", "64", "0", "80",
    "7", "-1", "99999999999", "include", "#", "!", '"', "$X", "\n", "\n", "\n", "\n",
]  # fmt: skip


@settings(
    max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.sampled_from(WORDS), max_size=60))
def test_fuzz_only_clear_errors_come_out(words: list[str]) -> None:
    text = " ".join(words)
    try:
        conf = parse_conf(text, "f.conf")
    except RulesError as exc:
        assert re.match(r"^f\.conf:\d+: .+ \(.+\)$", str(exc)), str(exc)
        return
    # what parses renders to ipvsadm text that ipvsadm's own reader accepts back
    load_rules(render_rules(conf.services))


@settings(max_examples=500, deadline=None, database=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    try:
        parse_conf(text, "f.conf")
    except RulesError as exc:
        assert str(exc).startswith("f.conf:") and "\n" not in str(exc)


# ---------------------------------------------------------------- writing (--impl keepalived)


def test_render_then_parse_is_the_same_configuration() -> None:
    services = load_rules(
        "-A -t 198.19.0.1:80 -s rr -p 60 -M 255.255.255.0\n"
        "-a -t 198.19.0.1:80 -r 198.18.10.11:80 -g -w 0\n"
        "-a -t 198.19.0.1:80 -r 198.18.10.12:8080 -m -w 3 -x 5 -y 1\n"
        "-A -f 3 -6 -s mh -b mh-port,flag-3 -p 30 -M 64\n"
        "-a -f 3 -6 -r [2001:db8:a::11]:0 -i -w 1\n"
        "-A -u 198.19.0.2:5060 -s sh -o -p 30 --pe sip\n"
        "-a -u 198.19.0.2:5060 -r 198.18.10.11 -g\n"
    )
    text = render_conf(services, ProtoTimeouts(tcp=10))
    assert "lvs_timeouts tcp 10 tcpfin 120 udp 300" in text
    conf = parse_conf(text, "k.conf")
    assert conf.services == services and conf.timeouts == ProtoTimeouts(tcp=10)


def test_what_keepalived_cannot_express() -> None:
    key = ServiceKey(IPV4, Proto.TCP, addresses.vip(IPV4, 0), 80)
    rs = [addresses.rip(IPV4, i) for i in range(2)]
    one = (ServiceConfig(load_rules("-A -t 198.19.0.1:80 -s rr\n")[0].service, (Dest(rs[0]),)),)
    assert unexpressible(Scenario("t", one, ())) is None
    assert "no real server" in (
        unexpressible(Scenario("t", (ServiceConfig(one[0].service),), ())) or ""
    )
    last = Scenario("t", one, (DelDest(key, rs[0], 0),))
    assert "last real server" in (unexpressible(last) or "")
    refilled = Scenario("t", one, (AddDest(key, Dest(rs[1])), DelDest(key, rs[0], 0)))
    assert unexpressible(refilled) is None


def test_keepalived_is_an_opt_in_kernel_implementation(tmp_path: Path) -> None:
    impl = resolve("keepalived").impls[0]
    assert isinstance(impl, Keepalived) and impl.needs_kernel_ipvs and impl.exact
    assert "keepalived" not in DEFAULT_ORDER
    cmd = command("/usr/sbin/keepalived", tmp_path / "k.conf", tmp_path)
    assert cmd[:5] == ["/usr/sbin/keepalived", "-n", "-l", "-D", "-C"]  # no fork, no VRRP


# ---------------------------------------------------------------- detection and scaling


def test_format_detection() -> None:
    assert looks_like_keepalived("! comment\nvirtual_server 1.2.3.4 80 {\n}\n")
    assert looks_like_keepalived("include /etc/keepalived/lvs/*.conf\n")
    assert not looks_like_keepalived("# ipvsadm-save\n-A -t 1.2.3.4:80 -s rr\n")
    assert not looks_like_keepalived("")


def test_scaling_maps_vips_and_real_servers_and_folds_extra_ones(tmp_path: Path) -> None:
    rules, mapping = topology_rules(str(_tree(tmp_path)))
    assert mapping[:3] == [
        "virtual address 192.0.2.10 -> 198.19.0.1",
        "real server 10.1.0.1 -> 198.18.10.11",
        "real server 10.1.0.2 -> 198.18.10.12",
    ]
    assert "real server 2001:db8:200::4 -> 2001:db8:a::11" in mapping
    assert any("folded into 2001:db8:a::11 (weight 4)" in line for line in mapping)
    dns = rules.services[-1]
    assert dns.service.key.vaddr == addresses.vip(IPV6, 0)
    assert [(str(d.addr), d.weight) for d in dns.dests] == [
        ("2001:db8:a::11", 4),
        ("2001:db8:a::12", 2),
        ("2001:db8:a::13", 2),
    ]
    assert len(to_ops(rules.services)) == len(rules.ops)


def test_scaling_refuses_more_vips_than_the_topology_has() -> None:
    services = load_rules(
        "".join(f"-A -t 192.0.2.{i}:80 -s rr\n" for i in range(1, 11)).replace("\n", "\n", 1)
    )
    vips = {IPV4: [addresses.vip(IPV4, i) for i in range(8)]}
    with pytest.raises(ValueError, match="more than 8 ipv4 virtual addresses"):
        scale(services, {IPV4: []}, vips)  # type: ignore[dict-item]


def test_predict_reads_a_keepalived_conf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lvsconf.cli import main

    rc = main(
        [
            "predict",
            "--rules",
            str(_tree(tmp_path)),
            "--flow",
            "tcp 203.0.113.5:40000 -> 192.0.2.10:80",
            "--flow",
            "tcp 203.0.113.9:40001 -> 192.0.2.11:80",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    # one /24 of clients persists across both VIPs' templates on the same real server
    assert all("template TCP 10:00 NONE 203.0.113.0:0" in line for line in out), out
    assert {line.split("forward ")[1].split(" ")[0] for line in out} == {"10.1.0.2:80"}


def test_as_programmed_applies_keepalived_port_corrections() -> None:
    key = ServiceKey(IPV4, Proto.TCP, addresses.vip(IPV4, 0), 80)
    fwm = ServiceKey(IPV4, Proto.TCP, None, 0, fwmark=5)
    rs = [addresses.rip(IPV4, i) for i in range(3)]
    sc = Scenario(
        "t",
        (
            ServiceConfig(
                load_rules("-A -t 198.19.0.1:80 -s rr\n")[0].service,
                (Dest(rs[0], 0), Dest(rs[1], 0, fwd=Fwd.NAT), Dest(rs[2], 8080, fwd=Fwd.NAT)),
            ),
            ServiceConfig(load_rules("-A -f 5 -s rr\n")[0].service, (Dest(rs[0], 80),)),
        ),
        (
            AddDest(key, Dest(rs[1], 0, fwd=Fwd.TUN)),
            DelDest(key, rs[0], 0),
            DelDest(fwm, rs[0], 80),
        ),
    )
    got = as_programmed(sc)
    assert [d.port for d in got.services[0].dests] == [80, 80, 8080]
    assert [d.port for d in got.services[1].dests] == [0]  # fwmark: a DR port is cleared
    assert got.steps == (
        AddDest(key, Dest(rs[1], 80, fwd=Fwd.TUN)),
        DelDest(key, rs[0], 80),
        DelDest(fwm, rs[0], 0),
    )
    nat_ftp = Scenario(
        "t",
        (
            ServiceConfig(
                load_rules("-A -t 198.19.0.1:21 -s rr -p 60\n")[0].service,
                (Dest(rs[0], 0, fwd=Fwd.NAT),),
            ),
        ),
        (),
    )
    assert "FTP" in (unexpressible(nat_ftp) or "")


def test_a_non_persistent_port_zero_service_is_unsupported() -> None:
    svc = load_rules("-A -t 198.19.0.1:0 -s rr -p 60\n")[0].service
    plain = Scenario(
        "t", (ServiceConfig(replace(svc, timeout=None), (Dest(addresses.rip(IPV4, 0)),)),), ()
    )
    assert "makes it persistent" in (unexpressible(plain) or "")
    sticky = Scenario("t", (ServiceConfig(svc, (Dest(addresses.rip(IPV4, 0)),)),), ())
    assert unexpressible(sticky) is None
