"""Scenario files: the parser (round trip, fuzzed bad input), predict --scenario, and the
bounded, validated bad-input answers of predict (issue 13)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.runner.fuzz import scenarios
from impl.ipvsadm import parse_rules
from impl.predict import sip_invite
from impl.scenario import (
    AddDest,
    Advance,
    DelDest,
    EditDest,
    EditService,
    Scenario,
    Send,
    SetSysctl,
)
from impl.timeline import (
    TimelineError,
    parse_timeline,
    predict_timeline,
    render_timeline,
)
from impl.types import IPV4, IPV6, Fwd, Proto
from lvsconf.cli import main

EXAMPLE = """\
# drain rs2 while persistence is 300 s, then re-add it
--set 900 60 300
sysctl net.ipv4.vs.expire_quiescent_template=1
mark 5 tcp 198.19.0.2 80
-A -t 198.19.0.1:80 -s rr -p 300
ipvsadm -a -t 198.19.0.1:80 -r 198.18.10.11 -g -w 1
-a -t 198.19.0.1:80 -r 198.18.10.12 -g -w 1
-A -f 5 -s rr -p 60
-a -f 5 -r 198.18.10.13 -g
-A -u 198.19.0.3:5060 -s rr -p 60 --pe sip
-a -u 198.19.0.3:5060 -r 198.18.10.11 -m
tcp 198.18.16.1:40001 -> 198.19.0.1:80
expect forward 198.18.10.12:80
tcp 198.18.16.2:40002 -> 198.19.0.1:80
wait 1
-e -t 198.19.0.1:80 -r 198.18.10.12 -g -w 0
tcp 198.18.16.1:40003 -> 198.19.0.1:80
expect forward 198.18.10.11
sysctl expire_nodest_conn=1
-E -t 198.19.0.1:80 -s wlc
@ 3
-d -t 198.19.0.1:80 -r 198.18.10.12
-a -t 198.19.0.1:80 -r 198.18.10.12 -g
tcp 198.18.16.1:40004 -> 198.19.0.2:80
udp 198.18.16.1:5060 -> 198.19.0.3:5060 sip=call-1
expect forward 198.18.10.11:5060
"""


def test_example_parses_into_configuration_and_steps() -> None:
    t = parse_timeline(EXAMPLE, "ex.scn")
    s = t.scenario
    assert [c.service.key.vport for c in s.services] == [80, 0, 5060]
    assert s.timeouts.tcpfin == 60 and s.sysctls.expire_quiescent_template == 1
    assert s.fwmark_rules[0].mark == 5 and s.fwmark_rules[0].dports == (80, 80)
    kinds = [type(step) for step in s.steps]
    assert kinds == [
        Send,
        Advance,
        EditDest,
        Send,
        SetSysctl,
        EditService,
        Advance,
        DelDest,
        AddDest,
        Send,
    ]
    assert s.steps[6] == Advance(2.0)  # @ 3 after wait 1: absolute
    edited = s.steps[5]
    assert isinstance(edited, EditService)
    assert edited.service.scheduler == "wlc" and edited.service.timeout == 300  # -E merges
    assert s.flows()[-1].payload == sip_invite("call-1")
    assert [(e.flow_index, e.line) for e in t.expects] == [(0, 13), (2, 18), (4, 26)]


def test_example_predicts_and_keeps_its_expectations() -> None:
    t = parse_timeline(EXAMPLE, "ex.scn")
    results = predict_timeline(t)
    assert [r.at for r in results] == [0, 0, 1, 3, 3]
    assert results[3].flow.mark == 5  # the mark rule applied
    assert all(e.mismatch(results[e.flow_index].verdict) is None for e in t.expects)
    # weight 0 on rs2: client 1's next connection leaves its template (quiescent expiry)
    assert str(results[2].verdict.dest) == "198.18.10.11"


def test_render_round_trips_the_example() -> None:
    t = parse_timeline(EXAMPLE, "ex.scn", name="ex")
    again = parse_timeline(render_timeline(t), "again.scn", name="ex")
    assert again == t


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from((IPV4, IPV6)).flatmap(lambda fam: scenarios(fam)))
def test_generated_scenarios_round_trip(scenario: Scenario) -> None:
    text = render_timeline(scenario)
    parsed = parse_timeline(text, "gen.scn", name=scenario.name).scenario
    assert parsed == scenario, text
    assert render_timeline(parsed) == text


LINE = re.compile(r"^bad\.scn:\d+: [^\n]+ \([^\n]+\)$")


def _assert_clear_error(text: str) -> None:
    try:
        parse_timeline(text, "bad.scn")
    except TimelineError as exc:
        message = str(exc)
        assert LINE.match(message), message
        assert len(message) < 800, len(message)


VALID_LINES = [line for line in EXAMPLE.splitlines() if line and not line.startswith("#")]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=6))
def test_fuzzed_text_gives_only_the_clear_error(lines: list[str]) -> None:
    _assert_clear_error("\n".join(lines))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(VALID_LINES), min_size=1, max_size=12),
    st.integers(0, 11),
    st.integers(0, 80),
    st.text(max_size=8),
)
def test_mutated_files_give_only_the_clear_error(
    lines: list[str], which: int, where: int, junk: str
) -> None:
    i = which % len(lines)
    lines[i] = lines[i][:where] + junk + lines[i][where + len(junk) :]
    _assert_clear_error("\n".join(lines))


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("tcp 198.18.16.1:1 -> 198.19.0.1:80\n-A -t 198.19.0.1:80", "-A after the first flow"),
        ("wait 1\nmark 1 tcp 198.19.0.1", "a mark rule after the first flow"),
        ("@ 5\n@ 2", "time goes back from 5 to 2"),
        ("wait -1", "bad wait '-1'"),
        ("wait 1e308", "bad wait '1e308'"),
        ("sysctl conntrack=99999999999999999999999", "out of range"),
        ("sysctl nope=1", "unknown sysctl 'nope'"),
        ("--set 1 2", "--set needs three timeouts"),
        ("mark 0 tcp 198.19.0.1", "bad mark '0'"),
        ("mark 1 tcp 198.19.0.1 99999", "bad port"),
        ("expect drop", "expect before any flow"),
        ("tcp 198.18.16.1:1 -> 198.19.0.1:80\nexpect forward nowhere", "bad real server"),
        ("tcp 198.18.16.1:1 -> 198.19.0.1:80 sip=x", "only UDP flows carry a payload"),
        ("udp 198.18.16.1:1 -> 198.19.0.1:80 payload=zz", "bad payload 'zz'"),
        ("-a -t 198.19.0.1:80 -r 198.18.10.11", "no service TCP 198.19.0.1:80"),
        ("hello world", "cannot read 'hello world'"),
    ],
)
def test_bad_lines_name_the_line_and_the_fix(text: str, part: str) -> None:
    with pytest.raises(TimelineError) as err:
        parse_timeline(text, "bad.scn")
    assert part in str(err.value) and LINE.match(str(err.value)), str(err.value)


def test_huge_token_is_echoed_bounded() -> None:
    with pytest.raises(TimelineError) as err:
        parse_timeline("x" * 3000 + " y", "bad.scn")
    assert "…" in str(err.value) and len(str(err.value)) < 600


def test_services_from_another_front_end_build_the_same_scenario() -> None:
    """A keepalived reader hands in parsed services; the timeline continues from them."""
    from impl.timeline import TimelineBuilder

    parsed = parse_timeline(EXAMPLE, "ex.scn", name="ex")
    builder = TimelineBuilder("ex", "keepalived.conf")
    builder.services(parsed.scenario.services)
    builder.sysctl("expire_quiescent_template=1", "k:1")
    builder.set_timeouts(["900", "60", "300"], "k:2")
    for rule in parsed.scenario.fwmark_rules:
        builder.mark(rule, "k:3")
    first = parsed.scenario.flows()[0]
    builder.flow(first)
    builder.rules(parse_rules("-e -t 198.19.0.1:80 -r 198.18.10.12 -g -w 0", "k"))
    built = builder.build().scenario
    assert built.services == parsed.scenario.services
    assert built.fwmark_rules == parsed.scenario.fwmark_rules
    assert built.sysctls == parsed.scenario.sysctls and built.timeouts.tcpfin == 60
    assert built.steps == (Send((first,)), parsed.scenario.steps[2])  # the -e edit


# ---------------------------------------------------------------- predict --scenario


def test_predict_scenario_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "ex.scn"
    f.write_text(EXAMPLE)
    assert main(["predict", "--scenario", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 5
    assert set(out[0]) == {"flow", "at", "verdict", "dest", "fwd", "reason", "template"}
    assert out[0]["dest"] == "198.18.10.12:80" and out[3]["template"].startswith("IP ")


def test_predict_scenario_broken_expect_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "ex.scn"
    f.write_text(EXAMPLE.replace("expect forward 198.18.10.12:80", "expect drop"))
    assert main(["predict", "--scenario", str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{f}:13: expected drop, the model decides forward 198.18.10.12:80" in err


def test_predict_scenario_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.scn"
    f.write_text("-A -t 198.19.0.1:80\nwait 2\n-D -t 198.19.0.1:80\n")
    assert main(["predict", "--scenario", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{f}:3: -D after the first flow or wait" in err
    assert main(["predict", "--scenario", str(f), "--rules", str(f)]) == 2
    assert "does not combine with --rules" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 13: bounded bad input


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    r = tmp_path / "rules"
    r.write_text("-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.1:80 -r 198.18.10.11\n")
    return r


FLOW = "tcp 198.18.16.1:1 -> 198.19.0.1:80"


@pytest.mark.parametrize(
    ("argv", "part"),
    [
        (["--sysctl", "conntrack=99999999999999999999999"], "out of range (use 0..2147483647)"),
        (["--sysctl", "ip_unprivileged_port_start=70000"], "out of range (use 0..65535)"),
        (["--sysctl", "conntrack=-1"], "out of range"),
        (["--at", "1e308"], "bad time '1e308'"),
        (["--at", "inf"], "bad time 'inf'"),
        (["--flow", "t" * 2_000_000], "cannot read flow 'tttt"),
        (["--flow", f"{FLOW} mark=" + "9" * 100_000], "bad fwmark"),
    ],
)
def test_predict_bad_input_is_one_bounded_line(
    rules: Path, argv: list[str], part: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] != "--flow":
        argv = [*argv, "--flow", FLOW]
    assert main(["predict", "--rules", str(rules), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 700, len(err)
    assert part in err


def test_predict_huge_rules_token_is_one_bounded_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big"
    big.write_text("-A -t " + "x" * 2_000_000 + "\n")
    assert main(["predict", "--rules", str(big), "--flow", FLOW]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 700 and f"{big}:1: line of 2000006 characters" in err


def test_predict_scenario_with_payload_and_icmp(tmp_path: Path) -> None:
    f = tmp_path / "p.scn"
    f.write_text(
        "-A -u 198.19.0.1:53 -s rr\n-a -u 198.19.0.1:53 -r 198.18.10.11 -m\n"
        "udp 198.18.16.1:5000 -> 198.19.0.1:53 payload=6430\n"
        "icmp 198.18.16.1:7 -> 198.19.0.1:0 echo\n"
    )
    t = parse_timeline(f.read_text(), str(f))
    flows = t.scenario.flows()
    assert flows[0].payload == b"d0" and flows[1].proto is Proto.ICMP
    got = predict_timeline(t)
    assert got[0].verdict.fwd is Fwd.NAT and got[1].verdict.kind == "local"
    assert parse_timeline(render_timeline(replace(t.scenario, name="")), "r") == replace(
        t, scenario=replace(t.scenario, name="r")
    )
