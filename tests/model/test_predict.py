"""``lvsconf predict``: flow syntax, clock handling, verdicts/templates, CLI errors (exit 2)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from impl.ipvsadm import parse_rules
from impl.predict import At, PredictError, parse_flow, parse_flows_file, predict
from impl.types import Proto
from lvsconf.cli import main

RULES = """\
-A -t 198.19.0.1:80 -s rr -p 60 -M 255.255.255.0
-a -t 198.19.0.1:80 -r 198.18.10.11:80 -g -w 1
-a -t 198.19.0.1:80 -r 198.18.10.12:80 -g -w 1
-A -f 1 -s rr -p 30
-a -f 1 -r 198.18.10.13 -m
-A -u [2001:db8:f::1]:53 -s rr -o
-a -u [2001:db8:f::1]:53 -r [2001:db8:a::11]:53 -m
"""


def test_parse_flow_forms() -> None:
    f = parse_flow("udp [2001:db8:c0::1]:5000 -> [2001:db8:f::1]:53 mark=0x7")
    assert f.proto is Proto.UDP and f.mark == 7
    assert f.saddr == ipaddress.ip_address("2001:db8:c0::1")
    g = parse_flow("tcp 198.18.16.10:40001 -> 198.19.0.1:80 ack")
    assert g.kind == "ack" and g.dport == 80 and g.sport == 40001


@pytest.mark.parametrize(
    "text, part",
    [
        ("tcp 198.18.16.10 -> 198.19.0.1:80", "cannot read flow"),
        ("gre 198.18.16.10:1 -> 198.19.0.1:80", "unknown protocol 'gre'"),
        ("tcp 198.18.16.10:1 -> 198.19.0.1:80 mark=x", "bad fwmark 'x'"),
        ("tcp 198.18.16.10:1 -> 198.19.0.1:70000", "port out of range"),
        ("tcp 2001:db8::1:1 -> 198.19.0.1:80", "cannot read flow"),
        ("tcp 198.18.16.10:1 -> [2001:db8::1]:80", "families differ"),
        ("tcp 198.18.16.10:1 -> 198.19.0.1:80 blah", "unknown flow attribute 'blah'"),
    ],
)
def test_bad_flows(text: str, part: str) -> None:
    with pytest.raises(PredictError, match=part):
        parse_flow(text)


def test_flows_file_with_time_lines() -> None:
    events = parse_flows_file(
        "# comment\ntcp 198.18.16.10:1 -> 198.19.0.1:80\n@ 12.5\n"
        "tcp 198.18.16.10:2 -> 198.19.0.1:80\n",
        "f",
    )
    assert events[1] == At(12.5) and len(events) == 3
    with pytest.raises(PredictError, match="f:2: bad time"):
        parse_flows_file("tcp 198.18.16.10:1 -> 198.19.0.1:80\n@ soon\n", "f")


def test_predict_persistence_netmask_and_expiry() -> None:
    ops = parse_rules(RULES, "r")
    flows = [parse_flow(f"tcp 198.18.16.{h}:400{h} -> 198.19.0.1:80") for h in (10, 11)]
    late = parse_flow("tcp 198.18.16.12:40000 -> 198.19.0.1:80 ack")
    res = predict(ops, [flows[0], flows[1], At(5), late])
    first, second, ack = res
    # rr's first pick is the newest dest (.12); the /24 client shares its template
    assert first.verdict.dest == ipaddress.ip_address("198.18.10.12")
    assert second.verdict.dest == first.verdict.dest
    assert first.template is not None and str(first.template.caddr) == "198.18.16.0"
    assert first.as_json()["template"].startswith(
        "TCP 01:00 NONE 198.18.16.0:0 198.19.0.1:80 198.18.10.12:80"
    )
    assert ack.verdict.kind == "local" and ack.at == 5 and ack.template is None


def test_predict_fwmark_template_and_ipv6_ops() -> None:
    ops = parse_rules(RULES, "r")
    res = predict(
        ops,
        [
            parse_flow("udp 198.18.16.10:5000 -> 198.19.0.7:53 mark=1"),
            parse_flow("udp [2001:db8:c0::1]:5000 -> [2001:db8:f::1]:53"),
        ],
    )
    fw, v6 = res
    assert fw.as_json()["dest"] == "198.18.10.13:53"  # persistent fwmark keeps the packet port
    assert fw.as_json()["template"] == "IP 00:30 NONE 198.18.16.10:0 0.0.0.1:0 198.18.10.13:0"
    assert v6.as_json()["dest"] == "[2001:db8:a::11]:53" and v6.template is None


def test_predict_time_cannot_go_back() -> None:
    with pytest.raises(PredictError, match="time goes back"):
        predict(parse_rules(RULES, "r"), [At(5), At(1)])


def test_cli_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.write_text(RULES)
    flows = tmp_path / "flows"
    flows.write_text(
        "tcp 198.18.16.10:40000 -> 198.19.0.1:80\n@ 2\ntcp 198.18.16.10:40002 -> 198.19.0.1:80\n"
    )
    rc = main(["predict", "--rules", str(rules), "--flows", str(flows), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and [o["verdict"] for o in out] == ["forward", "forward"]
    assert out[1]["at"] == 2 and out[0]["dest"] == out[1]["dest"]
    assert set(out[0]) >= {"flow", "verdict", "dest", "template"}

    def err(*argv: str) -> str:
        assert main(["predict", "--rules", str(rules), *argv]) == 2
        text = capsys.readouterr().err
        assert text.count("\n") == 1
        return text

    assert "cannot read flow" in err("--flow", "tcp nonsense")
    assert "unknown sysctl 'nope'" in err(
        "--flow", "tcp 1.2.3.4:1 -> 198.19.0.1:80", "--sysctl", "nope=1"
    )
    assert "--sysctl: bad sysctl 'x'" in err(
        "--flow", "tcp 1.2.3.4:1 -> 198.19.0.1:80", "--sysctl", "x"
    )
    assert "--kernel-release" in err(
        "--flow", "tcp 1.2.3.4:1 -> 198.19.0.1:80", "--kernel-release", "banana"
    )
    assert "no flows given" in err()
    bad = tmp_path / "bad"
    bad.write_text("-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.9:80 -r 198.18.10.11\n")
    assert main(["predict", "--rules", str(bad), "--flow", "tcp 1.2.3.4:1 -> 198.19.0.1:80"]) == 2
    assert f"{bad}:2: no service TCP 198.19.0.9:80" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--rules",
                str(tmp_path / "missing"),
                "--flow",
                "tcp 1.2.3.4:1 -> 198.19.0.1:80",
            ]
        )
        == 2
    )
    assert "cannot read rules file" in capsys.readouterr().err
