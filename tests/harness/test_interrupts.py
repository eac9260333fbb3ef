"""Ctrl-C during the three long-running parts of ``lvsconf run``: a reference datapath run, the
startup of nftlb, a VM lane. Each leaves nothing behind (no namespace, no owner record, no
process it started) and exits 130; Ctrl-C pressed again and again during the teardown does not
cut it short, and the run says once that it is cleaning up.

The run is the real CLI in a child process, with its owner records in a private state
directory (the records name what to look for). The VM lane and nftlb are stand-ins loaded into
the child: a shell script for vng (tests/kernel/test_lanes_unit.py does the same) and one for
nftlb that never answers its API, so the interrupt lands while the harness waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from childwatch import Children

from harness import runs

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
CASE = "conn_sticks and ipv4"
START_TIMEOUT = 90.0  # until the long-running part is recorded (includes collection)
EXIT_TIMEOUT = 90.0
PRESS_EVERY = 0.05


@dataclass
class Interrupted:
    rc: int
    err: str
    prefixes: list[str]
    recorded: list[runs.ChildRecord]


def _records(state: Path) -> dict[str, dict]:
    out = {}
    for path in (state / "owners").glob("lc*.json"):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being rewritten
    return out


def interrupt_run(
    children: Children, tmp_path: Path, args: list[str], env: dict[str, str] | None = None
) -> Interrupted:
    """Start ``lvsconf run ARGS``; once it has recorded a process of its own, press Ctrl-C, and
    keep pressing every 50 ms until it exits."""
    state = tmp_path / "state"
    out, err = tmp_path / "out", tmp_path / "err"
    argv = [sys.executable, "-m", "lvsconf.cli", "run", "--report", str(tmp_path / "report")]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = children.popen(
            [*argv, *args],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **(env or {}), "LVSCONF_STATE_DIR": str(state)},
        )
    deadline = time.monotonic() + START_TIMEOUT
    recorded: list[runs.ChildRecord] = []
    while not recorded:
        assert proc.poll() is None, f"run ended before it started anything:\n{err.read_text()}"
        if time.monotonic() > deadline:
            pytest.fail(f"run recorded no process in {START_TIMEOUT:.0f} s:\n{err.read_text()}")
        time.sleep(0.02)  # polling interval of a bounded wait
        recorded = [
            runs.ChildRecord(c["pid"], c["start"])
            for record in _records(state).values()
            for c in record.get("children", [])
        ]
    prefixes = list(_records(state))
    deadline = time.monotonic() + EXIT_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(PRESS_EVERY)  # a user pressing Ctrl-C again and again
    children.wait(proc, 1.0)
    return Interrupted(proc.returncode, err.read_text(), prefixes, recorded)


def assert_nothing_left(result: Interrupted, state: Path) -> None:
    assert result.rc == 130, result.err
    assert result.err.count(runs.CLEANUP_NOTICE.strip()) == 1, result.err
    assert _records(state) == {}, "owner records left behind"
    left = [n for n in runs.list_netns() for p in result.prefixes if n.startswith(p)]
    assert left == [], left
    alive = [c.pid for c in result.recorded if runs.is_alive(c.pid, c.start)]
    assert alive == [], f"recorded processes still running: {alive}"


def test_ctrl_c_during_a_reference_datapath_run(tmp_path: Path, children: Children) -> None:
    """A slow case (a 60 s timer) keeps the datapath forwarding while Ctrl-C arrives."""
    result = interrupt_run(
        children, tmp_path, ["--impl", "reference", "--slow", "-k", "extension_expires and ipv4"]
    )
    assert_nothing_left(result, tmp_path / "state")
    assert len(result.recorded) == 1  # the datapath process


FAKE_NFTLB = """#!/bin/sh
# stands in for nftlb: alive, but its API never answers (the harness waits for it)
exec sleep 300
"""


def test_ctrl_c_during_nftlb_startup(tmp_path: Path, children: Children) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nftlb").write_text(FAKE_NFTLB)
    (bin_dir / "nftlb").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    result = interrupt_run(children, tmp_path, ["--impl", "nftlb", "-k", CASE], env)
    assert_nothing_left(result, tmp_path / "state")
    assert len(result.recorded) == 1  # the nftlb stand-in


FAKE_VNG = """#!/bin/sh
# stands in for vng: a booting guest that never finishes; qemu's stand-in is in its group
echo "guest booting"
sleep 300 &
echo $! > "$FAKEVM_DIR/qemu.pid"
wait
"""

FAKE_LANE_PLUGIN = textwrap.dedent("""
    # loaded into the run with -p: a VM lane whose guest is the vng stand-in
    import os
    from pathlib import Path
    from harness.lanes import provision, vm

    DIR = Path(os.environ["FAKEVM_DIR"])

    class Tree:
        image = DIR / "vmlinuz"
        release = "fake"

    class FakeLane:
        is_vm = True
        version = None
        def label(self):
            return "fake-vm"
        def provide(self, say):
            return Tree()

    provision.resolve_lane = lambda _name: FakeLane()
    vm.vng_bin = lambda: DIR / "vng"
    vm.choose_accel = lambda *_args: "tcg"
    _lock = vm.vm_lock
    vm.vm_lock = lambda say=None: _lock(say or (lambda _m: None), DIR / "vm.lock")
""")


def test_ctrl_c_during_a_vm_lane(tmp_path: Path, children: Children) -> None:
    fake = tmp_path / "fakevm"
    fake.mkdir()
    (fake / "vmlinuz").write_bytes(b"")
    (fake / "vng").write_text(FAKE_VNG)
    (fake / "vng").chmod(0o755)
    (fake / "fakevm_plugin.py").write_text(FAKE_LANE_PLUGIN)
    env = {
        "FAKEVM_DIR": str(fake),
        "LVSCONF_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["--impl", "kernel", "--kernel", "auto", "-k", CASE, "--", "-p", "fakevm_plugin"]
    result = interrupt_run(children, tmp_path, args, env)
    assert_nothing_left(result, tmp_path / "state")
    assert len(result.recorded) == 1  # vng, leading its process group
    qemu = int((fake / "qemu.pid").read_text())
    assert runs.proc_start_time(qemu) is None, "the VM's group outlived the run"
