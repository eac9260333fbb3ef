"""Fuzzing the ipvsadm parser: whatever the input, only RulesError comes out, and rendered rule
sets parse back to themselves.

The example counts are set on each test (not taken from the profile), so the default ``dev``
profile already runs >= 10**4 examples in total: 6000 + 2500 + 800 + 800.
"""

from __future__ import annotations

import ipaddress
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl.ipvsadm import RulesError, load_rules, render_rules
from impl.scenario import ServiceConfig
from impl.types import IPV4, IPV6, Dest, Fwd, Proto, Service, ServiceKey, SvcFlag


def fuzz(examples: int) -> settings:
    """Explicit example count: independent of the LVSCONF_HYPOTHESIS profile."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


WORDS = [
    "-A",
    "-E",
    "-D",
    "-C",
    "-a",
    "-e",
    "-d",
    "-t",
    "-u",
    "-f",
    "-6",
    "-s",
    "-p",
    "-M",
    "-o",
    "--ops",
    "--pe",
    "-b",
    "-r",
    "-g",
    "-m",
    "-i",
    "-w",
    "-x",
    "-y",
    "-n",
    "ipvsadm",
    "--add-service",
    "--tcp-service",
    "--scheduler",
    "--persistent",
    "--netmask",
    "--real-server",
    "--weight",
    "--sched-flags",
    "--fwmark-service",
    "--sctp-service",
    "--persistent=30",
    "-w7",
    "-p0",
    "198.19.0.1:80",
    "198.19.0.1",
    "198.19.0.1:0",
    "[2001:db8:f::1]:80",
    "[2001:db8:f::1]",
    "2001:db8::1",
    "198.18.10.11:80",
    "[2001:db8:a::11]:0",
    "1",
    "0",
    "64",
    "129",
    "255.255.255.0",
    "4294967296",
    "rr",
    "wrr",
    "sh",
    "mh",
    "twos",
    "none",
    "xyz",
    "sh-port,sh-fallback",
    "mh-port",
    "flag-3",
    "sip",
    "host.example",
    "[::1",
    "'",
    '"',
    "#",
    "",
    "-",
    "--",
    "=",
    "¹",
    "8080",
]


def _run(text: str) -> None:
    try:
        load_rules(text, "fuzz.rules")
    except RulesError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.startswith("fuzz.rules:"), msg


def _soup(rnd: random.Random) -> str:
    # Built from one Random per example: far cheaper than drawing each word from Hypothesis,
    # which is what makes 10**4 examples affordable on a shared machine.
    return "\n".join(
        " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(13)))
        for _ in range(rnd.randrange(1, 7))
    )


@fuzz(6000)
@given(st.randoms(use_true_random=False))
def test_token_soup_raises_only_rules_error(rnd: random.Random) -> None:
    _run(_soup(rnd))


@fuzz(2500)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_rules_error(text: str) -> None:
    _run(text)


# ---- structured rule sets ------------------------------------------------------------------
v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
ports = st.integers(0, 65535)


@st.composite
def service_configs(draw: st.DrawFn) -> ServiceConfig:
    family = draw(st.sampled_from([IPV4, IPV6]))
    addrs = v4 if family is IPV4 else v6
    if draw(st.booleans()):
        key = ServiceKey(family, Proto.TCP, None, 0, draw(st.integers(1, 2**32 - 1)))
    else:
        key = ServiceKey(
            family,
            draw(st.sampled_from([Proto.TCP, Proto.UDP, Proto.SCTP])),
            draw(addrs),
            draw(ports),
        )
    persistent = key.vport == 0 or draw(st.booleans())
    timeout = draw(st.integers(1, 86400 * 31)) if persistent else None
    netmask = None
    if persistent and draw(st.booleans()):
        netmask = draw(st.integers(0, 2**32 - 2)) if family is IPV4 else draw(st.integers(1, 127))
    sched = draw(st.sampled_from(["rr", "wrr", "sh", "mh", "lc", "wlc", "dh", "none"]))
    flags = SvcFlag(draw(st.sampled_from([0, 0x8, 0x10, 0x18, 0x20])))
    if sched not in ("sh", "mh"):
        flags &= ~(SvcFlag.SCHED1 | SvcFlag.SCHED2)
    ops = (key.fwmark != 0 or key.proto is Proto.UDP) and draw(st.booleans())
    pe = "sip" if draw(st.booleans()) and key.proto is Proto.UDP else None
    service = Service(key, sched, timeout, netmask, ops, SvcFlag(flags), pe)
    dests: dict[tuple[object, int], Dest] = {}
    for _ in range(draw(st.integers(0, 4))):
        fwd = draw(st.sampled_from([Fwd.DR, Fwd.NAT, Fwd.TUN]))
        port = draw(ports) if key.fwmark or fwd is Fwd.NAT else key.vport
        u = draw(st.integers(0, 1000))
        d = Dest(draw(addrs), port, draw(st.integers(0, 65535)), fwd, u, draw(st.integers(0, u)))
        dests.setdefault((d.addr, d.port), d)
    return ServiceConfig(service, tuple(dests.values()))


@fuzz(800)
@given(st.lists(service_configs(), max_size=4, unique_by=lambda c: c.service.key))
def test_parse_render_round_trip(configs: list[ServiceConfig]) -> None:
    text = render_rules(configs)
    assert load_rules(text, "rt") == tuple(configs)


@fuzz(800)
@given(
    st.lists(service_configs(), min_size=1, max_size=3, unique_by=lambda c: c.service.key),
    st.data(),
)
def test_mutated_rule_sets_raise_only_rules_error(
    configs: list[ServiceConfig], data: st.DataObject
) -> None:
    words = render_rules(configs).split(" ")
    i = data.draw(st.integers(0, len(words) - 1))
    words[i] = data.draw(st.sampled_from(WORDS) | st.text(max_size=8))
    _run(" ".join(words))
