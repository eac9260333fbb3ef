"""Boot a kernel with virtme-ng, run one command in the guest, stream its output, get its status.

Facts this module relies on (measured; docs/architecture.md §6):

- The host has no udev, so the guest never gets ``/dev/virtio-ports/*`` and vng loses the
  script's stdout and exit status (rc 255). A ``udevd`` stand-in on the guest's PATH fixes it;
  the PATH must keep ``/usr/sbin:/usr/bin:/sbin:/bin`` or the guest panics.
- stdout must be a pipe (QEMU reopens /proc/self/fd/1 and truncates a file); stdin must be open.
- vng execs ``virtme-run``, so the venv's bin directory goes on PATH.
- Host environment variables do not reach the guest; they go inside the guest script.
- vng hands the ``--exec`` script to the guest base64-encoded on the kernel command line
  (``virtme.exec=``), which x86 kernels cut at 2,048 bytes: a longer script boots a guest that
  never runs it (measured: an idle QEMU, no output, until the lane's timeout). The script
  therefore goes into a file in the guest's writable directory (:data:`SCRIPT_NAME`) and
  ``--exec`` only runs that file.
- ``/dev/kvm`` may exist while a KVM guest hangs: the accelerator is chosen by a short trial
  boot, cached per host kernel, overridable with ``LVSCONF_ACCEL=kvm|tcg``.
- Two guests on a 2-core machine slow each other 3-4x: one guest per machine, under a flock
  (``<state dir>/vm.lock``, the state directory of :mod:`harness.runs`).
- vng (1.42, ``virtme_ng/run.py`` ``KernelSource.run``) joins ``--run``, ``--rwdir`` and ``-m``
  into one command line unquoted and runs it with ``shell=True``: a path with a space or
  ``$(…)`` would be split or run as root. Every value that reaches that line is checked
  (:func:`check_shell_safe`); scratch directories are made where the path is safe.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness import runs
from harness.lanes.provision import LaneError, cache_root

Accel = Literal["kvm", "tcg"]
LineSink = Callable[[str], None]

GUEST_PATH_TAIL = "/usr/sbin:/usr/bin:/sbin:/bin"
KVM_TRIAL_SECONDS = 25.0
#: what vng's shell line may carry unquoted: no space, quote, $, `, ;, &, |, <, >, (, ), *, ?,
#: and none of "=", "," and ":" either (vng's --rwdir GUEST=HOST, QEMU's option separator, PATH)
SHELL_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./+@~-]*")
MEMORY = re.compile(r"[1-9][0-9]*[KMGT]?")

_UDEVD_SHIM = """#!/bin/busybox sh
# lvsconf: udevd stand-in for virtme-ng-init (the host has no udev): create the
# /dev/virtio-ports/<name> links so the script's stdio and exit status reach the host.
mkdir -p /dev/virtio-ports
for d in /sys/class/virtio-ports/vport*; do
  [ -r "$d/name" ] || continue
  read -r n < "$d/name" && [ -n "$n" ] && ln -sf "../${d##*/}" "/dev/virtio-ports/$n"
done
exit 0
"""
_UDEVADM_SHIM = "#!/bin/busybox sh\nexit 0\n"


class GuestError(LaneError):
    """The guest did not deliver: panic, lost guest, timeout. Carries the console tail."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail


# ---------------------------------------------------------------- pieces of the command line


def shim_dir() -> Path:
    """Directory holding the udevd/udevadm stand-ins (busybox builtins only: 0.3 s at boot)."""
    if shutil.which("busybox") is None and not Path("/bin/busybox").exists():
        raise LaneError("busybox not found: apt-get install busybox-static (vng needs it too)")
    d = cache_root() / "guest-shim"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (("udevd", _UDEVD_SHIM), ("udevadm", _UDEVADM_SHIM)):
        path = d / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.chmod(0o755)
            tmp.rename(path)
    return d


def vng_bin() -> Path:
    """vng from the running interpreter's venv (virtme-ng is a Python dependency), else PATH."""
    here = Path(sys.executable).parent / "vng"
    if here.exists():
        return here
    found = shutil.which("vng")
    if found is None:
        raise LaneError("vng not found: pip install 'lvsconf[vm]' (virtme-ng>=1.42)")
    return Path(found)


@dataclass(frozen=True, slots=True)
class GuestRun:
    """One guest boot running ``command`` (a shell command line) in ``cwd``."""

    image: Path
    command: str
    cwd: Path
    rwdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    memory: str = "1G"
    accel: Accel = "tcg"
    timeout: float = 1800.0
    verbose_console: bool = True  # kernel log on vng's stderr, kept as the console tail
    dry_run: bool = False  # vng prints the QEMU command line instead of booting


SCRIPT_NAME = "lvsconf-guest.sh"


def script_path(run: GuestRun) -> Path:
    return run.rwdir / SCRIPT_NAME


def guest_script(run: GuestRun) -> str:
    """The guest script (in :func:`script_path`): stderr joined to stdout (vng's own stderr
    carries the kernel console, kept apart as the console tail), cd, environment (host env
    does not pass), then the command."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(run.env.items()))
    prefix = f"export {env}; " if env else ""
    return f"exec 2>&1; cd {shlex.quote(str(run.cwd))} && {prefix}{run.command}"


def vng_argv(run: GuestRun, vng: Path, shim: Path) -> list[str]:
    argv = [
        str(vng),
        "--run",
        str(run.image),
        "--force-9p",
        "-m",
        run.memory,
        "--rwdir",
        str(run.rwdir),
        "-a",
        f"PATH={shim}:{GUEST_PATH_TAIL}",
    ]
    if run.accel == "tcg":
        argv.append("--disable-kvm")
    if run.verbose_console:
        argv.append("--verbose")
    if run.dry_run:
        argv.append("--dry-run")
    argv += ["--exec", f"exec sh {shlex.quote(str(script_path(run)))}"]
    return argv


def check_shell_safe(run: GuestRun, shim: Path) -> None:
    """Refuse, with one line, a value vng would put on its shell line unquoted (or split)."""
    if not MEMORY.fullmatch(run.memory):
        raise LaneError(
            f"guest memory {run.memory!r}: expected a size such as 1G, 1536M "
            "(LVSCONF_GUEST_MEM, --memory)"
        )
    for what, path, fix in (
        ("kernel image", run.image, "LVSCONF_CACHE or the image path"),
        ("guest directory", run.rwdir, "LVSCONF_STATE_DIR or TMPDIR"),
        ("guest shim directory", shim, "LVSCONF_CACHE"),
    ):
        if not SHELL_SAFE_PATH.fullmatch(str(path)):
            raise LaneError(
                f"{what} path {str(path)!r} has characters virtme-ng would hand to a shell "
                f"unquoted; choose {fix} made of letters, digits and ._+@~-/ only"
            )


def safe_temp_base() -> Path:
    """``$TMPDIR`` (as tempfile sees it) when vng may carry it unquoted, else ``/tmp``."""
    base = tempfile.gettempdir()
    return Path(base) if SHELL_SAFE_PATH.fullmatch(base) else Path("/tmp")


def scratch_dir(prefix: str) -> Path:
    """A fresh private directory (0700) for a guest's writable files, at a shell-safe path."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=safe_temp_base()))


def host_env(vng: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{vng.parent}:{env.get('PATH', GUEST_PATH_TAIL)}"  # vng execs virtme-run
    return env


# ---------------------------------------------------------------- the global VM lock


def lock_path() -> Path:
    """``vm.lock`` in the state directory of :mod:`harness.runs` (``LVSCONF_STATE_DIR``), next
    to the owner records, so one setting moves both."""
    return runs.STATE_DIR / "vm.lock"


@contextlib.contextmanager
def vm_lock(progress: LineSink = lambda _m: None, path: Path | None = None) -> Iterator[None]:
    """Hold the machine-wide guest lock; say so when waiting for another run's guest."""
    path = path or lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            progress(f"waiting for another lvsconf VM to finish (pid {holder}, lock {path}) …")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock


# ---------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class GuestResult:
    rc: int
    seconds: float
    console_tail: str


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the VM's process group, then SIGKILL what is left; reap."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    # the group may outlive vng (qemu is its child): make sure nothing is left
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the guest runs, so cleanup still happens."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _record_owner(pid: int) -> Callable[[], None]:
    """Record the VM's process group in this run's owner record (harness.runs), so a later
    sweep kills a VM whose run died; returns the undo."""
    run = runs.default_run()
    run.register_process(pid)
    return lambda: run.unregister_process(pid)


#: a shell that outlives this process only to kill the VM's process group when this process
#: dies without its teardown (an xdist worker killed with its controller); $1 = our pid,
#: $2 = the VM's process group. A zombie counts as dead (its parent may be dying too). Polled
#: once a second: it only waits for a death.
_WATCHDOG = (
    'alive() { s=$(sed "s/.*) //" "/proc/$1/stat" 2>/dev/null | cut -c1); '
    '[ -n "$s" ] && [ "$s" != Z ]; }; '
    'while alive "$1"; do sleep 1; done; kill -KILL "-$2" 2>/dev/null'
)


def _watch_for_our_death(vm_group: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sh", "-c", _WATCHDOG, "lvsconf-vm-watchdog", str(os.getpid()), str(vm_group)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to our process group must not take it first
    )


def run_guest(run: GuestRun, on_line: LineSink, console_lines: int = 80) -> GuestResult:
    """Boot, run, stream guest stdout+stderr lines to ``on_line``; the caller holds the lock.

    Returns vng's status (the guest script's status). Raises :class:`GuestError` on timeout;
    rc 255 (panic or lost guest) is returned and judged by the caller, with the console tail.
    """
    vng = vng_bin()
    shim = shim_dir()
    check_shell_safe(run, shim)
    argv = vng_argv(run, vng, shim)
    run.rwdir.mkdir(parents=True, exist_ok=True)
    script_path(run).write_text(guest_script(run) + "\n")
    console: collections.deque[str] = collections.deque(maxlen=console_lines)
    start = time.monotonic()
    with _sigterm_as_interrupt():
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=host_env(vng),
            start_new_session=True,
        )
        forget = _record_owner(proc.pid)
        watchdog = _watch_for_our_death(proc.pid)
        try:
            _pump(proc, on_line, console, start + run.timeout)
            rc = proc.wait(timeout=max(1.0, start + run.timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise GuestError(
                f"guest did not finish within {run.timeout:.0f} s; killed", "\n".join(console)
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            forget()
            watchdog.kill()
            watchdog.wait()
        _kill_group(proc)  # stray helpers (virtiofsd, qemu) must not survive vng
    return GuestResult(rc, time.monotonic() - start, "\n".join(console))


def _pump(
    proc: subprocess.Popen[bytes],
    on_line: LineSink,
    console: collections.deque[str],
    deadline: float,
) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    partial = {"out": b"", "err": b""}
    open_streams = 2
    while open_streams:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        for key, _ in sel.select(timeout=min(left, 1.0)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                lines = [partial[key.data]] if partial[key.data] else []
            else:
                *lines, partial[key.data] = (partial[key.data] + chunk).split(b"\n")
            for raw in lines:
                text = raw.decode(errors="replace").rstrip("\r")
                if key.data == "out":
                    on_line(text)
                else:
                    console.append(text)


# ---------------------------------------------------------------- accelerator choice


def _accel_cache() -> Path:
    return cache_root() / "accel.json"


def choose_accel(image: Path, progress: LineSink = lambda _m: None) -> Accel:
    """``LVSCONF_ACCEL``, else the cached verdict for this host kernel, else a trial KVM boot.

    Call with the VM lock held (the trial boots a guest).
    """
    forced = os.environ.get("LVSCONF_ACCEL", "").strip().lower()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise LaneError(f"LVSCONF_ACCEL={forced!r} is not valid; use kvm or tcg")
        return forced  # type: ignore[return-value]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = platform.release()
    cache = _accel_cache()
    known: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(cache.read_text())
    if known.get(key) in ("kvm", "tcg"):
        return known[key]  # type: ignore[return-value]
    progress(f"probing KVM with a trial boot (<= {KVM_TRIAL_SECONDS:.0f} s) …")
    verdict: Accel = "kvm" if _kvm_boots(image) else "tcg"
    progress(f"KVM {'works' if verdict == 'kvm' else 'hangs or fails here: using TCG'}")
    known[key] = verdict
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1) + "\n")
    tmp.rename(cache)
    return verdict


def _kvm_boots(image: Path) -> bool:
    tmp = scratch_dir("lvsconf-kvm-")
    try:
        marker = tmp / "ok"
        trial = GuestRun(
            image=image,
            command=f"echo ok > {shlex.quote(str(marker))}",
            cwd=Path("/"),
            rwdir=tmp,
            accel="kvm",
            timeout=KVM_TRIAL_SECONDS,
            verbose_console=False,
        )
        try:
            res = run_guest(trial, lambda _l: None)
        except GuestError:
            return False
        return res.rc == 0 and marker.exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
