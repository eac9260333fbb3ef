"""The pytest side of kernel lanes (``--kernel``): run kernel-marked items where the lane says.

Host lane: items run here as usual (a host without IPVS fails them with one line).
VM lane: the host does not run kernel items itself. At the first one it boots ONE guest that
runs this same venv's pytest on exactly those node ids with ``--kernel host``; a recorder in the
guest (``--lvs-guest-results PATH``) writes one JSON line per phase report into the guest's
writable directory, and each host item then *reports the guest's reports as its own* (same
outcome, longrepr, duration, skip reason, wasxfail, user_properties). Under pytest-xdist the
first worker that needs the guest boots it for every kernel item under a lock keyed by xdist's
testrunuid; the other workers wait and read the same results file.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest.reports import TestReport

from harness.lanes import provision, vm
from harness.lanes.provision import Lane, LaneError

SHARED_DIR = Path(os.environ.get("LVSCONF_STATE_DIR", "/run/lvsconf"))
SLOWDOWN = "20"  # Python in a TCG guest is ~20x slower (docs/architecture.md §6.5)
KERNEL_MARK = "kernel"


# ---------------------------------------------------------------- guest side: the recorder


class GuestRecorder:
    """In the guest: append every phase report as one JSON line (flushed per line, so the
    host still gets what finished before a crash)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(report_record(report), default=repr) + "\n")


def report_record(report: pytest.TestReport) -> dict[str, Any]:
    longrepr: Any = None
    if isinstance(report.longrepr, tuple):  # a skip: (path, lineno, reason)
        longrepr = list(report.longrepr)
    elif report.longrepr is not None:
        longrepr = report.longreprtext
    return {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "longrepr": longrepr,
        "duration": report.duration,
        "wasxfail": getattr(report, "wasxfail", None),
        "user_properties": [list(p) for p in report.user_properties],
        "sections": [list(s) for s in report.sections if not s[0].startswith("Captured log")],
    }


def replay_report(item: pytest.Item, rec: dict[str, Any]) -> TestReport:
    """A host report carrying a guest phase report's outcome as this item's own."""
    longrepr = rec.get("longrepr")
    if isinstance(longrepr, list):
        longrepr = (str(longrepr[0]), int(longrepr[1]), str(longrepr[2]))
    extra = {"wasxfail": rec["wasxfail"]} if rec.get("wasxfail") is not None else {}
    now = time.time()
    return TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome=rec["outcome"],
        longrepr=longrepr,
        when=rec["when"],
        sections=[tuple(s) for s in rec.get("sections", [])],
        duration=float(rec.get("duration") or 0.0),
        start=now,
        stop=now,
        user_properties=[tuple(p) for p in rec.get("user_properties", [])],
        **extra,
    )


def failed_records(message: str) -> list[dict[str, Any]]:
    """Phase records of an item the guest never finished: one failed call with ``message``."""
    return [
        {"when": "setup", "outcome": "passed", "longrepr": None, "duration": 0.0},
        {"when": "call", "outcome": "failed", "longrepr": message, "duration": 0.0},
        {"when": "teardown", "outcome": "passed", "longrepr": None, "duration": 0.0},
    ]


def group_records(lines: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Results file lines -> nodeid -> phase records in order (bad lines are skipped)."""
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        out[rec["nodeid"]].append(rec)
    return dict(out)


def finished(records: list[dict[str, Any]]) -> bool:
    return any(r["when"] == "teardown" for r in records)


# ---------------------------------------------------------------- host side: the guest command


def guest_pytest_args(config: pytest.Config, nodeids_file: Path, results: Path) -> list[str]:
    """pytest arguments for the guest: the same node ids and the options that matter."""
    # -p no:hypothesispytest (and no:xdist for one process): importing those plugins costs
    # 15-30 s under TCG (tests that use hypothesis still import it themselves).
    # LVSCONF_GUEST_WORKERS=N runs the guest's pytest with xdist over its N vCPUs.
    workers = guest_workers()
    args = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
    args += ["-n", str(workers)] if workers > 1 else ["-p", "no:xdist"]
    args += [
        "-p",
        "harness.lanes.pytest_lane",
        "-v",
        "--kernel",
        "host",
        "--lvs-guest-results",
        str(results),
    ]
    inifile = config.inipath
    if inifile is not None:
        args += ["-c", str(inifile)]
    args += ["--rootdir", str(config.rootpath)]
    opt = config.option
    if getattr(opt, "markexpr", ""):
        args += ["-m", opt.markexpr]
    if getattr(opt, "keyword", ""):
        args += ["-k", opt.keyword]
    impl = config.getoption("--impl", default=None)
    if impl:
        args += ["--impl", impl]
    timeout = getattr(opt, "timeout", None)
    if timeout:
        args += ["--timeout", str(float(timeout) * float(SLOWDOWN))]
    args.append(f"@{nodeids_file}")
    return args


def guest_workers() -> int:
    raw = os.environ.get("LVSCONF_GUEST_WORKERS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise LaneError(f"LVSCONF_GUEST_WORKERS={raw!r} is not a positive integer; e.g. 2")
    return int(raw)


def guest_command(python: str, pytest_args: list[str]) -> str:
    """The guest's shell command: load ip_vs first (its sysctls exist only after), then pytest."""
    argv = " ".join(shlex.quote(a) for a in [python, "-m", "pytest", *pytest_args])
    return f"modprobe ip_vs; exec {argv}"


class GuestEcho:
    """Which guest output lines to echo: all but the guest's FAILURES/ERRORS sections (each
    host item prints its own failure text, the guest's, once)."""

    def __init__(self) -> None:
        self.hiding = False

    def show(self, line: str) -> bool:
        if line.startswith("=") and line.endswith("="):
            title = line.strip("= ")
            self.hiding = title in ("FAILURES", "ERRORS")
        return not self.hiding


# ---------------------------------------------------------------- host side: state and hooks


@dataclass
class LaneState:
    config: pytest.Config
    lane: Lane | None = None
    lane_error: str | None = None
    kernel_nodeids: list[str] = field(default_factory=list)
    results: dict[str, list[dict[str, Any]]] | None = None
    guest_error: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)

    def say(self, message: str) -> None:
        """A progress line on the terminal, even while output is captured."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with ctx:
            if tr is not None and not hasattr(self.config, "workerinput"):
                tr.write_line(f"[kernel lane] {message}")
            else:
                print(f"[kernel lane] {message}", file=sys.stderr, flush=True)


_STATE = pytest.StashKey[LaneState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    # Registered early only in the guest (``-p harness.lanes.pytest_lane``); on the host this
    # module is registered after parsing, where the option is not needed.
    with contextlib.suppress(ValueError):
        parser.getgroup("lvsconf").addoption(
            "--lvs-guest-results",
            default=None,
            metavar="PATH",
            help="(used inside a kernel-lane guest) write each test report as a JSON line to PATH",
        )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = LaneState(config)
    results = config.getoption("--lvs-guest-results", default=None)
    # under xdist in the guest only the controller records (workers' reports reach it)
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(GuestRecorder(Path(results)), "lvsconf-guest-recorder")


def _state(config: pytest.Config) -> LaneState:
    return config.stash[_STATE]


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    state.kernel_nodeids = [i.nodeid for i in items if i.get_closest_marker(KERNEL_MARK)]
    if not state.kernel_nodeids:
        return
    try:
        state.lane = provision.resolve_lane(config.getoption("--kernel", default=None))
        if state.lane.is_vm and state.lane.version is not None:
            provision.check_name(state.lane.version)  # unknown name: fail now, one line
    except LaneError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not state.lane.is_vm and not provision.host_has_ipvs():
        from harness.implementations.kernel import KernelLacksIPVS, ensure_ip_vs  # noqa: PLC0415

        try:
            ensure_ip_vs()
        except KernelLacksIPVS as exc:
            state.lane_error = f"KernelLacksIPVS: {exc}"


def pytest_report_header(config: pytest.Config) -> str | None:
    lane = config.getoption("--kernel", default=None)
    return f"lvsconf kernel lane: {lane or 'default (host if it has IPVS, else auto)'}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    state = _state(item.config)
    if state.lane_error and item.get_closest_marker(KERNEL_MARK):
        pytest.fail(state.lane_error, pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    state = _state(item.config)
    if state.lane is None or not state.lane.is_vm or not item.get_closest_marker(KERNEL_MARK):
        return None
    if state.results is None:
        _obtain_results(state)
    assert state.results is not None
    records = state.results.get(item.nodeid)
    if records is None or not finished(records):
        why = state.guest_error or "the guest did not finish this case (see guest output above)"
        records = failed_records(f"kernel lane ({state.lane.label()}): {why}")
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for rec in records:
        item.ihook.pytest_runtest_logreport(report=replay_report(item, rec))
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    # This item was never set up here, but the previous item left the collectors it shares
    # with it (package, module) set up; tear down what nextitem does not need, as pytest's own
    # runtestprotocol does, or the next local item finds a stale setup stack.
    item.session._setupstate.teardown_exact(nextitem)
    return True


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return
    # xdist controller: remove the shared guest directories of this run's workers
    for d in SHARED_DIR.glob(f"guest-{os.getpid()}-*"):
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- booting once per session


@contextlib.contextmanager
def _shared_dir(config: pytest.Config) -> Iterator[tuple[Path, bool]]:
    """(directory for this session's guest, whether to remove it afterwards), under a lock.

    Under xdist, every worker maps to ``/run/lvsconf/guest-<controller pid>-<testrunuid>``
    and holds its flock while booting or reading, so exactly one guest runs per session.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        d = Path(tempfile.mkdtemp(prefix="lvsconf-guest-"))
        yield d, True
        return
    d = SHARED_DIR / f"guest-{os.getppid()}-{workerinput['testrunuid']}"
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d, False
    finally:
        os.close(fd)


def _obtain_results(state: LaneState) -> None:
    with _shared_dir(state.config) as (d, temporary):
        done = d / "done.json"
        try:
            if not done.exists():
                _run_guest(state, d)
            summary = json.loads(done.read_text()) if done.exists() else {}
            state.guest_error = summary.get("error")
            results = d / "results.jsonl"
            lines = results.read_text().splitlines() if results.exists() else []
            state.results = group_records(lines)
        finally:
            if temporary:
                shutil.rmtree(d, ignore_errors=True)


def _run_guest(state: LaneState, d: Path) -> None:
    config, lane = state.config, state.lane
    assert lane is not None
    results = d / "results.jsonl"
    total = len(state.kernel_nodeids)
    (d / "nodeids.txt").write_text("\n".join(state.kernel_nodeids) + "\n")
    error: str | None = None
    t0 = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    seen = {"first_output": 0.0, "first_case": 0.0, "done": 0}
    echo = GuestEcho()

    def on_line(line: str) -> None:
        now = time.monotonic() - t0
        if not seen["first_output"]:
            seen["first_output"] = now
        tail.append(line)
        if echo.show(line):
            state.say(f"guest| {line}")
        if results.exists():
            n = sum(
                1 for r in group_records(results.read_text().splitlines()).values() if finished(r)
            )
            if n and not seen["first_case"]:
                seen["first_case"] = now
            if n != seen["done"]:
                seen["done"] = n
                state.say(f"{n}/{total} cases")

    try:
        tree = lane.provide(state.say)
        with vm.vm_lock(state.say):
            accel = vm.choose_accel(tree.image, state.say)
            state.say(f"booting {tree.release} ({accel}) for {total} kernel case(s) …")
            run = vm.GuestRun(
                image=tree.image,
                command=guest_command(
                    sys.executable, guest_pytest_args(config, d / "nodeids.txt", results)
                ),
                cwd=config.rootpath,
                rwdir=d,
                accel=accel,
                memory=os.environ.get("LVSCONF_GUEST_MEM", "1G"),
                env={
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "LVSCONF_SLOWDOWN": SLOWDOWN,
                    "LVSCONF_IN_GUEST": "1",
                },
                timeout=float(os.environ.get("LVSCONF_GUEST_TIMEOUT", 300 + 60 * total)),
            )
            res = vm.run_guest(run, on_line)
        state.measurements.update(
            guest_seconds=res.seconds,
            first_output=seen["first_output"],
            first_case=seen["first_case"],
        )
        state.say(
            f"guest exited with status {res.rc} after {res.seconds:.1f} s "
            f"(first output {seen['first_output']:.1f} s, first case "
            f"{seen['first_case']:.1f} s)"
        )
        if res.rc == 255 or not results.exists():
            error = (
                f"guest lost (vng status {res.rc}: kernel panic, or the guest died before "
                "writing results); console tail:\n"
                + res.console_tail
                + "\n--- guest output tail:\n"
                + "\n".join(tail)
            )
        elif res.rc not in (0, 1):
            error = f"guest pytest exited with status {res.rc}; guest output tail:\n" + "\n".join(
                tail
            )
    except vm.GuestError as exc:
        error = f"{exc}; console tail:\n{exc.console_tail}"
    except LaneError as exc:
        error = str(exc)
    (d / "done.json").write_text(json.dumps({"error": error}))
