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
from childwatch import Children, watching
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
    """The first stdout line of ``proc`` starting with ``word`` (deadline ``timeout``).

    Reads the raw fd line by line itself: select() on a buffered text stream misses lines
    already sitting in its buffer (two lines arriving in one read)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    seen = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        byte = os.read(fd, 1)  # one byte: nothing of a later line is consumed
        if not byte:
            break
        seen += byte
        if byte == b"\n":
            line = seen.rsplit(b"\n", 2)[-2].decode()
            if line.startswith(word):
                return line.strip()
    raise AssertionError(f"child never printed {word!r}; output: {seen.decode()!r}")


def leftovers(prefix: str) -> list[str]:
    """Namespaces and the owner record of run ``prefix`` that still exist."""
    found = [n for n in runs.list_netns() if n.startswith(prefix)]
    if (runs.OWNERS_DIR / f"{prefix}.json").exists():
        found.append(f"owner record {prefix}")
    return found


# A child that parks in the middle of a build (after two real servers are configured, before
# the director exists) and has registered a `sleep` process that must die with the run.
#
# It parks in a bounded select() loop, not in a bare readline(): CPython runs a signal's handler
# only between bytecodes, or when a blocking call returns EINTR. A signal that lands after the
# last check but before read() starts (the parent signals as soon as it reads MID; under load
# the child can be preempted just there) is flagged but interrupts nothing, and read() then
# blocks until stdin has data: a child "ignoring" SIGTERM for the whole timeout, with one
# thread, no output and its stack still in readline(), as one soak run of 40 showed.
MID_BUILD_CHILD = textwrap.dedent("""
    import select, subprocess, sys
    from harness import runs, topology
    from harness.topology import Topology, build

    def park():
        # returns when stdin has a line or EOF; a signal's handler runs within 0.1 s
        while not select.select([sys.stdin], [], [], 0.1)[0]:
            pass
        sys.stdin.readline()

    original = topology._configure_rs
    def parked(net, rs):
        original(net, rs)
        if rs.index == 1:
            print("MID", net.run.prefix, flush=True)
            park()  # until the parent signals, kills or releases us
    topology._configure_rs = parked

    run = runs.Run()
    sleeper = subprocess.Popen(["sleep", "300"])
    run.register_process(sleeper.pid)
    print("SLEEPER", sleeper.pid, runs.proc_start_time(sleeper.pid), flush=True)
    try:
        with build(Topology(), run) as net:
            print("BUILT", flush=True)
    finally:
        if "--park-in-teardown" in sys.argv:
            print("TEARDOWN", flush=True)
            park()  # parked in teardown: more signals arrive here
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
    children: Children, tmp_path: Path, env: dict[str, str] | None = None, *flags: str
) -> tuple[subprocess.Popen[str], str, int, int]:
    script = tmp_path / "mid_build_child.py"
    script.write_text(MID_BUILD_CHILD)
    proc = children.popen(
        [sys.executable, str(script), *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, pid, start = read_until(proc, "SLEEPER").split()
    prefix = read_until(proc, "MID").split()[1]
    assert [n for n in runs.list_netns() if n.startswith(prefix)], "child built nothing"
    return proc, prefix, int(pid), int(start)


def test_killed_run_is_swept_and_live_runs_are_left_alone(
    tmp_path: Path, net: Net, private_state: dict[str, str], children: Children
) -> None:
    """SIGKILL mid-build leaves namespaces, a record and a registered process; the next sweep
    removes exactly those, while a concurrent live run (a second child parked mid-build) and
    this test's own ``net`` (recorded elsewhere: unowned here) keep everything."""
    killed, dead_prefix, sleeper, sleeper_start = start_mid_build_child(
        children, tmp_path, private_state
    )
    live, live_prefix, live_sleeper, _ = start_mid_build_child(children, tmp_path, private_state)
    try:
        live_before = leftovers(live_prefix)
        killed.kill()
        children.wait(killed, CHILD_TIMEOUT)
        assert leftovers(dead_prefix), "SIGKILL should have left objects behind"
        assert runs.is_alive(sleeper, sleeper_start)

        report = runs.sweep()

        assert dead_prefix in report.removed_records
        assert leftovers(dead_prefix) == []
        assert sleeper in report.killed
        assert report.survivors == []
        # the sweep waited until the sleeper was gone (a zombie counts: its parent was killed)
        assert not runs.is_alive(sleeper, sleeper_start)
        assert live_prefix in report.live
        assert {n.netns for n in net.nodes} <= set(report.unowned)
        assert leftovers(live_prefix) == live_before
        assert all(n.netns in runs.list_netns() for n in net.nodes)
    finally:
        assert live.stdin is not None
        live.stdin.close()  # release the parked build: it finishes and cleans up itself
        children.wait(live, CHILD_TIMEOUT)
    assert leftovers(live_prefix) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_build_leaves_nothing(
    tmp_path: Path, sig: signal.Signals, children: Children
) -> None:
    proc, prefix, sleeper, sleeper_start = start_mid_build_child(children, tmp_path)
    proc.send_signal(sig)
    children.wait(proc, CHILD_TIMEOUT)
    assert proc.returncode != 0  # interrupted, not finished
    assert leftovers(prefix) == []
    assert not runs.is_alive(sleeper, sleeper_start)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_more_signals_during_teardown_do_not_cut_it_short(
    tmp_path: Path, sig: signal.Signals, children: Children
) -> None:
    """The first signal unwinds; three more while teardown runs are ignored with one notice,
    and teardown still kills the registered process and closes the run."""
    proc, prefix, sleeper, sleeper_start = start_mid_build_child(
        children, tmp_path, None, "--park-in-teardown"
    )
    proc.send_signal(sig)
    read_until(proc, "TEARDOWN")
    for _ in range(3):
        proc.send_signal(sig)
    assert proc.stdin is not None
    proc.stdin.write("\n")  # release the parked teardown
    proc.stdin.flush()
    _, err = children.communicate(proc, CHILD_TIMEOUT)
    assert err.count(runs.CLEANUP_NOTICE.strip()) == 1, err
    assert "KeyboardInterrupt" in err  # from the first signal only: one traceback
    assert err.count("Traceback") == 1, err
    assert leftovers(prefix) == []
    assert not runs.is_alive(sleeper, sleeper_start)


LOST_INTERRUPT_CHILD = textwrap.dedent("""
    import os, signal, sys
    from harness import runs

    runs.install_interrupt_policy()

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100000):  # the handler runs here: Python cannot propagate from here
                pass

    Finaliser()  # dropped at once
    sys.stdin.readline()  # the parent sends nothing: only the interrupt ends this
    print("NOT INTERRUPTED", flush=True)
""")


def test_an_interrupt_python_drops_is_delivered_again(tmp_path: Path, children: Children) -> None:
    """Regression (seen in ci/soak): a KeyboardInterrupt raised inside logging's at-fork hook
    (run after every fork of a subprocess) was dropped by Python ("Exception ignored") and the
    Ctrl-C was lost; then pytest's own unraisable hook was interrupted too. A dropped interrupt
    is now delivered again and lands in ordinary code."""
    script = tmp_path / "lost.py"
    script.write_text(LOST_INTERRUPT_CHILD)
    proc = children.popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    children.wait(proc, CHILD_TIMEOUT)  # stdin stays open: only the interrupt ends it
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == -signal.SIGINT, out + err
    assert "NOT INTERRUPTED" not in out
    assert "Exception ignored" not in err
    assert err.count("Traceback") == 1 and "KeyboardInterrupt: SIGINT" in err, err
    assert runs.CLEANUP_NOTICE.strip() not in err


def test_wait_gone_counts_a_zombie_as_gone_and_is_bounded() -> None:
    zombie = subprocess.Popen(["sleep", "300"])  # our child: a zombie until we reap it
    alive = subprocess.Popen(["sleep", "300"])
    try:
        records = [
            runs.ChildRecord(p.pid, runs.proc_start_time(p.pid) or -1) for p in (zombie, alive)
        ]
        os.kill(zombie.pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert runs.wait_gone(records[:1], 10.0) == []
        assert Path(f"/proc/{zombie.pid}").exists()  # not reaped: a zombie, and gone for us
        assert runs.wait_gone(records[1:], 0.3) == [alive.pid]
        assert time.monotonic() - t0 < 5.0
    finally:
        for p in (zombie, alive):
            p.kill()
            p.wait()


UNRELATED_SESSION = textwrap.dedent("""
    import signal
    def test_unrelated():
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
""")


def test_only_a_session_that_uses_the_harness_sweeps(
    tmp_path: Path, private_state: dict[str, str], children: Children
) -> None:
    """The plugin loads in every pytest session of the virtualenv: a session that never uses
    the harness neither sweeps nor changes signal handling; the first use of lvs_run sweeps."""
    stale = runs.OWNERS_DIR / "lc0000m.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"prefix": "lc0000m", "pid": 1, "start": -1, "children": []}))
    (tmp_path / "unrelated" / "test_unrelated.py").parent.mkdir()
    (tmp_path / "unrelated" / "test_unrelated.py").write_text(UNRELATED_SESSION)
    plugin = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    proc = children.run([*plugin, "unrelated"], CHILD_TIMEOUT, cwd=tmp_path, env=private_state)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stale.exists(), "a session that never used the harness swept"
    (tmp_path / "user" / "test_user.py").parent.mkdir()
    (tmp_path / "user" / "test_user.py").write_text("def test_user(lvs_run):\n    pass\n")
    proc = children.run([*plugin, "user"], CHILD_TIMEOUT, cwd=tmp_path, env=private_state)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not stale.exists(), "the first use of lvs_run did not sweep"
    assert b"swept stale runs lc0000m" in proc.stderr


def test_sigterm_during_a_pytest_case_tears_fixtures_down(
    tmp_path: Path, children: Children
) -> None:
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
    proc = children.popen(
        [*PYTEST_CHILD, str(tmp_path)], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    prefix = read_until(proc, "MID").split()[1]
    assert leftovers(prefix)
    proc.send_signal(signal.SIGTERM)
    children.wait(proc, CHILD_TIMEOUT)
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
    with watching(tmp) as children:
        proc = children.run(
            [*PYTEST_CHILD, str(tmp)],
            CHILD_TIMEOUT,
            cwd=tmp,
            text=True,
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


def test_xdist_workers_build_at_once_without_collisions(tmp_path: Path, children: Children) -> None:
    pytest.importorskip("xdist")
    (tmp_path / "test_parallel.py").write_text(PARALLEL_TEST)
    sync = tmp_path / "sync"
    sync.mkdir()
    proc = children.run(
        [*PYTEST_CHILD, "-n", "2", "--dist", "each", str(tmp_path)],
        CHILD_TIMEOUT,
        cwd=tmp_path,
        text=True,
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


def test_cli_sweep_prints_what_it_removed(
    tmp_path: Path, private_state: dict[str, str], children: Children
) -> None:
    proc, prefix, sleeper, _ = start_mid_build_child(children, tmp_path, private_state)
    names = [n for n in runs.list_netns() if n.startswith(prefix)]
    proc.kill()
    children.wait(proc, CHILD_TIMEOUT)
    out = children.run(
        [sys.executable, "-m", "lvsconf.cli", "sweep"], CHILD_TIMEOUT, text=True, env=private_state
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


def test_sweep_removes_guest_directories_of_dead_sessions(private_state: dict[str, str]) -> None:
    """A killed xdist controller leaves its kernel lane's guest-<pid>-... directory behind;
    the sweep removes it, and leaves a live session's alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = runs.STATE_DIR / f"guest-{dead.pid}-0123abcd-0"
    live = runs.STATE_DIR / f"guest-{os.getpid()}-0123abcd-0"
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "results.jsonl").write_text("")
    report = runs.sweep()
    assert report.removed_dirs == [stale.name] and not stale.exists()
    assert live.exists()
    assert f"removed guest directory {stale.name}" in report.lines()
