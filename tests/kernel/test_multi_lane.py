"""Several kernels in one run (``--kernel a,b`` or repeated): an item per lane, one guest per
lane (faked here: no VM), a lane that cannot start errors only its own items."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from conformance.runner import plugin
from conformance.runner.rules import rule
from harness.implementations.registry import Selection
from harness.lanes import provision, pytest_lane
from impl.types import IPV4, IPV6

pytest_plugins = ["pytester"]


def test_repeated_and_comma_separated_kernel_options_join() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", action=provision.JoinKernels)
    args = parser.parse_args(["--kernel", "bullseye", "--kernel", "sid,trixie"])
    assert args.kernel == "bullseye,sid,trixie"
    assert provision.split_specs(args.kernel) == ["bullseye", "sid", "trixie"]
    assert provision.split_specs("sid, sid,,bookworm") == ["sid", "bookworm"]
    assert provision.split_specs(None) == []


def test_lane_labels_and_guest_node_ids() -> None:
    config = SimpleNamespace(option=SimpleNamespace(kernel="sid"))
    assert pytest_lane.lane_ids(config) == [None]  # one lane: ids stay kernel-ipv4
    config.option.kernel = (
        "sid,/c/usr/lib/modules/7.2.13+deb14-amd64/vmlinuz,/b/vmlinuz-6.1.0-57-amd64"
    )
    assert pytest_lane.lane_ids(config) == ["sid", "7.2.13+deb14-amd64", "6.1.0-57-amd64"]
    config.option.kernel = "/a/vmlinuz-x,/b/vmlinuz-x"
    assert pytest_lane.lane_ids(config) == ["x", "x_"]
    host_id = "conformance/test_a.py::test_fw[kernel@6.1.0-57-amd64-ipv4]"
    assert pytest_lane.guest_nodeid(host_id, "6.1.0-57-amd64") == (
        "conformance/test_a.py::test_fw[kernel-ipv4]"
    )
    assert pytest_lane.guest_nodeid("t.py::x[kernel-ipv4]", None) == "t.py::x[kernel-ipv4]"


def test_conformance_items_one_per_lane_with_the_lane_on_the_marker() -> None:
    @rule("unit-lanes", source="x", families=(IPV4, IPV6))
    def test_x(case: object) -> None: ...

    kernelish = SimpleNamespace(name="kernel", needs_kernel_ipvs=True)
    other = SimpleNamespace(name="reference", needs_kernel_ipvs=False)
    config = SimpleNamespace(stash=pytest.Stash(), option=SimpleNamespace(kernel="bullseye,sid"))
    config.stash[plugin._selection_key] = Selection((kernelish, other))  # type: ignore[arg-type]
    calls: list[list[object]] = []
    meta = SimpleNamespace(
        function=test_x,
        fixturenames=["case"],
        config=config,
        parametrize=lambda _name, params, indirect: calls.append(params),
    )
    plugin.pytest_generate_tests(meta)  # type: ignore[arg-type]
    (params,) = calls
    ids = [p.id for p in params]  # type: ignore[attr-defined]
    assert ids == [
        "kernel@bullseye-ipv4",
        "kernel@bullseye-ipv6",
        "kernel@sid-ipv4",
        "kernel@sid-ipv6",
        "reference-ipv4",
        "reference-ipv6",
    ]
    lanes = {
        p.id: next((m.kwargs.get("lane") for m in p.marks if m.name == "kernel"), "-")  # type: ignore[attr-defined]
        for p in params
    }
    assert lanes["kernel@sid-ipv6"] == "sid" and lanes["reference-ipv4"] == "-"


MULTI_CONFTEST = """
import json
import pytest
from harness.lanes import provision, pytest_lane

SEEN = {}

def pytest_addoption(parser):
    parser.addoption("--kernel", action=provision.JoinKernels, default=None)

def fake_run_guest(state, lane_run, d):
    # what the guest's recorder writes: one line per phase, under the guest's node ids
    ids = [pytest_lane.guest_nodeid(n, lane_run.label) for n in lane_run.nodeids]
    SEEN[lane_run.name] = ids
    with (d / "results.jsonl").open("w") as f:
        for gid in ids:
            record = {"nodeid": gid, "kernel": "uname-of-" + lane_run.name}
            for when in ("setup", "call", "teardown"):
                props = [["lvsconf", record]] if when == "call" else []
                f.write(json.dumps({
                    "nodeid": gid, "when": when, "outcome": "passed", "longrepr": None,
                    "duration": 0.0, "user_properties": props,
                }) + "\\n")
    (d / "done.json").write_text(json.dumps({"error": None, "release": lane_run.name + "-rel",
                                             "measurements": {"guest_seconds": 1.0}}))

# this session runs in the test's own process (runpytest_inprocess): the fake must go with
# it, or a real kernel lane later in the same process (an xdist worker of ci/test) would
# "boot" this fake and replay its records
REAL_RUN_GUEST = pytest_lane._run_guest

class Check:
    def __init__(self):
        self.props = {}
    def pytest_runtest_logreport(self, report):
        for key, value in report.user_properties:
            self.props[report.nodeid] = value["nodeid"]

CHECK = Check()

def pytest_configure(config):
    pytest_lane._run_guest = fake_run_guest
    config.pluginmanager.register(CHECK, "check")

def pytest_unconfigure(config):
    pytest_lane._run_guest = REAL_RUN_GUEST

def pytest_sessionfinish(session):
    print("SEEN", json.dumps(SEEN, sort_keys=True))
    print("PROPS", json.dumps(CHECK.props, sort_keys=True))
"""

MULTI_CASES = """
import pytest

LANES = ("bullseye", "sid", "nosuchsuite")

@pytest.mark.parametrize("lane", [
    pytest.param(lane, id=f"kernel@{lane}-ipv4", marks=pytest.mark.kernel(lane=lane))
    for lane in LANES
])
def test_case(lane):
    raise AssertionError("a VM-lane item never runs on the host")

def test_local():
    pass
"""


def test_each_lane_boots_its_own_guest_and_a_bad_lane_errors_only_its_items(
    pytester: pytest.Pytester, fake_apt: Path
) -> None:
    pytester.makeconftest(MULTI_CONFTEST)
    pytester.makepyfile(test_multi=MULTI_CASES)
    result = pytester.runpytest_inprocess(
        "-p",
        "harness.lanes.pytest_lane",
        "-p",
        "no:lvsconf",
        "-p",
        "no:cacheprovider",
        "-s",
        "--kernel",
        "bullseye",
        "--kernel",
        "sid,nosuchsuite",
    )
    result.assert_outcomes(passed=3, errors=1)
    assert result.ret != 0
    out = result.stdout.str()
    seen = next(ln for ln in result.outlines if "SEEN {" in ln)
    # each guest got exactly its lane's item, under the id the guest gives it
    assert '"bullseye": ["test_multi.py::test_case[kernel-ipv4]"]' in seen
    assert '"sid": ["test_multi.py::test_case[kernel-ipv4]"]' in seen
    assert "nosuchsuite" not in seen
    props = next(ln for ln in result.outlines if ln.startswith("PROPS {"))
    # the guest's record now names the host item (two lanes, two records, no collision)
    assert (
        '"test_multi.py::test_case[kernel@sid-ipv4]": "test_multi.py::test_case[kernel@sid-ipv4]"'
        in props
    )
    assert "kernel lane nosuchsuite: unknown kernel 'nosuchsuite'" in out
    assert "kernel lane sid: sid-rel, 1 case(s), guest 1 s" in out
    assert "kernel lane nosuchsuite: failed: unknown kernel 'nosuchsuite'" in out


def test_lvsconf_run_passes_every_lane_to_pytest() -> None:
    from lvsconf.cli import build_parser
    from lvsconf.commands import run as run_cmd

    args = build_parser().parse_args(["run", "--kernel", "bullseye,bookworm", "--kernel", "sid"])
    argv = run_cmd.pytest_args(args)
    assert argv[argv.index("--kernel") + 1] == "bullseye,bookworm,sid"
    assert argv.count("--kernel") == 1


def test_kernel_list_shows_each_suite_from_the_private_lists(
    fake_apt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lvsconf.cli import main

    assert main(["kernel", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0][:4] == ["SUITE", "ALIASES", "linux-image-amd64", "RELEASE"]
    table = {r[0]: r[1:] for r in rows[1:]}
    assert table["bullseye"] == ["oldoldstable", "5.10.262-1", "5.10.0-46-amd64", "image", "no"]
    assert table["trixie"][:3] == ["stable", "6.12.118-1", "6.12.118+deb13-amd64"]
    assert table["sid"] == ["unstable", "7.2.13-1", "7.2.13+deb14-amd64", "split", "no"]
    assert list(table) == ["bullseye", "bookworm", "trixie", "forky", "sid"]


def test_replayed_lane_failures_and_progress_name_their_lane() -> None:
    report = SimpleNamespace(nodeid="c/t.py::test_x[kernel@6.1.0-57-amd64-ipv6]")
    assert plugin._lane_of(report) == "6.1.0-57-amd64"  # type: ignore[arg-type]
    assert plugin._lane_of(SimpleNamespace(nodeid="c/t.py::test_x[kernel-ipv6]")) is None  # type: ignore[arg-type]
    record = {"nodeid": report.nodeid, "implementation": "kernel", "family": "ipv6"}
    assert plugin._param_id(record) == "kernel@6.1.0-57-amd64-ipv6"


def test_a_lane_that_produced_nothing_is_an_error_a_lost_case_a_failure() -> None:
    never = pytest_lane.failed_records("kernel lane (sid): apt-get download failed", when="setup")
    assert [(r["when"], r["outcome"]) for r in never] == [
        ("setup", "failed"),
        ("teardown", "passed"),
    ]
    lost = pytest_lane.failed_records("kernel lane (sid): guest lost")
    assert [r["outcome"] for r in lost] == ["passed", "failed", "passed"]


def test_waiting_for_the_guest_is_not_cut_by_the_per_case_timeout(
    pytester: pytest.Pytester, fake_apt: Path
) -> None:
    """The first item of a lane waits for the VM lock and the whole guest run; pytest-timeout's
    per-case timer must not kill the session there (it did after 600 s of waiting)."""
    slow = MULTI_CONFTEST.replace(
        "def fake_run_guest(state, lane_run, d):\n",
        "def fake_run_guest(state, lane_run, d):\n    import time; time.sleep(2.5)\n",
    )
    pytester.makeconftest(slow)
    pytester.makepyfile(test_multi=MULTI_CASES)
    result = pytester.runpytest_subprocess(
        "-p",
        "harness.lanes.pytest_lane",
        "-p",
        "no:lvsconf",
        "-p",
        "no:cacheprovider",
        "--timeout",
        "1",
        "--kernel",
        "sid,bullseye",
        "-k",
        "not nosuchsuite",
    )
    result.assert_outcomes(passed=3)
    assert "Timeout" not in result.stdout.str() + result.stderr.str()


def test_the_fake_guest_does_not_outlive_its_session(
    pytester: pytest.Pytester, fake_apt: Path
) -> None:
    """Regression (ci/test with workers): the in-process session above replaced the lane's
    guest runner for the rest of the process, and a real kernel lane later in the same xdist
    worker replayed the fake's records (no verdict: INTERNALERROR)."""
    from harness.lanes import pytest_lane

    real = pytest_lane._run_guest
    test_each_lane_boots_its_own_guest_and_a_bad_lane_errors_only_its_items(pytester, fake_apt)
    assert pytest_lane._run_guest is real
