"""End to end on the reference implementation in real namespaces (needs root, TUN, veth).

One scenario through Case.play with the real topology, traffic engine and datapath, and one
``lvsconf run`` of a real conformance case, checking the progress line, report and last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.runner.case import Case
from harness.implementations.reference import ReferenceDatapath
from impl.scenario import Advance, DelDest, Scenario, Send, ServiceConfig
from impl.types import IPV4, Dest, Proto, Service, ServiceKey

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def test_reference_scenario_with_removal_and_advance_is_exact(fresh_net: object) -> None:
    impl = ReferenceDatapath()
    case = Case(
        rule_id="e2e-reference",
        impl=impl,
        family=IPV4,
        level=impl.level,
        net_provider=lambda: fresh_net,
    )  # type: ignore[arg-type,return-value]
    key = ServiceKey(IPV4, Proto.TCP, case.vip(0), 80)
    c1, c2, c3 = case.cip(0, 1), case.cip(0, 2), case.cip(1, 3)
    scenario = Scenario(
        name="e2e",
        # dests listed newest first: rr picks rs3, rs2, rs1
        services=(
            ServiceConfig(
                Service(key, "rr", timeout=2), tuple(Dest(case.rip(i), 80) for i in range(3))
            ),
        ),
        steps=(
            Send(
                (
                    case.flow(Proto.TCP, c1, 41001, case.vip(0), 80),
                    case.flow(Proto.TCP, c2, 41002, case.vip(0), 80),
                    case.flow(Proto.TCP, c1, 41003, case.vip(0), 80),
                )
            ),
            DelDest(key, case.rip(2), 80),  # c1's server
            Send((case.flow(Proto.TCP, c1, 41004, case.vip(0), 80),)),
            Advance(1.0),
            Send(
                (
                    case.flow(Proto.TCP, c2, 41005, case.vip(0), 80),
                    case.flow(Proto.TCP, c3, 41006, case.vip(0), 80),
                ),
                ordered=False,
            ),
        ),
    )
    result = case.play(scenario)
    assert result.verdict == "exact", result.explain()
    assert result.rs(0) == result.rs(2) == 2 and result.rs(1) == 1
    assert result.rs(3) not in (None, 2)  # rescheduled away from the removed server
    assert result.rs(4) == 1  # c2's template survived the 1 s wait
    assert len(result.template_checks) == 3
    assert all(c.observed is not None for c in result.template_checks)
    assert result.template_checks[2].at - result.template_checks[1].at >= 1.0
    # the removed dest's template is still listed, invalidated (ports FFFF)
    assert any(t.invalidated for t in result.template_checks[1].expected)


def test_lvsconf_run_one_real_case(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    env = dict(os.environ)
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvsconf.cli",
            "run",
            "--impl",
            "reference",
            "-k",
            "test_normal_key and ipv4",
            "--report",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/1] normal-key [reference-ipv4] exact" in proc.stdout
    assert lines[-1] == "1 passed, 0 failed, 0 skipped"
    doc = json.loads((out / "results.json").read_text())
    (rec,) = doc["results"]
    assert rec["rule"] == "normal-key" and rec["verdict"] == "exact"
    assert rec["implementation"] == "reference" and rec["templates"][0]["observed"]
    assert (out / "index.html").exists() and (out / "summary.md").exists()
