"""Guest side: the guest's xdist workers are forked from a process that has imported already.

In a TCG guest every Python process pays its imports ~20x: pytest, asyncio, execnet and
pyroute2 (whose package imports all of its ~40 modules) took 4.4 s of a worker's 8-9 s start
in an idle 6.1 guest, and the lane starts four workers and a controller on two vCPUs (measured:
docs/architecture.md §6, item 16). So the guest starts a *zygote* next to the controller (on
the vCPU the controller's own start leaves idle); it imports :data:`PRELOAD` and waits on a
Unix socket. xdist starts each worker as ``<python> -u -c <bootstrap>`` (execnet's popen
gateway, ``--tx popen//python=...``); the guest gives it :data:`STUB` as that python, which
hands its stdin, stdout and stderr over the socket and waits. The zygote forks; the child
takes those descriptors as its own and runs the bootstrap exactly as ``python -c`` would.

Only what no pytest plugin's distribution holds is preloaded: pytest rewrites the asserts of a
plugin's modules (this project's, pytest-xdist's) at import, so those are imported by each
worker itself, through pytest. When the zygote is not there (not started yet, failed), the stub
execs the interpreter instead: slower, the same worker.

This runs in a guest, which is gone when its script ends. The zygote also exits when its parent
does (within :data:`PARENT_CHECK`), so nothing of it outlives a test that starts one on a host.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import json
import os
import signal
import socket
import sys
import traceback
import types
from pathlib import Path

#: what the zygote imports before it forks (none of it from a pytest plugin's distribution)
PRELOAD = (
    "asyncio",
    "execnet",
    "pyroute2",
    "pytest",
    "_pytest.fixtures",
    "_pytest.main",
    "_pytest.python",
    "_pytest.runner",
    "_pytest.terminal",
)
#: the stub xdist runs as each worker's python (see the module docstring)
STUB = Path(__file__).with_name("guest_worker_stub.py")
SOCKET_ENV = "LVSCONF_GUEST_ZYGOTE"
#: seconds between the zygote's checks that its parent still runs (it must not outlive it)
PARENT_CHECK = 0.5


def serve(path: str) -> None:
    """Import :data:`PRELOAD`, then fork a worker for each stub that connects to ``path``."""
    for name in PRELOAD:
        importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = f"{path}.{os.getpid()}"
    server.bind(partial)
    server.listen(16)
    os.rename(partial, path)  # the stubs connect only once the imports are done
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    parent = os.getppid()
    server.settimeout(PARENT_CHECK)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:
                return  # whoever started it (the guest's pytest) is gone: so is the zygote
            continue
        conn.setblocking(True)
        request, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        if os.fork() == 0:
            server.close()
            _worker(conn, json.loads(request), fds)  # never returns
        conn.close()
        for fd in fds:
            os.close(fd)


def _worker(conn: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    """The forked worker: the stub's stdio, cwd and environment, then ``python -c`` semantics.
    ``conn`` stays open until this process exits: the stub waits for that, and for the exit
    status sent on it."""
    status = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess needs its children back
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update(request["env"])  # type: ignore[arg-type]
        argv = list(request["argv"])  # type: ignore[call-overload]
        code = argv[argv.index("-c") + 1]
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["-c"]
        sys.path[0] = ""  # as for ``python -c``: the working directory
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        exec(compile(code, "<string>", "exec"), main.__dict__)  # noqa: S102
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker's crash is reported like python -c's
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        with contextlib.suppress(OSError):
            conn.send(bytes([status & 0xFF]))  # the stub exits with it
        os._exit(status)


if __name__ == "__main__":
    serve(sys.argv[1])
