"""vng (1.42) runs its virtme-run line with ``shell=True`` and the kernel image, ``--rwdir`` and
memory unquoted: paths with a space or ``$(…)`` (from ``LVSCONF_CACHE`` or ``TMPDIR``) must
never reach it. Checked with the real vng in ``--dry-run`` mode (it still builds and runs the
shell line, so an injection would run; QEMU is not started). Also: the VM lock lives in the
state directory of harness.runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from harness import runs
from harness.lanes import provision, vm
from harness.lanes.errors import LaneError

REAL_VNG = Path(sys.executable).parent / "vng"
pytestmark = pytest.mark.skipif(not REAL_VNG.exists(), reason="needs virtme-ng (vng) in the venv")

RELEASE = "9.9.9-test"


def _tree(root: Path) -> Path:
    image = root / "boot" / f"vmlinuz-{RELEASE}"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\0")
    for mod in provision.REQUIRED_MODULES:
        ko = root / "lib" / "modules" / RELEASE / "kernel" / f"{mod}.ko"
        ko.parent.mkdir(parents=True, exist_ok=True)
        ko.write_bytes(b"")
    return image


@pytest.fixture
def dry_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real vng, always with --dry-run; cwd = tmp_path, where ``$(touch marker)`` would
    land; no VM lock; TCG without a trial boot."""
    wrapper = tmp_path / "bin" / "vng"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nPATH={REAL_VNG.parent}:$PATH exec {REAL_VNG} "$@" --dry-run\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(vm, "vng_bin", lambda: wrapper)
    # dry runs boot nothing: no need to queue behind another run's guest
    monkeypatch.setattr(vm, "vm_lock", lambda *_a, **_k: contextlib.nullcontext())
    monkeypatch.setenv("LVSCONF_ACCEL", "tcg")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _markers(root: Path) -> list[Path]:
    return [p for p in root.rglob("marker*") if p.is_file()]


def test_cache_with_space_and_command_substitution_is_refused(
    dry_vng: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lvsconf.cli import main

    cache = dry_vng / "my cache $(touch marker1)"
    monkeypatch.setenv("LVSCONF_CACHE", str(cache))
    image = _tree(cache / "kernels" / RELEASE)
    assert main(["kernel", "boot", "--kernel", str(image), "--", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would hand to a shell unquoted" in err[0], err
    assert "LVSCONF_CACHE" in err[0]
    assert _markers(dry_vng) == []  # nothing ran


def test_tmpdir_with_space_and_command_substitution_never_reaches_vng(
    dry_vng: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lvsconf.cli import main

    monkeypatch.setenv("LVSCONF_CACHE", str(dry_vng / "cache"))
    tmpdir = dry_vng / "tmp dir $(touch marker2)"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    image = _tree(dry_vng / "k")
    try:
        rc = main(["kernel", "boot", "--kernel", str(image), "--", "true"])
    finally:
        tempfile.tempdir = None
    out = capsys.readouterr()
    assert _markers(dry_vng) == [], out.err
    assert rc == 0, out.err
    assert "vmlinuz-9.9.9-test" in out.out  # vng printed the QEMU line with the whole path
    assert not list(tmpdir.iterdir())  # the guest's directory was made elsewhere


def test_unsafe_values_are_named_in_one_line(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    ok = vm.GuestRun(tmp_path / "vmlinuz", "true", tmp_path, tmp_path)
    vm.check_shell_safe(ok, shim)
    for run, says in (
        (vm.GuestRun(tmp_path / "a b" / "vmlinuz", "true", tmp_path, tmp_path), "kernel image"),
        (vm.GuestRun(tmp_path / "vmlinuz", "true", tmp_path, tmp_path / "x=y"), "guest directory"),
        (vm.GuestRun(tmp_path / "vmlinuz", "true", tmp_path, tmp_path, memory="1G; id"), "memory"),
    ):
        with pytest.raises(LaneError) as err:
            vm.check_shell_safe(run, shim)
        assert says in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LaneError, match="guest shim directory"):
        vm.check_shell_safe(ok, tmp_path / "$(id)")


def test_vm_lock_follows_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "STATE_DIR", tmp_path / "elsewhere")
    assert vm.lock_path() == tmp_path / "elsewhere" / "vm.lock"
    with vm.vm_lock():
        assert (tmp_path / "elsewhere" / "vm.lock").read_text().strip() == str(os.getpid())


def test_scratch_dirs_avoid_an_unsafe_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsafe = tmp_path / "a b"
    unsafe.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(unsafe))
    d = vm.scratch_dir("lvsconf-test-")
    try:
        assert d.parent == Path("/tmp") and oct(d.stat().st_mode & 0o777) == "0o700"
    finally:
        shutil.rmtree(d)


WATCHED_CHILD = """
import os, subprocess, sys
from harness.lanes import vm
fake_vm = subprocess.Popen(["sleep", "300"], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
vm._watch_for_our_death(fake_vm.pid)
print(fake_vm.pid, flush=True)
os._exit(0)  # dies without any teardown, as a worker killed with its controller
"""


def test_a_vm_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """Regression: SIGTERM to ci/test's xdist controller killed the worker running the guest
    before its teardown, and QEMU ran on until the next sweep."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", WATCHED_CHILD], capture_output=True, text=True, timeout=60
    )
    pid = int(out.stdout.split()[0])
    start = runs.proc_start_time(pid)  # None: already killed (or a zombie: dead too)
    survivors = [] if start is None else runs.wait_gone([runs.ChildRecord(pid, start)], 10)
    for survivor in survivors:
        os.kill(survivor, 9)
    assert survivors == [], "the fake VM outlived the process that started it"


def test_a_sweep_inside_the_guest_leaves_the_lanes_directory_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the guest's own session-start sweep saw the lane's directory (mounted at the
    same path, named after a host pid the guest's /proc does not have) and emptied it while
    the lane ran: a second guest booted for the same cases."""
    from harness import settings

    monkeypatch.setattr(runs, "STATE_DIR", tmp_path)
    monkeypatch.setattr(runs, "OWNERS_DIR", tmp_path / "owners")
    lane_dir = tmp_path / "guest-999999999-abc-0"
    lane_dir.mkdir()
    monkeypatch.setenv("LVSCONF_IN_GUEST", "1")
    settings.current.cache_clear()
    try:
        assert runs.sweep().removed_dirs == [] and lane_dir.exists()
    finally:
        monkeypatch.delenv("LVSCONF_IN_GUEST")
        settings.current.cache_clear()
    assert runs.sweep().removed_dirs == [lane_dir.name]
