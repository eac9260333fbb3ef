"""Run isolation: a unique name prefix per run and xdist worker, an owner record, and the sweep.

Every kernel object a run creates (network namespaces; links live inside them) carries the
run's prefix, e.g. ``lc3f9a1`` = ``lc`` + 4 random hex + one worker character. Before anything
is created, the run writes an owner record ``/run/lvsconf/owners/<prefix>.json`` holding its pid
and that pid's start time (``/proc/<pid>/stat`` field 22), so a reused pid is not mistaken for
the owner. :func:`sweep` removes the objects of prefixes whose owner is gone, and only those:
never by a broad name pattern, never a live run's objects.

Namespace helpers here (create/remove by name) are the only place a namespace is made or
unmade, so the sweep and the topology builder agree on what "already gone" means.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import settings

STATE_DIR = settings.current().state_dir
OWNERS_DIR = STATE_DIR / "owners"
SCRATCH_DIR = STATE_DIR / "scratch"  # per-run files (sockets, configs, logs); swept with the run
#: how long a sweep or close waits for what it SIGKILLed to be gone (exited, or a zombie)
KILL_WAIT = 10.0
NETNS_DIR = Path("/run/netns")
#: a run prefix: "lc", 4 hex digits, one worker character
PREFIX_RE = re.compile(r"^lc[0-9a-f]{4}[0-9a-z]")
PREFIX_LEN = 7
IFNAMSIZ = 15  # longest interface / practical namespace name we allow

#: errors that mean "the object is already gone" — the only ones teardown forgives
GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH})

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
MNT_DETACH = 2
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20


class RunError(RuntimeError):
    """A run could not be set up; the message names the object and the fix."""


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (``[0]`` is the state,
    ``[1]`` the parent pid), or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``, or None when no such process exists."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    if fields[0] in ("Z", "X"):  # a zombie has finished: nothing left to kill or wait for
        return None
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)


def is_alive(pid: int, start: int) -> bool:
    """True when ``pid`` is running and is the same process (same start time)."""
    return proc_start_time(pid) == start


def gone(exc: BaseException) -> bool:
    """True when ``exc`` says the object is already gone (ENOENT/ENODEV/ESRCH)."""
    code = getattr(exc, "errno", None)
    if code is None:
        code = getattr(exc, "code", None)  # pyroute2 NetlinkError
    return code in GONE


# --- namespaces -----------------------------------------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _make_rundir_shared() -> None:
    # as iproute2 does: /run/netns must be a shared mount so bind mounts propagate
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    d = str(NETNS_DIR).encode()
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(d, d, b"none", MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise RunError(f"cannot bind-mount {NETNS_DIR}: {os.strerror(err)}; run as root")
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise RunError(f"cannot make {NETNS_DIR} shared: {os.strerror(err)}; run as root")


def _create_in_thread(name: str, result: list[BaseException]) -> None:
    # unshare() in a throwaway thread: only that thread changes namespace, the process
    # (and the caller's thread) never leaves the host namespace, and nothing is forked
    try:
        path = NETNS_DIR / name
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
        os.close(fd)
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if _libc.mount(src, str(path).encode(), b"none", MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bind mount of {path}: {os.strerror(err)}")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    except BaseException as exc:  # handed to the caller's thread
        result.append(exc)


def create_netns(name: str) -> None:
    """Create network namespace ``name`` (bind-mounted at /run/netns/name, like ``ip netns``)."""
    if len(name) > IFNAMSIZ or "/" in name:
        raise RunError(f"namespace name {name!r} is longer than {IFNAMSIZ} chars or has '/'")
    _make_rundir_shared()
    result: list[BaseException] = []
    t = threading.Thread(target=_create_in_thread, args=(name, result), name=f"netns-{name}")
    t.start()
    try:
        t.join()
    except BaseException:
        t.join()  # interrupted (Ctrl-C): let the thread finish so the caller can undo it
        raise
    if result:
        exc = result[0]
        if isinstance(exc, FileExistsError):
            raise RunError(f"namespace {name} already exists; run `lvsconf sweep`") from exc
        raise exc


def remove_netns(name: str) -> bool:
    """Remove namespace ``name``; False when it was already gone. Other errors propagate."""
    path = NETNS_DIR / name
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (half-created); ENOENT: already gone
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


# --- the run --------------------------------------------------------------------------------


def _worker_char() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    m = re.fullmatch(r"gw(\d+)", worker)
    if not m:
        return "m"  # the main (non-xdist) process
    return "0123456789abcdefghijklmnopqrstuvwxyz"[int(m.group(1)) % 36]


@dataclass(frozen=True, slots=True)
class ChildRecord:
    pid: int
    start: int


class Run:
    """One run of one process (pytest worker, CLI, bench): its prefix and owner record.

    The prefix is claimed atomically (the record is hard-linked into place, failing when the
    name is taken), so two concurrent runs never share a prefix even if their random part
    collides.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        start = proc_start_time(self.pid)
        assert start is not None
        self.start = start
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        self._children: list[ChildRecord] = []
        self._seq = 0
        # reentrant: a KeyboardInterrupt between acquire and the with-block's try can leave it
        # held by this (main) thread; teardown in the same thread must still get it
        self._lock = threading.RLock()
        self.closed = False
        install_interrupt_policy()
        OWNERS_DIR.mkdir(parents=True, exist_ok=True)
        for _ in range(64):
            prefix = f"lc{secrets.token_hex(2)}{_worker_char()}"
            self.prefix = prefix
            self.record = OWNERS_DIR / f"{prefix}.json"
            if self._claim():
                return
        raise RunError(f"no free run prefix in {OWNERS_DIR}; run `lvsconf sweep`")

    def _content(self) -> str:
        return json.dumps(
            {
                "prefix": self.prefix,
                "pid": self.pid,
                "start": self.start,
                "worker": self.worker,
                "created": time.time(),
                "children": [{"pid": c.pid, "start": c.start} for c in self._children],
            }
        )

    def _claim(self) -> bool:
        tmp = OWNERS_DIR / f".{self.prefix}.{self.pid}.tmp"
        tmp.write_text(self._content())
        try:
            os.link(tmp, self.record)  # atomic, fails if the prefix is taken
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        if any(n.startswith(self.prefix) for n in list_netns()):  # leftovers of an old owner
            self.record.unlink()
            return False
        return True

    def _rewrite(self) -> None:
        tmp = OWNERS_DIR / f".{self.prefix}.{self.pid}.tmp"
        tmp.write_text(self._content())
        os.replace(tmp, self.record)

    def name(self, suffix: str) -> str:
        """A kernel object name carrying this run's prefix; at most 15 characters."""
        full = f"{self.prefix}{suffix}"
        if len(full) > IFNAMSIZ:
            raise RunError(f"name {full!r} exceeds {IFNAMSIZ} characters; shorten {suffix!r}")
        return full

    def next_id(self) -> str:
        """A fresh 2-hex-digit (3 after 256) id for one topology of this run."""
        with self._lock:
            self._seq += 1
            return f"{self._seq:02x}"

    def register_process(self, pid: int) -> None:
        """Record child ``pid``: the sweep kills it if this run dies without closing."""
        start = proc_start_time(pid)
        if start is None:
            return
        with self._lock:
            self._children.append(ChildRecord(pid, start))
            self._rewrite()

    def unregister_process(self, pid: int) -> None:
        with self._lock:
            self._children = [c for c in self._children if c.pid != pid]
            self._rewrite()

    def namespaces(self) -> list[str]:
        return [n for n in list_netns() if n.startswith(self.prefix)]

    def scratch(self, tag: str) -> Path:
        """A fresh private directory for this run's files; removed by close() or the sweep."""
        base = SCRATCH_DIR / self.prefix
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            self._seq += 1
            path = base / f"{tag}-{self._seq}"
        path.mkdir(mode=0o700)
        return path

    def close(self) -> None:
        """Kill remaining children, remove leftover namespaces, then drop the owner record."""
        if self.closed:
            return
        killed = _kill_children(self._children)
        wait_gone([c for c in self._children if c.pid in killed], KILL_WAIT)
        for ns in self.namespaces():
            remove_netns(ns)
        shutil.rmtree(SCRATCH_DIR / self.prefix, ignore_errors=True)
        self.record.unlink(missing_ok=True)
        self.closed = True

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run({self.prefix}, pid={self.pid})"


_default: Run | None = None
_default_lock = threading.RLock()  # reentrant for the same reason as Run._lock


def default_run() -> Run:
    """The process's run when the caller passes none (closed at interpreter exit)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Run()
            atexit.register(_default.close)
        return _default


def _kill_children(children: list[ChildRecord]) -> list[int]:
    """SIGKILL the live ``children`` (a group leader with its group); return their pids."""
    killed = []
    for c in children:
        if not is_alive(c.pid, c.start):
            continue
        try:
            # A child that leads its own process group (the VM: vng with qemu under it) is
            # killed with its whole group, so no grandchild outlives it.
            if os.getpgid(c.pid) == c.pid:
                os.killpg(c.pid, signal.SIGKILL)
            else:
                os.kill(c.pid, signal.SIGKILL)
            killed.append(c.pid)
        except ProcessLookupError:
            pass
    return killed


def wait_gone(children: list[ChildRecord], timeout: float) -> list[int]:
    """Wait (bounded) until ``children`` are gone; return the pids still running after it.

    SIGKILL is asynchronous: the target dies only once it is scheduled again, which on a loaded
    machine takes a while. A dead child stays in /proc as a zombie until its parent reaps it (an
    orphan's new parent, often PID 1 in a container, may never reap promptly); a zombie holds
    no namespace and runs no code, so it counts as gone (:func:`proc_start_time`).
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    pending = [c for c in children if is_alive(c.pid, c.start)]
    while pending and time.monotonic() < deadline:
        time.sleep(delay)  # polling interval of a bounded wait
        delay = min(delay * 2, 0.05)
        pending = [c for c in pending if is_alive(c.pid, c.start)]
    return [c.pid for c in pending]


# --- the sweep ------------------------------------------------------------------------------


@dataclass(slots=True)
class SweepReport:
    """What :func:`sweep` did."""

    removed_namespaces: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    removed_records: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # prefixes of live runs, untouched
    survivors: list[int] = field(default_factory=list)  # killed, still running after KILL_WAIT
    unowned: list[str] = field(default_factory=list)  # our pattern, no record: left alone
    removed_dirs: list[str] = field(default_factory=list)  # guest dirs of dead sessions

    @property
    def removed_anything(self) -> bool:
        return bool(
            self.removed_namespaces or self.killed or self.removed_records or self.removed_dirs
        )

    def lines(self) -> list[str]:
        out = [f"removed namespace {n}" for n in self.removed_namespaces]
        out += [f"killed process {p}" for p in self.killed]
        out += [
            f"process {p} still running {KILL_WAIT:.0f} s after SIGKILL (stuck in the kernel?)"
            for p in self.survivors
        ]
        out += [f"removed owner record {r}" for r in self.removed_records]
        out += [f"removed guest directory {d}" for d in self.removed_dirs]
        out += [f"left alone (no owner record): {n}" for n in self.unowned]
        return out


@contextlib.contextmanager
def _sweep_lock() -> Iterator[None]:
    # concurrent sweeps (xdist workers starting together) would race on the same objects
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "sweep.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_record(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def sweep() -> SweepReport:
    """Remove namespaces and processes of runs whose owner process is gone; report them."""
    report = SweepReport()
    with _sweep_lock():
        records = sorted(OWNERS_DIR.glob("lc*.json")) if OWNERS_DIR.exists() else []
        owned: set[str] = set()
        for path in records:
            prefix = path.stem
            if not PREFIX_RE.fullmatch(prefix) or len(prefix) != PREFIX_LEN:
                continue
            owned.add(prefix)
            data = _read_record(path)
            if data is None:
                continue
            pid, start = data.get("pid"), data.get("start")
            if isinstance(pid, int) and isinstance(start, int) and is_alive(pid, start):
                report.live.append(prefix)
                continue
            listed = data.get("children")
            children = [
                ChildRecord(int(c["pid"]), int(c["start"]))
                for c in (listed if isinstance(listed, list) else [])
                if isinstance(c, dict)
            ]
            killed = _kill_children(children)
            report.killed += killed
            report.survivors += wait_gone([c for c in children if c.pid in killed], KILL_WAIT)
            for ns in list_netns():
                if ns.startswith(prefix) and remove_netns(ns):
                    report.removed_namespaces.append(ns)
            shutil.rmtree(SCRATCH_DIR / prefix, ignore_errors=True)
            path.unlink(missing_ok=True)
            report.removed_records.append(prefix)
        for ns in list_netns():
            m = PREFIX_RE.match(ns)
            if m and m.group(0) not in owned:
                report.unowned.append(ns)
        report.removed_dirs += _sweep_guest_dirs()
    return report


def _sweep_guest_dirs() -> list[str]:
    """Kernel-lane directories ``guest-<pid>-...`` (harness/lanes/pytest_lane.py) of pytest
    sessions that died without their teardown (a killed xdist controller).

    Never inside a guest: there the lane's own directory is mounted at the same path, and the
    host pid in its name means nothing to the guest's /proc (a guest that swept it deleted the
    host's lock, node ids and results while the lane ran)."""
    if settings.current().in_guest:
        return []
    removed = []
    for d in STATE_DIR.glob("guest-*-*") if STATE_DIR.exists() else ():
        pid = d.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


# --- interrupts -----------------------------------------------------------------------------

CLEANUP_NOTICE = "lvsconf: cleanup in progress, please wait\n"
REDELIVER_AFTER = 0.05  # seconds: an interrupt Python dropped comes again after this
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
_interrupt: dict[str, Any] = {
    "raised": False,  # a KeyboardInterrupt was raised by the policy
    "cleaning": False,  # pytest caught it: teardown runs
    "said": False,  # the cleanup notice was printed
    "fd": 2,  # where the notice goes
    "signum": signal.SIGINT,  # the last interrupt raised
    "hook": sys.__unraisablehook__,  # the unraisable hook before ours
}


def cleanup_started() -> None:
    """The interrupt was caught and teardown runs (pytest calls this through its
    ``pytest_keyboard_interrupt`` hook): from now on signals only get the notice."""
    _interrupt["cleaning"] = True


def _unwinding() -> bool:
    """True while a KeyboardInterrupt is being handled in this thread: the handler runs in a
    ``finally``, ``except`` or ``__exit__`` that the interrupt is passing through (there
    ``sys.exc_info()`` holds it, possibly as the context of an exception raised inside)."""
    exc = sys.exc_info()[1]
    for _ in range(64):  # a context chain is short; never loop on a cycle
        if exc is None:
            return False
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


def _on_interrupt(signum: int, frame: object) -> None:
    # A signal unwinds the stack (KeyboardInterrupt: LIFO teardown runs in every finally and
    # __exit__ on the way). While that teardown runs, a further signal must not cut it short:
    # it is ignored, with one notice, as the kernel selftests' cleanup traps do. A signal that
    # arrives when no interrupt is being handled raises again: the first one can be lost (raised
    # inside an at-fork hook or a finaliser, Python reports it as "Exception ignored").
    if _interrupt["cleaning"] or _unwinding():
        if not _interrupt["said"]:
            _interrupt["said"] = True
            with contextlib.suppress(OSError):
                os.write(_interrupt["fd"], CLEANUP_NOTICE.encode())
        return
    _interrupt["signum"] = signum
    if not _interrupt["raised"]:
        _interrupt["raised"] = True
        # Interpreter shutdown restores the default dispositions (the signal module's
        # finalisation) after atexit handlers ran, and atexit handlers tear down too (the
        # default run): from atexit on, an interrupted process ignores both signals.
        atexit.register(_ignore_interrupts)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _ignore_interrupts() -> None:
    for sig in _INTERRUPTS:
        signal.signal(sig, signal.SIG_IGN)


def notice_to(fd: int) -> None:
    """Write the cleanup notice to ``fd`` (pytest hands over the terminal's stderr)."""
    _interrupt["fd"] = fd


def _on_unraisable(unraisable: Any) -> None:
    """sys.unraisablehook while the policy is installed: an interrupt raised where Python cannot
    propagate it (an at-fork hook such as logging's, run after every fork of a subprocess; a
    finaliser) is delivered again from a helper thread, so it lands in ordinary code; anything
    else goes to the previous hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupt["raised"]:
        # not from inside this hook (it would be dropped again): a moment later, from a thread
        timer = threading.Timer(REDELIVER_AFTER, os.kill, (os.getpid(), _interrupt["signum"]))
        timer.daemon = True
        timer.start()
        return
    _interrupt["hook"](unraisable)


def install_interrupt_policy() -> None:
    """In the main thread: SIGINT and SIGTERM raise KeyboardInterrupt; while it is being handled
    (teardown), further ones are ignored with one notice on stderr, so teardown always
    finishes; an interrupt Python had to drop is delivered again (:func:`_on_unraisable`).

    Installed by every process that creates things (:class:`Run`, :func:`sigterm_as_interrupt`).
    A signal the process was started with ignored (a background job of a non-interactive shell
    ignores SIGINT) stays ignored, and a handler someone else installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _INTERRUPTS:
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, _on_interrupt)
    if sys.unraisablehook is not _on_unraisable:  # pytest installs its own at configure
        _interrupt["hook"] = sys.unraisablehook
        sys.unraisablehook = _on_unraisable


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (like SIGINT) becomes KeyboardInterrupt, so LIFO teardown still runs; a second
    signal cannot interrupt that teardown (:func:`install_interrupt_policy`)."""
    install_interrupt_policy()
    yield


@contextlib.contextmanager
def enter_netns(name: str | int) -> Iterator[None]:
    """setns() the calling *thread* into namespace ``name`` (or an open namespace fd);
    restore its namespace after.

    Sockets (including netlink sockets) created inside stay bound to ``name`` afterwards.
    """
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        if isinstance(name, int):
            _setns(name)
        else:
            try:
                target = os.open(NETNS_DIR / name, os.O_RDONLY)
            except FileNotFoundError:
                raise RunError(
                    f"namespace {name} does not exist (removed, or never built)"
                ) from None
            try:
                _setns(target)
            finally:
                os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def netns_preexec(name: str) -> Callable[[], None]:
    """A ``preexec_fn`` that moves a child process into namespace ``name`` before exec.

    (``os.setns`` only exists from Python 3.12; this uses libc, so it works on 3.11.)
    """
    path = str(NETNS_DIR / name)

    def _enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    return _enter
