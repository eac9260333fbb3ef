"""Helper processes that live inside a topology namespace (reference datapath, nftlb).

One place for what every such process needs: a private work directory under the run's scratch
dir (the sweep removes it if the harness is SIGKILLed), entering the namespace before exec (so
nothing it does lands in the host namespace), dying with the harness (PR_SET_PDEATHSIG, set
before exec so there is no window), an owner-record entry for the sweep, and a bounded stop.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
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
        die_with_parent()  # before exec: no window in which the harness could die first
        enter()
        # A program under test starts with the signals it is controlled by at their defaults,
        # whatever lvsconf inherited: under nohup (or as a background job of a script) they
        # arrive ignored, and a shell cannot trap a signal that was ignored at its start (a
        # signal-mode exec program then never applied: "did not confirm generation 1").
        for sig in CONTROL_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else log,
        stderr=log,
        env=env,
        preexec_fn=preexec,
        start_new_session=True,
    )
    try:
        if run is not None:
            run.register_process(proc.pid)
        try:
            yield proc
        finally:
            stop(proc, grace)
            if run is not None:
                run.unregister_process(proc.pid)
    finally:
        if proc.poll() is None:  # registering failed: still never leave it running
            stop(proc, grace)


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
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
