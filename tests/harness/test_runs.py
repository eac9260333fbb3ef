"""Isolation and cleanup, checked from outside: child processes build topologies and are
killed, interrupted or run to the end; then we look at what is left.

Child pytest sessions run with ``-p no:lvsconf -p harness.fixtures`` so they load exactly the
namespace fixtures (the whole plugin also loads parts other engineers are still building).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from harness import runs
from harness.topology import Net

pytestmark = pytest.mark.netns

CHILD_TIMEOUT = 120.0
PYTEST_CHILD = [
    sys.executable,
    "-m",
    "pytest",
    "-p",
    "no:lvsconf",
    "-p",
    "harness.fixtures",
    "-p",
    "no:cacheprovider",
    "-q",
    "-s",
]


def read_until(proc: subprocess.Popen[str], word: str, timeout: float = 30.0) -> str:
    """The first stdout line of ``proc`` starting with ``word`` (deadline ``timeout``)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(word):
            return line.strip()
    raise AssertionError(f"child never printed {word!r}; output: {''.join(seen)!r}")


def leftovers(prefix: str) -> list[str]:
    """Namespaces and the owner record of run ``prefix`` that still exist."""
    found = [n for n in runs.list_netns() if n.startswith(prefix)]
    if (runs.OWNERS_DIR / f"{prefix}.json").exists():
        found.append(f"owner record {prefix}")
    return found


# A child that parks in the middle of a build (after two real servers are configured, before
# the director exists) and has registered a `sleep` process that must die with the run.
MID_BUILD_CHILD = textwrap.dedent("""
    import subprocess, sys
    from harness import runs, topology
    from harness.topology import Topology, build

    original = topology._configure_rs
    def parked(net, i):
        original(net, i)
        if i == 1:
            print("MID", net.run.prefix, flush=True)
            sys.stdin.readline()  # parked until the parent signals, kills or releases us
    topology._configure_rs = parked

    run = runs.Run()
    sleeper = subprocess.Popen(["sleep", "300"])
    run.register_process(sleeper.pid)
    print("SLEEPER", sleeper.pid, runs.proc_start_time(sleeper.pid), flush=True)
    try:
        with build(Topology(), run) as net:
            print("BUILT", flush=True)
    finally:
        sleeper.kill()
        sleeper.wait()
        run.close()
    print("CLEAN", flush=True)
""")


@pytest.fixture
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Owner records in a private directory (for this test and its children), so that the
    session-start sweeps of other pytest sessions on this machine cannot sweep our killed
    child before the sweep under test does. Namespaces without a record in the global
    directory are left alone by those sweeps ("unowned")."""
    state = tmp_path / "state"
    monkeypatch.setattr(runs, "STATE_DIR", state)
    monkeypatch.setattr(runs, "OWNERS_DIR", state / "owners")
    return {**os.environ, "LVSCONF_STATE_DIR": str(state)}


def start_mid_build_child(
    tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str, int, int]:
    script = tmp_path / "mid_build_child.py"
    script.write_text(MID_BUILD_CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, pid, start = read_until(proc, "SLEEPER").split()
    prefix = read_until(proc, "MID").split()[1]
    assert [n for n in runs.list_netns() if n.startswith(prefix)], "child built nothing"
    return proc, prefix, int(pid), int(start)


def test_killed_run_is_swept_and_live_runs_are_left_alone(
    tmp_path: Path, net: Net, private_state: dict[str, str]
) -> None:
    """SIGKILL mid-build leaves namespaces, a record and a registered process; the next sweep
    removes exactly those, while a concurrent live run (a second child parked mid-build) and
    this test's own ``net`` (recorded elsewhere: unowned here) keep everything."""
    killed, dead_prefix, sleeper, sleeper_start = start_mid_build_child(tmp_path, private_state)
    live, live_prefix, live_sleeper, _ = start_mid_build_child(tmp_path, private_state)
    try:
        live_before = leftovers(live_prefix)
        killed.kill()
        killed.wait(timeout=CHILD_TIMEOUT)
        assert leftovers(dead_prefix), "SIGKILL should have left objects behind"
        assert runs.is_alive(sleeper, sleeper_start)

        report = runs.sweep()

        assert dead_prefix in report.removed_records
        assert leftovers(dead_prefix) == []
        assert sleeper in report.killed
        assert not runs.is_alive(sleeper, sleeper_start)
        assert live_prefix in report.live
        assert {n.netns for n in net.nodes} <= set(report.unowned)
        assert leftovers(live_prefix) == live_before
        assert all(n.netns in runs.list_netns() for n in net.nodes)
    finally:
        assert live.stdin is not None
        live.stdin.close()  # release the parked build: it finishes and cleans up itself
        live.wait(timeout=CHILD_TIMEOUT)
    assert leftovers(live_prefix) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_build_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    proc, prefix, sleeper, sleeper_start = start_mid_build_child(tmp_path)
    proc.send_signal(sig)
    proc.wait(timeout=CHILD_TIMEOUT)
    assert proc.returncode != 0  # interrupted, not finished
    assert leftovers(prefix) == []
    assert not runs.is_alive(sleeper, sleeper_start)


def test_sigterm_during_a_pytest_case_tears_fixtures_down(tmp_path: Path) -> None:
    """SIGTERM to a pytest session while a case holds ``net``: the fixtures' SIGTERM handler
    turns it into KeyboardInterrupt and pytest still tears the topology and the run down."""
    (tmp_path / "test_parked.py").write_text(
        textwrap.dedent("""
        import time
        def test_parked(net):
            print("MID", net.run.prefix, flush=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # parked until the parent's SIGTERM
                time.sleep(0.05)
    """)
    )
    proc = subprocess.Popen(
        [*PYTEST_CHILD, str(tmp_path)], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    prefix = read_until(proc, "MID").split()[1]
    assert leftovers(prefix)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=CHILD_TIMEOUT)
    assert proc.returncode == 2  # pytest's "interrupted"
    assert leftovers(prefix) == []


# --- a full session, observed from outside ------------------------------------------------------


def host_snapshot() -> dict[str, Any]:
    """The host namespace state a run must not change: links, routes, nftables, net.ipv4."""
    with IPRoute() as ipr:
        links = sorted(
            (link.get("ifname"), link["index"], link["flags"], link.get("address"), link.get("mtu"))
            for link in ipr.link("dump")
        )
        routes = sorted(
            (
                r["family"],
                r.get("table"),
                r["dst_len"],
                str(r.get("dst")),
                str(r.get("gateway")),
                r.get("oif"),
                r["type"],
            )
            for fam in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.route("dump", family=fam)
        )
    ruleset = subprocess.run(
        ["nft", "list", "ruleset"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    sysctls = {}
    for root, _dirs, files in os.walk("/proc/sys/net/ipv4"):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path) as f:
                    sysctls[path] = f.read()
            except PermissionError:
                continue  # write-only entries such as route/flush
    return {"links": links, "routes": routes, "nftables": ruleset, "sysctls": sysctls}


SESSION_TESTS = textwrap.dedent("""
    import json, os, subprocess
    from pathlib import Path
    import pytest
    from harness.topology import Topology

    OUT = Path(os.environ["H3_OUT"])

    def test_default(net, kernel_features):
        sleeper = subprocess.Popen(["sleep", "300"])  # "forgotten" child: the run kills it
        net.run.register_process(sleeper.pid)
        OUT.write_text(json.dumps({"prefix": net.run.prefix, "sleeper": sleeper.pid}))

    @pytest.mark.parametrize("topology_spec", [Topology(real_servers=5)], indirect=True)
    def test_indirect(net):
        assert len(net.rs) == 5

    def test_fresh_twice_a(fresh_net):
        assert fresh_net.renewals == 0

    def test_fresh_twice_b(fresh_net):
        assert fresh_net.renewals == 1

    def test_session_topology(lvs_topology):
        assert lvs_topology.director.read_sysctl("net/ipv4/ip_forward") == "1"
""")


@pytest.fixture(scope="module")
def observed_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run a child pytest session using every fixture; snapshot the host before and after."""
    tmp = tmp_path_factory.mktemp("session")
    (tmp / "test_session.py").write_text(SESSION_TESTS)
    out = tmp / "out.json"
    before = host_snapshot()
    t0 = time.monotonic()
    proc = subprocess.run(
        [*PYTEST_CHILD, str(tmp)],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env={**os.environ, "H3_OUT": str(out)},
    )
    took = time.monotonic() - t0
    after = host_snapshot()
    return {
        "proc": proc,
        "before": before,
        "after": after,
        "took": took,
        **json.loads(out.read_text()),
    }


def test_after_a_session_nothing_of_the_run_remains(observed_session: dict[str, Any]) -> None:
    proc = observed_session["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout
    assert leftovers(observed_session["prefix"]) == []
    assert runs.proc_start_time(observed_session["sleeper"]) is None
    print(f"child session: {observed_session['took']:.2f} s")


@pytest.mark.parametrize("part", ["links", "routes", "nftables", "sysctls"])
def test_host_namespace_is_unchanged_by_a_session(
    observed_session: dict[str, Any], part: str
) -> None:
    assert observed_session["after"][part] == observed_session["before"][part]


PARALLEL_TEST = textwrap.dedent("""
    import json, os, socket, time
    from pathlib import Path
    from harness import addresses
    from impl.types import IPV4, IPV6

    SYNC = Path(os.environ["H3_SYNC"])

    def test_parallel(net):
        me = os.environ["PYTEST_XDIST_WORKER"]
        (SYNC / f"{me}.json").write_text(json.dumps(
            {"prefix": net.run.prefix, "ns": [n.netns for n in net.nodes]}))
        deadline = time.monotonic() + 60
        while len(list(SYNC.glob("gw*.json"))) < 2:  # both topologies exist at once
            assert time.monotonic() < deadline, "the other worker never built its topology"
            time.sleep(0.02)
        for fam, af in ((IPV4, socket.AF_INET), (IPV6, socket.AF_INET6)):
            vip, cip = net.vips(fam)[0], addresses.cip(fam)
            with net.director.socket(af, socket.SOCK_DGRAM) as rx, \\
                 net.client.socket(af, socket.SOCK_DGRAM) as tx:
                rx.bind((str(vip), 9000)); rx.settimeout(5)
                tx.bind((str(cip), 0)); tx.sendto(me.encode(), (str(vip), 9000))
                assert rx.recv(100) == me.encode()
""")


def test_xdist_workers_build_at_once_without_collisions(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    (tmp_path / "test_parallel.py").write_text(PARALLEL_TEST)
    sync = tmp_path / "sync"
    sync.mkdir()
    proc = subprocess.run(
        [*PYTEST_CHILD, "-n", "2", "--dist", "each", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env={**os.environ, "H3_SYNC": str(sync)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = {p.stem: json.loads(p.read_text()) for p in sync.glob("gw*.json")}
    assert set(seen) == {"gw0", "gw1"}
    assert seen["gw0"]["prefix"] != seen["gw1"]["prefix"]
    assert seen["gw0"]["prefix"].endswith("0") and seen["gw1"]["prefix"].endswith("1")
    assert not set(seen["gw0"]["ns"]) & set(seen["gw1"]["ns"])
    for info in seen.values():
        assert leftovers(info["prefix"]) == []


def test_cli_sweep_prints_what_it_removed(tmp_path: Path, private_state: dict[str, str]) -> None:
    proc, prefix, sleeper, _ = start_mid_build_child(tmp_path, private_state)
    names = [n for n in runs.list_netns() if n.startswith(prefix)]
    proc.kill()
    proc.wait(timeout=CHILD_TIMEOUT)
    out = subprocess.run(
        [sys.executable, "-m", "lvsconf.cli", "sweep"],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=private_state,
    )
    assert out.returncode == 0, out.stderr
    for name in names:
        assert f"removed namespace {name}" in out.stdout
    assert f"killed process {sleeper}" in out.stdout
    assert f"removed owner record {prefix}" in out.stdout
    assert leftovers(prefix) == []


def test_sweep_kills_a_recorded_group_leader_with_its_whole_group() -> None:
    """A recorded VM (vng leading its own group, qemu under it) leaves no grandchild behind."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    start, gc_start = runs.proc_start_time(leader.pid), runs.proc_start_time(grandchild)
    assert start is not None and gc_start is not None
    killed = runs._kill_children([runs.ChildRecord(leader.pid, start)])
    assert killed == [leader.pid]
    leader.wait(timeout=10)
    # the orphaned grandchild is reaped by init, not by us: poll its state with a deadline
    deadline = time.monotonic() + 10
    while runs.is_alive(grandchild, gc_start) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not runs.is_alive(grandchild, gc_start), "grandchild outlived its group leader"
