"""Helper processes that live inside a topology namespace (reference datapath, nftlb).

One place for what every such process needs: a private work directory under the run's scratch
dir (the sweep removes it if the harness is SIGKILLed), entering the namespace before exec (so
nothing it does lands in the host namespace), dying with the harness (PR_SET_PDEATHSIG, set
before exec so there is no window), an owner-record entry for the sweep, and a bounded stop.

:func:`netns_process` execs a program. :func:`forked_in_netns` runs a Python function of the
project instead, in a process forked from multiprocessing's *forkserver*: a server process,
started once per harness process, that has imported the function's module already. A fresh
interpreter importing the reference datapath costs ~0.17 s of CPU, a third of a reference case
(docs/architecture.md §6, item 15); a fork from the server costs a few milliseconds. The forked
process gets the same treatment as an exec'd one (own session, namespace, default signals,
stdout on a pipe, stderr in the log, registered with the run); it dies with the server, and the
server exits when the harness does (its end of the server's pipe closes). Callers fork only
where :func:`fork_is_safe`.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from harness import runs
from impl.datapath.process import die_with_parent

STOP_GRACE = 5.0


def workdir(stack: contextlib.ExitStack, run: runs.Run | None, netns: str, tag: str) -> Path:
    """A fresh directory for one process's files, removed when ``stack`` closes."""
    path = run.scratch(tag) if run else Path(tempfile.mkdtemp(prefix=f"lvsconf-{tag}-{netns}-"))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path


CONTROL_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def _prepare_child(enter: Callable[[], None]) -> None:
    """In a new child, before it runs the program: die with the parent, enter the namespace,
    and put the control signals at their defaults. A program under test starts with the signals
    it is controlled by at their defaults, whatever lvsconf inherited: under nohup (or as a
    background job of a script) they arrive ignored, and a shell cannot trap a signal that was
    ignored at its start (a signal-mode exec program then never applied: "did not confirm
    generation 1")."""
    die_with_parent()
    enter()
    for sig in CONTROL_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


@contextlib.contextmanager
def netns_process(
    argv: Sequence[str],
    netns: str,
    run: runs.Run | None,
    log: IO[bytes],
    *,
    stdout_pipe: bool = False,
    env: dict[str, str] | None = None,
    grace: float = STOP_GRACE,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` inside namespace ``netns`` until the block exits, then stop it.

    stderr (and stdout unless ``stdout_pipe``) go to ``log``. The process gets its own session,
    so a Ctrl-C reaches pytest only and the harness decides when the process stops.
    """
    enter = runs.netns_preexec(netns)

    def preexec() -> None:
        _prepare_child(enter)  # before exec: no window in which the harness could die first

    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else log,
        stderr=log,
        env=env,
        preexec_fn=preexec,
        start_new_session=True,
    )
    with _owned(proc, run, grace):
        yield proc


class Forked:
    """What the harness uses of a :class:`subprocess.Popen`, for a forked process (same
    meanings: ``returncode`` is None while it runs, ``-N`` if signal N ended it)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, stdout: IO[bytes]) -> None:
        self._process = process
        self.stdout: IO[bytes] | None = stdout
        self.args = process.name

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        self._process.join(0)
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not after it is gone: its pid may be someone else's by then
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_is_safe() -> bool:
    """Whether a forkserver child would leave the harness's main module alone.

    multiprocessing prepares every child by importing the parent's ``__main__`` again under
    the name ``__mp_main__`` (multiprocessing/spawn.py, ``get_preparation_data`` and
    ``prepare``), except when it has neither a module name nor a file (``python -c``, the
    xdist workers) or is a package's ``__main__`` (``python -m pytest``). A script without an
    ``if __name__ == "__main__":`` guard would then run again inside the child (measured: it
    started a second datapath there and the first failed), and a guarded one still costs its
    imports in every child. So the harness forks only where no main module is imported again,
    and execs elsewhere."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return bool(name == "__main__" or name.endswith(".__main__"))
    return getattr(main, "__file__", None) is None


def _forkserver(preload: str) -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, multiprocessing.context.ForkServerContext)
    ctx.set_forkserver_preload([__name__, preload])
    return ctx


def _forked_main(
    netns: str,
    function: str,
    argv: list[str],
    log: str,
    stdout: multiprocessing.connection.Connection,
) -> None:
    """In the forked process: what :func:`netns_process`'s preexec and Popen do, then
    ``function(argv)``; its return value is the exit status."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    err = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(stdout.fileno(), 1)
    os.dup2(err, 2)
    for fd in (null, err):
        os.close(fd)
    stdout.close()
    # Every other inherited descriptor goes, as exec with close_fds would do. Above all the
    # forkserver hands each child a copy of the harness's end of the server's liveness pipe
    # (so that a child could start processes itself): held here, the server would never see the
    # harness die, and so this process, which dies with the server, would outlive it.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    _prepare_child(runs.netns_preexec(netns))  # the parent is the server; it exits with us
    module, _, attr = function.partition(":")
    sys.exit(getattr(importlib.import_module(module), attr)(argv))


@contextlib.contextmanager
def forked_in_netns(
    function: str,
    argv: Sequence[str],
    netns: str,
    run: runs.Run | None,
    log: Path,
    *,
    grace: float = STOP_GRACE,
) -> Iterator[Forked]:
    """Run ``function(argv)`` (``module:attr``, a function returning an exit status) inside
    namespace ``netns``, in a process forked from the forkserver, until the block exits; then
    stop it as :func:`netns_process` does. Its stdout is a pipe (``.stdout``), its stderr goes
    to ``log``. Call it from a thread in the harness's own namespace (the server's is that of
    the thread that starts it, and a server inside a topology namespace would keep it alive)."""
    ctx = _forkserver(function.partition(":")[0])
    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_forked_main,
        args=(netns, function, list(argv), str(log), writer),
        name=f"{function} in {netns}",
        daemon=True,  # at the harness's exit multiprocessing terminates what is left
    )
    try:
        process.start()
    finally:
        writer.close()
    stdout = os.fdopen(os.dup(reader.fileno()), "rb", buffering=0)
    reader.close()
    proc = Forked(process, stdout)
    with _owned(proc, run, grace):
        yield proc


#: a process the harness started: exec'd (:func:`netns_process`) or forked (:func:`forked_in_netns`)
ChildProcess = subprocess.Popen[bytes] | Forked


@contextlib.contextmanager
def _owned(proc: ChildProcess, run: runs.Run | None, grace: float) -> Iterator[None]:
    """Registered with the run while the block runs; stopped (and unregistered) after it."""
    try:
        if run is not None:
            run.register_process(proc.pid)
        try:
            yield
        finally:
            stop(proc, grace)
            if run is not None:
                run.unregister_process(proc.pid)
    finally:
        if proc.poll() is None:  # registering failed: still never leave it running
            stop(proc, grace)


def stop(proc: ChildProcess, grace: float = STOP_GRACE) -> None:
    """SIGTERM, bounded wait, then SIGKILL: the process never outlives its block."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def last_line(log: Path) -> str:
    """The last line a process logged (for one-line error messages)."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "(no output)"
