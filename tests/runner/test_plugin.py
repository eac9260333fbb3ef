"""The pytest plugin end to end in a child pytest, on the in-process fake implementation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import conformance.runner.plugin as plugin
from conformance.runner.rules import rule
from impl.types import IPV4, IPV6

from .fakes import FakeImpl

TESTS_DIR = Path(__file__).resolve().parents[1]

CONFTEST = """
import os
import pytest
from _pytest.reports import TestReport
from conformance.runner.plugin import CaseEnvironment
from runner.fakes import FAKE, FakeNet, fake_traffic

class _NoSctp:
    def missing(self, name):
        return "fake probe: no SCTP stack" if name == "sctp" else ""

@pytest.fixture(scope="session")
def kernel_features():
    return _NoSctp()

@pytest.fixture
def lvs_case_env():
    return CaseEnvironment(net_provider=FakeNet, traffic=fake_traffic, sleep=FAKE.clock.sleep)

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    # like the VM lane when the guest never finished an item: bare replayed reports
    if not os.environ.get("FAKE_LANE_FAIL") or "test_exact" not in item.name:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for when, outcome in (("setup", "passed"), ("call", "failed"), ("teardown", "passed")):
        text = "kernel lane (vm): guest crashed" if outcome == "failed" else None
        rep = TestReport(item.nodeid, item.location, {}, outcome, text, when)
        item.ihook.pytest_runtest_logreport(report=rep)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""

CASES = '''
from dataclasses import replace
from conformance.runner.rules import rule
from runner.fakes import persistent_scenario
from impl.types import IPV4


@rule("unit-exact", source="core.c ip_vs_sched_persist 305-338")
def test_exact(case):
    """Flows of one client stick to one real server."""
    case.play(persistent_scenario(case)).assert_conforms()


@rule("unit-vacuous", source="nowhere", families=(IPV4,))
def test_vacuous(case):
    """Runs nothing: must not pass."""


def _elsewhere(i, flow, outcome):
    return replace(outcome, rs=(outcome.rs + 1) % 3) if i == 2 else outcome


@rule("unit-diverges", source="nowhere", families=(IPV4,),
      diverges={"fake": "the fake sends flow 3 elsewhere (declared)"})
def test_diverges(case):
    """A declared divergence."""
    case.impl.perturb = _elsewhere
    try:
        case.play(persistent_scenario(case)).assert_conforms()
    finally:
        case.impl.perturb = None


@rule("unit-fail", source="nowhere", families=(IPV4,))
def test_fail(case):
    """An undeclared difference, not even asserted by the test."""
    case.impl.perturb = _elsewhere
    try:
        case.play(persistent_scenario(case))
    finally:
        case.impl.perturb = None


@rule("unit-needs", source="nowhere", families=(IPV4,), needs=("sctp",))
def test_needs(case):
    """Needs a kernel feature the (fake) probe says is missing."""
    case.play(persistent_scenario(case))


@rule("unit-unsupported", source="nowhere", families=(IPV4,))
def test_unsupported(case):
    """The implementation declares a missing feature."""
    case.impl.unsupported_reason = "no netmask support"
    try:
        case.play(persistent_scenario(case))
    finally:
        case.impl.unsupported_reason = None
'''


def _run(
    tmp_path: Path, *args: str, cases: str = CASES, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(cases))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    )
    env.pop(plugin.PROGRESS_ENV, None)
    env.pop(plugin.REQUIRE_CASES_ENV, None)
    env.update(env_extra)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "--rootdir",
            str(tmp_path),
            "--impl",
            "runner.fakes:FAKE",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_verdicts_records_report_and_last_line(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _run(tmp_path, "-v", "--lvs-report", str(out))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines[-1] == "3 passed, 2 failed, 2 skipped", proc.stdout
    assert lines[-2].startswith("lanes: fake@")
    assert "test_exact[fake-ipv4] EXACT" in proc.stdout
    assert "test_exact[fake-ipv6] EXACT" in proc.stdout
    assert "test_diverges[fake-ipv4] DIVERGES" in proc.stdout
    assert "test_unsupported[fake-ipv4] UNSUPPORTED" in proc.stdout
    assert "case passed without running a scenario" in proc.stdout
    assert "scenario did not conform (the test did not assert it)" in proc.stdout
    assert "lvsconf conformance matrix" in proc.stdout

    doc = json.loads((out / "results.json").read_text())
    by_rule = {(r["rule"], r["family"]): r for r in doc["results"]}
    assert {k: r["verdict"] for k, r in by_rule.items()} == {
        ("unit-exact", "ipv4"): "exact",
        ("unit-exact", "ipv6"): "exact",
        ("unit-vacuous", "ipv4"): "fail",
        ("unit-diverges", "ipv4"): "diverges",
        ("unit-fail", "ipv4"): "fail",
        ("unit-unsupported", "ipv4"): "unsupported",
        ("unit-needs", "ipv4"): "skip",
    }
    exact = by_rule[("unit-exact", "ipv6")]
    for field in (
        "implementation",
        "kernel",
        "flows",
        "expected",
        "observed",
        "templates",
        "timings",
        "source",
        "title",
    ):
        assert exact[field], field
    assert exact["implementation"] == "fake" and len(exact["flows"]) == 4
    assert "no netmask support" in by_rule[("unit-unsupported", "ipv4")]["detail"]
    assert "declared" in by_rule[("unit-diverges", "ipv4")]["detail"]
    needs = by_rule[("unit-needs", "ipv4")]["detail"]
    assert needs == "needs kernel feature sctp: fake probe: no SCTP stack"
    assert doc["meta"]["implementations"] == ["fake"]
    html = (out / "index.html").read_text()
    assert '<table class="matrix">' in html and "unit-diverges" in html
    assert html.count('<section id="r') == 7
    summary = (out / "summary.md").read_text()
    assert "**3 passed, 2 failed, 2 skipped**" in summary and "## Failures" in summary


def test_items_replayed_without_a_record_still_count(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _run(tmp_path, "--lvs-report", str(out), FAKE_LANE_FAIL="1")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines[-1] == "1 passed, 4 failed, 2 skipped", proc.stdout
    doc = json.loads((out / "results.json").read_text())
    replayed = [r for r in doc["results"] if r["rule"] == "unit-exact"]
    assert len(replayed) == 2
    assert all(r["verdict"] == "fail" and "guest crashed" in r["detail"] for r in replayed)
    assert all(r["kernel"].startswith("lane ") for r in replayed)


def test_progress_lines_replace_letters(tmp_path: Path) -> None:
    proc = _run(tmp_path, "-k", "exact", **{plugin.PROGRESS_ENV: "1"})
    assert proc.returncode == 0, proc.stdout
    assert "[1/2] unit-exact [fake-ipv4] exact" in proc.stdout
    assert "[2/2] unit-exact [fake-ipv6] exact" in proc.stdout
    assert "test_cases.py .." not in proc.stdout


def test_no_case_selected_is_an_error(tmp_path: Path) -> None:
    proc = _run(tmp_path, "-k", "no_such_case")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "no conformance case selected" in proc.stderr


def test_bad_impl_is_one_clear_line(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--impl", "nope")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert errors == [
        "ERROR: --impl 'nope': unknown implementation; use one of kernel, reference "
        "(opt-in: keepalived, nftlb), exec:MANIFEST (a black-box program) or module:attr "
        "naming your own"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- parametrisation


class _Metafunc:
    def __init__(self, func: object, impls: list[FakeImpl]) -> None:
        self.function = func
        self.fixturenames = ["case"]
        self.config = _Config(impls)
        self.calls: list[tuple[str, list[object], bool]] = []

    def parametrize(self, name: str, params: list[object], indirect: bool) -> None:
        self.calls.append((name, params, indirect))


class _Config:
    def __init__(self, impls: list[FakeImpl]) -> None:
        from harness.implementations.registry import Selection

        self.stash = pytest.Stash()
        self.stash[plugin._selection_key] = Selection(tuple(impls))  # type: ignore[arg-type]


def test_items_per_implementation_and_family_with_markers() -> None:
    @rule(
        "unit-params",
        source="x",
        families=(IPV4, IPV6),
        slow=True,
        diverges={"other": "traced to core.c"},
    )
    def test_x(case: object) -> None: ...

    kernelish = FakeImpl(name="kernel")
    other = FakeImpl(name="other")
    meta = _Metafunc(test_x, [kernelish, other])
    plugin.pytest_generate_tests(meta)  # type: ignore[arg-type]
    ((name, params, indirect),) = meta.calls
    assert name == "case" and indirect
    ids = [p.id for p in params]  # type: ignore[attr-defined]
    assert ids == ["kernel-ipv4", "kernel-ipv6", "other-ipv4", "other-ipv6"]
    marks = {p.id: {m.name: m for m in p.marks} for p in params}  # type: ignore[attr-defined]
    assert set(marks["kernel-ipv4"]) == {"kernel", "slow"}
    assert set(marks["other-ipv6"]) == {"slow", "xfail"}
    xfail = marks["other-ipv6"]["xfail"]
    assert xfail.kwargs == {
        "strict": True,
        "raises": plugin.DIVERGENCE_EXCEPTIONS,
        "reason": "diverges: traced to core.c",
    }


def test_every_scenario_run_of_a_case_gets_a_fresh_director() -> None:
    class Net:
        renewed = 0

        def renew_director(self) -> None:
            self.renewed += 1

    net = Net()
    provider = plugin.renewing(lambda: net)
    assert provider() is net and net.renewed == 0  # fresh_net is already fresh
    provider()
    provider()
    assert net.renewed == 2


BROKEN_DIVERGENCE = """
from conformance.runner.rules import rule
from impl.types import IPV4

@rule("unit-broken", source="nowhere", families=(IPV4,),
      diverges={"fake": "declared, but the implementation never starts"})
def test_broken(case):
    raise RuntimeError("fake implementation failed to start")
"""


def test_a_declared_divergence_does_not_hide_an_implementation_error(tmp_path: Path) -> None:
    """xfail(strict) alone would grade any exception as the declared divergence."""
    proc = _run(tmp_path, "-v", cases=BROKEN_DIVERGENCE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "test_broken[fake-ipv4] DIVERGES" not in proc.stdout
    assert "fake implementation failed to start" in proc.stdout
