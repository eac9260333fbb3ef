"""The guest's zygote (harness/lanes/guest_workers.py), on the host: xdist workers forked from
it run tests as exec'd ones do, and without it the stub execs the interpreter."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.lanes import guest_workers

PARENT_TEST = """
import os

def test_where_i_come_from():
    parent = open(f"/proc/{os.getppid()}/cmdline").read().replace("\\0", " ")
    with open(os.environ["PARENTS"], "a") as f:
        f.write(parent + "\\n")
"""


def run_pytest(tmp_path: Path, zygote: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    (tmp_path / "test_parent.py").write_text(PARENT_TEST)
    parents = tmp_path / "parents.txt"
    parents.unlink(missing_ok=True)
    stub = f"{sys.executable} -S {guest_workers.STUB}"
    env = {**os.environ, guest_workers.SOCKET_ENV: str(zygote), "PARENTS": str(parents)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
        + ["--tx", f"2*popen//python={stub}", "--dist", "worksteal", "-q", "-rw"]
        + ["--rootdir", str(tmp_path), str(tmp_path / "test_parent.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    return out, parents.read_text().splitlines() if parents.exists() else []


def wait_for_socket(sock: Path, alive: Callable[[], bool]) -> None:
    """Until the zygote's socket appears (once it has imported), at most 60 s."""
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert alive(), "the zygote exited"
        assert time.monotonic() < deadline, "no zygote socket within 60 s"
        time.sleep(0.05)  # polling interval of a bounded wait


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Path]:
    """A zygote listening on a socket of ``tmp_path`` (killed afterwards); yields the socket."""
    sock = tmp_path / "zygote.sock"
    proc = subprocess.Popen(
        [sys.executable, "-P", guest_workers.__file__, str(sock)], stdout=subprocess.DEVNULL
    )
    try:
        wait_for_socket(sock, lambda: proc.poll() is None)
        yield sock
    finally:
        proc.kill()
        proc.wait()


def test_workers_fork_from_the_zygote(tmp_path: Path, zygote: Path) -> None:
    out, parents = run_pytest(tmp_path, zygote)
    assert out.returncode == 0, out.stdout + out.stderr
    assert parents and all(guest_workers.__file__ in p for p in parents), parents
    # the zygote imported nothing pytest wanted to rewrite
    assert "cannot be rewritten" not in out.stdout + out.stderr, out.stdout


def test_without_a_zygote_the_stub_execs_python(tmp_path: Path) -> None:
    out, parents = run_pytest(tmp_path, tmp_path / "no-such.sock")
    assert out.returncode == 0, out.stdout + out.stderr
    assert parents and not any(guest_workers.__file__ in p for p in parents), parents
    assert all("pytest" in p for p in parents), parents  # the controller itself


@pytest.mark.parametrize("code, status", [("pass", 0), ("raise SystemExit(3)", 3), ("1/0", 1)])
def test_a_forked_worker_exits_as_python_c_would(zygote: Path, code: str, status: int) -> None:
    """The zygote's child ends with ``python -c``'s status; the stub exits with it."""
    out = subprocess.run(
        [sys.executable, "-S", str(guest_workers.STUB), "-u", "-c", f"print('hi'); {code}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, guest_workers.SOCKET_ENV: str(zygote)},
        check=False,
    )
    assert out.stdout == "hi\n"
    assert out.returncode == status, out.stderr
    assert ("ZeroDivisionError" in out.stderr) == (status == 1)


def test_the_zygote_exits_with_its_parent(tmp_path: Path) -> None:
    """A SIGKILLed parent (a killed test worker, say) leaves no zygote behind."""
    sock = tmp_path / "z.sock"
    starter = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-P', {guest_workers.__file__!r}, {str(sock)!r}]); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        wait_for_socket(sock, lambda: _state(pid) not in ("gone", "Z"))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            assert time.monotonic() < deadline, "the zygote outlived its parent by 10 s"
            time.sleep(0.05)  # polling interval of a bounded wait
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"
