"""Kernel lanes without a VM: lane resolution, provisioning, command lines, result merging."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.lanes import guest_records, guest_workers, provision, pytest_lane, vm
from harness.lanes.provision import LaneError

pytest_plugins = ["pytester"]


def test_lane_resolution() -> None:
    assert provision.resolve_lane(None, lambda: True).kind == "host"
    default = provision.resolve_lane(None, lambda: False)
    assert (default.kind, default.version) == ("vm", "auto")
    assert provision.resolve_lane("host", lambda: False).kind == "host"
    named = provision.resolve_lane("6.1.0-56-amd64", lambda: False)
    assert (named.kind, named.version, named.label()) == ("vm", "6.1.0-56-amd64", "6.1.0-56-amd64")
    assert provision.resolve_lane("sid", lambda: True).version == "sid"  # resolved when fetched
    for bad in ("a b", "$(touch x)", "-x"):
        with pytest.raises(LaneError, match="expected host, auto, a Debian suite"):
            provision.resolve_lane(bad, lambda: True)
    with pytest.raises(LaneError, match="does not exist"):
        provision.resolve_lane("/nonexistent/vmlinuz-1", lambda: True)


def _fake_tree(root: Path, release: str, modules: Sequence[str]) -> Path:
    image = root / "boot" / f"vmlinuz-{release}"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\0")
    moddir = root / "lib" / "modules" / release / "kernel"
    for mod in modules:
        (moddir / f"{mod}.ko.xz").parent.mkdir(parents=True, exist_ok=True)
        (moddir / f"{mod}.ko.xz").write_bytes(b"")
    return image


def test_image_path_finds_modules_like_vng_and_checks_them(tmp_path: Path) -> None:
    image = _fake_tree(tmp_path / "k", "6.9.9-test", provision.REQUIRED_MODULES)
    lane = provision.resolve_lane(str(image), lambda: False)
    assert lane.tree is not None and lane.tree.release == "6.9.9-test"
    assert lane.tree.root == tmp_path / "k"
    partial = _fake_tree(
        tmp_path / "p", "6.9.9-cloud", [m for m in provision.REQUIRED_MODULES if "9p" not in m]
    )
    with pytest.raises(LaneError, match=r"lacks modules 9p, 9pnet_virtio.*-cloud has no 9p"):
        provision.resolve_lane(str(partial), lambda: False)


# ---------------------------------------------------------------- command lines


def test_vng_command_line_carries_the_measured_fixes(tmp_path: Path) -> None:
    run = vm.GuestRun(
        image=tmp_path / "vmlinuz-x",
        command="pytest -q",
        cwd=Path("/work/main"),
        rwdir=tmp_path,
        env={"LVSCONF_SLOWDOWN": "20", "X": "a b"},
    )
    argv = vm.vng_argv(run, Path("/venv/bin/vng"), Path("/shim"))
    assert argv[:3] == ["/venv/bin/vng", "--run", str(tmp_path / "vmlinuz-x")]
    assert "--disable-kvm" in argv and "--force-9p" in argv
    assert argv[argv.index("--rwdir") + 1] == str(tmp_path)
    # the PATH keeps the standard directories after the shim (else: panic, no init=)
    assert argv[argv.index("-a") + 1] == "PATH=/shim:/usr/sbin:/usr/bin:/sbin:/bin"
    # the script is a file in the guest's directory: vng would put it on the kernel command
    # line, which is cut at 2,048 bytes
    assert argv[argv.index("--exec") + 1] == f"exec sh {tmp_path / vm.SCRIPT_NAME}"
    script = vm.guest_script(run)
    assert script == "exec 2>&1; cd /work/main && export LVSCONF_SLOWDOWN=20 X='a b'; pytest -q"
    kvm = vm.vng_argv(
        vm.GuestRun(run.image, run.command, run.cwd, run.rwdir, run.env, accel="kvm"),
        Path("/v/vng"),
        Path("/s"),
    )
    assert "--disable-kvm" not in kvm
    assert vm.host_env(Path("/venv/bin/vng"))["PATH"].startswith("/venv/bin:")


def test_shim_is_busybox_only_and_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LVSCONF_CACHE", str(tmp_path))
    d = vm.shim_dir()
    udevd = (d / "udevd").read_text()
    assert udevd.startswith("#!/bin/busybox sh") and "/dev/virtio-ports" in udevd
    assert (d / "udevd").stat().st_mode & 0o111 and (d / "udevadm").stat().st_mode & 0o111


def test_accel_override_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVSCONF_CACHE", str(tmp_path))
    monkeypatch.setenv("LVSCONF_ACCEL", "kvm")
    assert vm.choose_accel(tmp_path / "img") == "kvm"
    monkeypatch.setenv("LVSCONF_ACCEL", "xen")
    with pytest.raises(LaneError, match="use kvm or tcg"):
        vm.choose_accel(tmp_path / "img")
    monkeypatch.delenv("LVSCONF_ACCEL")
    import platform

    (tmp_path / "accel.json").write_text(json.dumps({platform.release(): "tcg"}))
    monkeypatch.setattr(vm, "_kvm_boots", lambda _img: pytest.fail("cached: no trial boot"))
    if vm.os.access("/dev/kvm", vm.os.R_OK | vm.os.W_OK):
        assert vm.choose_accel(tmp_path / "img") == "tcg"


def test_vm_lock_is_exclusive_and_says_it_waits(tmp_path: Path) -> None:
    lock = tmp_path / "vm.lock"
    said: list[str] = []
    with vm.vm_lock(said.append, lock):
        import fcntl
        import os

        fd = os.open(lock, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        assert lock.read_text().strip() == str(os.getpid())
    assert said == []


def test_guest_pytest_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = SimpleNamespace(markexpr="kernel", keyword="fwmark", timeout=30)
    config = SimpleNamespace(
        option=opts,
        inipath=Path("/work/main/pyproject.toml"),
        rootpath=Path("/work/main"),
        getoption=lambda name, default=None: {"--impl": "kernel"}.get(name, default),
    )
    args = pytest_lane.guest_pytest_args(config, tmp_path / "ids", tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert args[args.index("--kernel") + 1] == "host"
    assert args[args.index("--lvs-guest-results") + 1] == str(tmp_path / "r.jsonl")
    assert "-m" not in args and "-k" not in args  # the node ids are exact (lane ids differ)
    assert args[args.index("--impl") + 1] == "kernel"
    assert args[args.index("--timeout") + 1] == "600.0"
    assert "no:cacheprovider" in args and args[-1] == f"@{tmp_path / 'ids'}"
    # four workers by default, each started through the zygote's stub, spread by worksteal;
    # one worker: no xdist at all
    stub = f"{sys.executable} -S {guest_workers.STUB}"
    assert args[args.index("--tx") + 1] == f"4*popen//python={stub}" and "no:xdist" not in args
    assert args[args.index("--dist") + 1] == "worksteal"
    monkeypatch.setenv("LVSCONF_GUEST_WORKERS", "1")
    args = pytest_lane.guest_pytest_args(config, tmp_path / "ids", tmp_path / "r.jsonl")  # type: ignore[arg-type]
    assert "no:xdist" in args and "--tx" not in args and "-n" not in args
    monkeypatch.setenv("LVSCONF_GUEST_WORKERS", "two")
    with pytest.raises(LaneError, match="not a positive integer"):
        pytest_lane.guest_pytest_args(config, tmp_path / "ids", tmp_path / "r.jsonl")  # type: ignore[arg-type]
    cmd = pytest_lane.guest_command("/v/bin/python", ["-k", "a b"])
    assert cmd == (
        "modprobe -q -a ip_vs veth bridge ipip ip6_tunnel sctp nf_tables tun; "
        "exec /v/bin/python -m pytest -k 'a b'"
    )
    # with workers: the zygote starts in the background first, its socket in the environment
    cmd = pytest_lane.guest_command("/v/bin/python", ["--tx", "2*popen"])
    zygote = f"{{ /v/bin/python -P {guest_workers.__file__} /run/lvsconf-zygote.sock & }}"
    assert "; export LVSCONF_GUEST_ZYGOTE=/run/lvsconf-zygote.sock; " + zygote + "; exec " in cmd


# ---------------------------------------------------------------- result merging


def _lines(*recs: dict[str, object]) -> list[str]:
    return [json.dumps(r) for r in recs]


def test_group_records_tolerates_a_line_cut_by_a_crash() -> None:
    lines = _lines(
        {"nodeid": "a", "when": "setup", "outcome": "passed"},
        {"nodeid": "a", "when": "call", "outcome": "passed"},
        {"nodeid": "a", "when": "teardown", "outcome": "passed"},
        {"nodeid": "b", "when": "setup", "outcome": "passed"},
    ) + ['{"nodeid": "b", "wh']
    groups = guest_records.group_records(lines)
    assert guest_records.finished(groups["a"]) and not guest_records.finished(groups["b"])


GUEST_SUITE = """
import pytest

def test_pass(record_property):
    record_property("templates", 3)

def test_fail():
    assert 1 == 2, "guest says no"

def test_skip():
    pytest.skip("needs twos")

@pytest.mark.xfail(strict=True, reason="known divergence")
def test_xfail():
    assert False

@pytest.mark.xfail(strict=True, reason="fixed now")
def test_xpass_strict():
    pass
"""


def test_guest_reports_replay_as_the_host_items_own(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Run a suite with the recorder (as the guest does), then replay its records on fresh
    items (as the host does): outcomes, reasons, xfail semantics and properties survive."""
    pytester.makepyfile(test_guest=GUEST_SUITE)
    results = tmp_path / "results.jsonl"
    guest = pytester.runpytest_inprocess(
        "-p", "harness.lanes.pytest_lane", "--lvs-guest-results", str(results), "--kernel", "host"
    )
    guest.assert_outcomes(passed=1, failed=2, skipped=1, xfailed=1)
    groups = guest_records.group_records(results.read_text().splitlines())
    assert len(groups) == 5 and all(guest_records.finished(g) for g in groups.values())

    items, _ = pytester.inline_genitems()
    replayed = {}
    for item in items:
        reports = [guest_records.replay_report(item, r) for r in groups[item.nodeid]]
        replayed[item.name] = reports
    call = {
        name: next(r for r in reps if r.when == "call")
        for name, reps in replayed.items()
        if any(r.when == "call" for r in reps)
    }
    assert call["test_pass"].passed and ("templates", 3) in call["test_pass"].user_properties
    assert call["test_fail"].failed and "guest says no" in call["test_fail"].longreprtext
    assert call["test_xfail"].skipped and call["test_xfail"].wasxfail == "known divergence"
    xpass = call["test_xpass_strict"]
    assert xpass.failed and "XPASS(strict)" in xpass.longreprtext
    skip = next(r for r in replayed["test_skip"] if r.skipped)
    assert isinstance(skip.longrepr, tuple) and skip.longrepr[2] == "Skipped: needs twos"


def test_guest_echo_hides_the_guests_failure_sections() -> None:
    echo = pytest_lane.GuestEcho()
    lines = [
        "t.py::a FAILED [50%]",
        "===== FAILURES =====",
        "___ a ___",
        "E assert 1 == 2",
        "===== short test summary info =====",
        "FAILED t.py::a",
        "===== 1 failed =====",
    ]
    shown = [ln for ln in lines if echo.show(ln)]
    assert shown == [
        "t.py::a FAILED [50%]",
        "===== short test summary info =====",
        "FAILED t.py::a",
        "===== 1 failed =====",
    ]


KERNEL_CASE = """
import pytest

@pytest.mark.kernel
def test_needs_ipvs():
    pass
"""


@pytest.mark.skipif(provision.host_has_ipvs(), reason="this host kernel has IPVS")
def test_host_lane_without_ipvs_fails_each_kernel_case_with_one_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_k=KERNEL_CASE)
    result = pytester.runpytest_subprocess("--kernel", "host", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    lines = [ln for ln in result.outlines if "KernelLacksIPVS" in ln]
    assert lines and lines[0].startswith(
        "KernelLacksIPVS: this kernel has no ip_vs (modprobe ip_vs:"
    )
    assert lines[0].endswith("run with --kernel auto to boot a Debian kernel in a VM")
    assert "Traceback" not in result.stdout.str()


def test_unknown_kernel_version_is_a_usage_error_with_one_line(
    pytester: pytest.Pytester, fake_apt: Path
) -> None:
    pytester.makepyfile(test_k=KERNEL_CASE)
    result = pytester.runpytest_subprocess("--kernel", "6.1.0-999-amd64", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = [ln for ln in result.errlines if "6.1.0-999-amd64" in ln]
    assert len(err) == 1 and "unknown kernel 6.1.0-999-amd64" in err[0], result.errlines
    assert "lvsconf kernel list" in err[0]


def test_no_kernel_items_means_no_lane_work(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--kernel", "6.1.0-999-amd64", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# ---------------------------------------------------------------- running a guest (fake vng)

FAKE_VNG = """#!/bin/sh
# stands in for vng: guest output on stdout, kernel console on stderr, then a status
echo "guest line 1"
echo "[    1.0] kernel: console line" >&2
echo "guest line 2"
case "$LVSCONF_FAKE" in
  panic) echo "[    2.0] Kernel panic - not syncing" >&2; exit 255 ;;
  hang) sleep 600 & echo $! > "$LVSCONF_FAKE_PIDS"; wait ;;
  *) exit 3 ;;
esac
"""


@pytest.fixture
def fake_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Name: fake_vng. Scope: function. A shell script standing in for vng, found by run_guest."""
    exe = tmp_path / "vng"
    exe.write_text(FAKE_VNG)
    exe.chmod(0o755)
    monkeypatch.setattr(vm, "vng_bin", lambda: exe)
    monkeypatch.setenv("LVSCONF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(vm, "_record_owner", lambda _pid: lambda: None)
    return exe


def _guest(tmp_path: Path, timeout: float = 30.0) -> vm.GuestRun:
    return vm.GuestRun(
        image=tmp_path / "img", command="true", cwd=tmp_path, rwdir=tmp_path / "rw", timeout=timeout
    )


def test_run_guest_streams_stdout_keeps_console_apart_and_returns_status(
    fake_vng: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    res = vm.run_guest(_guest(tmp_path), lines.append)
    assert res.rc == 3
    assert lines == ["guest line 1", "guest line 2"]
    assert "console line" in res.console_tail


def test_run_guest_panic_keeps_the_console_tail(
    fake_vng: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LVSCONF_FAKE", "panic")
    res = vm.run_guest(_guest(tmp_path), lambda _l: None)
    assert res.rc == 255 and "Kernel panic" in res.console_tail


def test_run_guest_timeout_kills_the_whole_process_group(
    fake_vng: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setenv("LVSCONF_FAKE", "hang")
    monkeypatch.setenv("LVSCONF_FAKE_PIDS", str(pids))
    with pytest.raises(vm.GuestError, match="did not finish within 2 s") as err:
        vm.run_guest(_guest(tmp_path, timeout=2.0), lambda _l: None)
    assert "console line" in err.value.console_tail
    child = int(pids.read_text())
    # the grandchild (stand-in for qemu) was in the group and is gone
    deadline = vm.time.monotonic() + 5
    while vm.time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        status = Path(f"/proc/{child}/stat").read_text().split()[2]
        if status == "Z":
            break
        vm.time.sleep(0.05)
    assert (
        not Path(f"/proc/{child}").exists()
        or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    )


def test_cli_kernel_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], fake_apt: Path
) -> None:
    from lvsconf.cli import main

    assert main(["kernel", "fetch", "6.1.0-999-amd64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lvsconf kernel: unknown kernel 6.1.0-999-amd64")
    assert main(["kernel", "boot", "--kernel", "host"]) == 2
    assert "runs no VM" in capsys.readouterr().err


FAKE_VM_LANE_CONFTEST = """
import pytest
from harness.lanes import pytest_lane

class FakeVMLane:
    is_vm = True
    version = None
    def label(self):
        return "fake-vm"

@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    state = pytest_lane._state(session.config)
    for run in state.lanes:
        run.lane = FakeVMLane()
        run.error = None
        # the guest ran but "lost" these cases: each is replayed as a failure
        run.results = {"t.py::another": []}
"""


def test_replayed_items_leave_the_setup_stack_as_pytest_would(
    pytester: pytest.Pytester, fake_apt: Path
) -> None:
    """A local item sharing a module with a replayed kernel item, then a local item elsewhere:
    the module set up for the first must be torn down after the replay (regression: the third
    item errored with 'previous item was not torn down properly')."""
    pytester.makeconftest(FAKE_VM_LANE_CONFTEST)
    pkg = pytester.mkpydir("b")
    (pkg / "test_mixed.py").write_text(
        "import pytest\n"
        "torn = []\n"
        "@pytest.fixture(scope='module')\n"
        "def shared():\n"
        "    yield 1\n"
        "    torn.append(1)\n"
        "def test_local(shared):\n"
        "    assert shared == 1\n"
        "@pytest.mark.kernel\n"
        "def test_in_guest():\n"
        "    pass\n"
    )
    pytester.makepyfile(test_z_after="def test_after():\n    pass\n")
    result = pytester.runpytest_inprocess(
        "-p", "harness.lanes.pytest_lane", "-p", "no:lvsconf", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2, failed=1, errors=0)
