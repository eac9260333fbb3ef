"""Child processes of the project's tests: started the way a terminal would start them, waited
for with a deadline, and diagnosed when they hang.

- Interrupts work in the child whatever the test runner inherited. A background job of a
  non-interactive shell (``./ci/test &`` in a script) starts with SIGINT *ignored*; Python then
  installs no KeyboardInterrupt handler, and a test that sends SIGINT to its child waits for
  nothing (this made the Ctrl-C tests hang in CI). Children start with SIGINT/SIGTERM at their
  default.
- Every Python process of the child's tree (the child, a pytest it runs, a datapath that one
  starts) imports a ``sitecustomize`` that lets SIGUSR1 dump all its threads' stacks
  (faulthandler) into a file of its own. A child that misses its deadline is asked for them,
  and they go into the failure message, with the child's output.
- Whatever is still running when the test ends is killed with its process group: a failed
  test leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

STACKS_ENV = "CHILDWATCH_STACKS"
DUMP_WAIT = 5.0

SITECUSTOMIZE = textwrap.dedent(f"""
    import faulthandler, os, signal
    _dir = os.environ.get({STACKS_ENV!r})
    if _dir and os.path.isdir(_dir):
        _file = open(os.path.join(_dir, f"{{os.getpid()}}.txt"), "w")
        faulthandler.register(signal.SIGUSR1, file=_file, all_threads=True)
""")


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def signal_state(pid: int) -> str:
    """Where SIGINT and SIGTERM stand in each thread of ``pid`` (pending, blocked, ignored,
    caught), from /proc: says whether a signal that "did nothing" arrived at all."""
    wanted = {"SigPnd": "pending", "ShdPnd": "pending(process)", "SigBlk": "blocked",
              "SigIgn": "ignored", "SigCgt": "caught"}  # fmt: skip
    threads = []
    with contextlib.suppress(OSError):
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            fields = {}
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in wanted:
                        mask = int(value.strip(), 16)
                        names = [
                            sig.name
                            for sig in (signal.SIGINT, signal.SIGTERM)
                            if mask >> (sig - 1) & 1
                        ]
                        if names:
                            fields[wanted[key]] = "+".join(names)
            threads.append(
                f"tid {tid} " + (", ".join(f"{k} {v}" for k, v in fields.items()) or "-")
            )
    return "signals: " + ("; ".join(threads) or "process gone")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc, parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


class Children:
    """Starts, waits for and, on a missed deadline, diagnoses and kills child processes."""

    def __init__(self, base: Path) -> None:
        self.site = base / "childwatch-site"
        self.stacks = base / "childwatch-stacks"
        self.site.mkdir(parents=True, exist_ok=True)
        self.stacks.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.procs: list[subprocess.Popen[Any]] = []

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        path = [str(self.site), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(path)
        env[STACKS_ENV] = str(self.stacks)
        return env

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs["env"] = self.env(kwargs.get("env"))
        proc = subprocess.Popen(argv, preexec_fn=_default_signals, **kwargs)
        self.procs.append(proc)
        return proc

    def run(
        self, argv: list[str], timeout: float, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Like subprocess.run(capture_output=True); a missed deadline fails with stacks."""
        proc = self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        out, err = self.communicate(proc, timeout)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def communicate(self, proc: subprocess.Popen[Any], timeout: float) -> tuple[Any, Any]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.communicate(timeout=timeout)
        self.fail(proc, timeout)
        raise AssertionError("not reached")

    def wait(self, proc: subprocess.Popen[Any], timeout: float) -> int:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(timeout=timeout)
        self.fail(proc, timeout)
        raise AssertionError("not reached")

    def stacks_of(self, proc: subprocess.Popen[Any]) -> str:
        """Ask every Python process in ``proc``'s tree for its stacks (bounded wait)."""
        pids = [p for p in (proc.pid, *descendants(proc.pid)) if (self._file(p)).exists()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + DUMP_WAIT
        while time.monotonic() < deadline and not all(self._file(p).stat().st_size for p in pids):
            time.sleep(0.05)  # polling interval of a bounded wait
        parts = [
            f"--- pid {p}: {signal_state(p)}\n{self._file(p).read_text(errors='replace')}"
            for p in pids
        ]
        return "\n".join(parts) or "(no Python process in the tree answered SIGUSR1)"

    def _file(self, pid: int) -> Path:
        return self.stacks / f"{pid}.txt"

    def fail(self, proc: subprocess.Popen[Any], timeout: float) -> None:
        stacks = self.stacks_of(proc)
        self.kill(proc)
        out = b""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    data = stream.read()
                    out += data if isinstance(data, bytes) else data.encode()
        pytest.fail(
            f"child {proc.args!r} (pid {proc.pid}) did not exit within {timeout:.0f} s.\n"
            f"Python stacks:\n{stacks}\n--- its output:\n{out.decode(errors='replace')[-4000:]}",
            pytrace=False,
        )

    def kill(self, proc: subprocess.Popen[Any]) -> None:
        """SIGKILL ``proc`` and its descendants; reap ``proc``."""
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)


@contextlib.contextmanager
def watching(base: Path) -> Iterator[Children]:
    children = Children(base)
    try:
        yield children
    finally:
        children.close()
