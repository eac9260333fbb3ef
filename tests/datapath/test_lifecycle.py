"""The datapath process never outlives its use: stopped, failed, killed or interrupted.

"Nothing left" means: the process is gone, the TUN device is gone, the director's policy
rules are exactly as before (pref-0 local rule back, no rule or route of the datapath's table),
and the process is no longer in the run's owner record.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from childwatch import Children

from harness import processes, runs, settings
from harness.api import DirectorHandle, Implementation
from harness.implementations.reference import ReferenceDatapath, leftovers
from harness.topology import Net, Topology, build, wait_until
from impl.types import IPV4, Fwd

from .scenarios import persistent

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]


def _rules(net: Net) -> list[tuple[object, ...]]:
    with net.director.ipr() as ipr:
        return sorted(
            (
                fam,
                r.get("priority") or 0,
                r.get("table"),
                r.get_attr("FRA_IIFNAME"),
                r.get_attr("FRA_DST"),
                r.get_attr("FRA_SRC"),
            )
            for fam in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_rules(family=fam)
        )


def _links(net: Net) -> list[str]:
    with net.director.ipr() as ipr:
        return sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links())


def _recorded(net: Net, pid: int) -> bool:
    record = json.loads((runs.OWNERS_DIR / f"{net.run.prefix}.json").read_text())
    return any(c.get("pid") == pid for c in record.get("children", []))


@pytest.fixture(params=["fork", "exec"])
def net(
    lvs_run: runs.Run, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Net]:
    """A topology, with the datapath started either way (LVSCONF_DATAPATH_START; forked even
    where pytest's main module would be imported again in the child, as under pytest's own
    script, so that this test always exercises the forked start)."""
    monkeypatch.setenv("LVSCONF_DATAPATH_START", request.param)
    if request.param == "fork":
        monkeypatch.setattr(processes, "fork_is_safe", lambda: True)
    settings.current.cache_clear()
    try:
        with build(Topology(fwd=Fwd.DR, families=(IPV4,)), lvs_run) as built:
            yield built
    finally:
        monkeypatch.undo()
        settings.current.cache_clear()


def _assert_nothing_left(net: Net, pid: int, start: int, rules: object, links: object) -> None:
    ref = ReferenceDatapath()
    config = ref.config(net, persistent(IPV4, Fwd.DR))
    assert not runs.is_alive(pid, start), f"datapath pid {pid} still running"
    assert leftovers(net.director.netns, config) == []
    assert _rules(net) == rules
    assert _links(net) == links
    assert not _recorded(net, pid)


def test_stop_leaves_nothing(net: Net) -> None:
    rules, links = _rules(net), _links(net)
    impl = ReferenceDatapath()
    assert isinstance(impl, Implementation) and (impl.name, impl.exact) == ("reference", True)
    with impl.install(net, persistent(IPV4, Fwd.DR)) as director:
        assert isinstance(director, DirectorHandle)
        pid = director.pid
        start = runs.proc_start_time(pid)
        assert start is not None
        # while it runs, the things the checks below look for do exist
        assert "lvsdp0" in _links(net) and _rules(net) != rules
        assert _recorded(net, pid)
    assert director.process.returncode == 0, director.log_text()
    _assert_nothing_left(net, pid, start, rules, links)


def test_a_failing_test_leaves_nothing(net: Net) -> None:
    rules, links = _rules(net), _links(net)
    with (
        pytest.raises(AssertionError, match="the test failed"),
        ReferenceDatapath().install(net, persistent(IPV4, Fwd.DR)) as director,
    ):
        pid, start = director.pid, runs.proc_start_time(director.pid)
        raise AssertionError("the test failed")
    assert start is not None
    _assert_nothing_left(net, pid, start, rules, links)


def test_a_killed_process_is_cleaned_up_after(net: Net) -> None:
    """SIGKILL gives the process no chance to undo its rules: the harness does it."""
    rules, links = _rules(net), _links(net)
    with ReferenceDatapath().install(net, persistent(IPV4, Fwd.DR)) as director:
        pid, start = director.pid, runs.proc_start_time(director.pid)
        os.kill(pid, signal.SIGKILL)
        director.process.wait(timeout=10)
        assert _rules(net) != rules  # the process could not clean up itself
    assert start is not None
    _assert_nothing_left(net, pid, start, rules, links)


def test_bad_config_fails_fast_with_one_line(net: Net) -> None:
    from harness.implementations.reference import DatapathStartError, start

    config = ReferenceDatapath().config(net, persistent(IPV4, Fwd.DR))
    from dataclasses import replace

    bad = replace(config, segment_if="nosuchdev0")
    with pytest.raises(DatapathStartError, match="nosuchdev0"), start(net.director.netns, bad):
        pass
    assert leftovers(net.director.netns, config) == []


_CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from harness.implementations.reference import ReferenceDatapath
    from harness.topology import Topology, build
    from impl.types import IPV4, Fwd
    from tests.datapath.scenarios import persistent

    def {name}(*_):
        with build(Topology(fwd=Fwd.DR, families=(IPV4,))) as net, \\
                ReferenceDatapath().install(net, persistent(IPV4, Fwd.DR)) as d:
            state = {{"pid": d.pid, "start": int(open(f"/proc/{{d.pid}}/stat").read()
                                              .rsplit(")", 1)[1].split()[19]),
                     "netns": [n.netns for n in net.nodes]}}
            Path(os.environ["H6_STATE"]).write_text(json.dumps(state))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the parent interrupts or kills us
                time.sleep(0.05)

    if __name__ == "__main__":
        {name}()
""")


def _spawn(
    children: Children, tmp_path: Path, argv_tail: list[str], name: str
) -> tuple[subprocess.Popen[bytes], dict]:
    script = tmp_path / "test_child_datapath.py"
    script.write_text(_CHILD.format(root=str(ROOT), name=name))
    state = tmp_path / "state.json"
    env = dict(os.environ, H6_STATE=str(state), PYTHONPATH=str(ROOT))
    proc = children.popen(
        [sys.executable, *argv_tail, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: state.exists() and state.stat().st_size > 0 or proc.poll() is not None,
            60,
            "the child to start its datapath",
        )
    except BaseException:
        children.kill(proc)
        raise
    if proc.poll() is not None:
        out = proc.stdout.read().decode() if proc.stdout else ""
        pytest.fail(f"child exited early ({proc.returncode}):\n{out}")
    return proc, json.loads(state.read_text())


def test_interrupted_pytest_leaves_nothing(tmp_path: Path, children: Children) -> None:
    """Ctrl-C (SIGINT) on a pytest run: teardown stops the datapath, namespaces go."""
    proc, state = _spawn(
        children,
        tmp_path,
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        "test_wait_in_datapath",
    )
    proc.send_signal(signal.SIGINT)
    out, _ = children.communicate(proc, 60)
    assert proc.returncode in (1, 2), out.decode()  # interrupted (2) or failed by interrupt
    assert not runs.is_alive(state["pid"], state["start"]), out.decode()
    remaining = set(runs.list_netns()) & set(state["netns"])
    assert not remaining, remaining


def test_killed_harness_takes_the_datapath_along(tmp_path: Path, children: Children) -> None:
    """SIGKILL of the harness: PR_SET_PDEATHSIG kills the datapath; the sweep removes the rest."""
    proc, state = _spawn(children, tmp_path, [], "main")
    proc.kill()
    children.wait(proc, 30)
    wait_until(
        lambda: not runs.is_alive(state["pid"], state["start"]),
        10,
        f"datapath pid {state['pid']} to die with its parent",
    )
    runs.sweep()
    remaining = set(runs.list_netns()) & set(state["netns"])
    assert not remaining, remaining


UNGUARDED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from harness import processes
    from harness.implementations.reference import ReferenceDatapath
    from harness.topology import Topology, build
    from impl.types import IPV4, Fwd
    from tests.datapath.scenarios import persistent

    # no `if __name__ == "__main__":` guard, as a user's own script may have none
    with build(Topology(fwd=Fwd.DR, families=(IPV4,))) as net, \\
            ReferenceDatapath().install(net, persistent(IPV4, Fwd.DR)) as d:
        print("STARTED", processes.fork_is_safe(), flush=True)
""")


def test_a_script_without_a_main_guard_can_start_the_datapath(
    tmp_path: Path, children: Children
) -> None:
    """A forkserver child imports the parent's main script again: unguarded, it would start a
    second datapath there. Such a script gets a fresh interpreter instead, and the datapath
    starts."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(root=str(ROOT)))
    proc = children.popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    out, _ = children.communicate(proc, 60)
    assert proc.returncode == 0, out.decode()
    assert "STARTED False" in out.decode(), out.decode()


@pytest.mark.parametrize(
    ("argv", "safe"),
    [(["-c", "{probe}"], True), (["{script}"], False), (["-m", "probemain"], True)],
    ids=["python -c", "a script", "a package __main__"],
)
def test_fork_is_safe_only_where_no_main_module_is_imported_again(
    tmp_path: Path, argv: list[str], safe: bool
) -> None:
    probe = f"import sys; sys.path.insert(0, {str(ROOT)!r}); " + (
        "from harness.processes import fork_is_safe; print(fork_is_safe())"
    )
    (tmp_path / "script.py").write_text(probe + "\n")
    (tmp_path / "probemain").mkdir()
    (tmp_path / "probemain" / "__init__.py").write_text("")
    (tmp_path / "probemain" / "__main__.py").write_text(probe + "\n")
    args = [a.format(probe=probe, script=tmp_path / "script.py") for a in argv]
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    out = subprocess.run([sys.executable, *args], **run)  # type: ignore[call-overload]
    assert out.stdout.strip() == str(safe), out.stderr
