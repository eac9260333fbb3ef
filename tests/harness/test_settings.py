"""harness.settings: every LVSCONF_* variable read in one place, a bad one is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import settings


def test_defaults() -> None:
    s = settings.from_environ({"HOME": "/home/x"})
    assert s.state_dir == Path("/run/lvsconf") and s.owners_dir == Path("/run/lvsconf/owners")
    assert (s.accel, s.guest_mem, s.guest_timeout, s.guest_workers) == (None, "2G", None, 4)
    assert (s.slowdown, s.in_guest, s.kernel) == (1.0, False, "auto")
    assert not s.require_cases and not s.progress
    assert (s.debian_mirror, s.debian_security_mirror, s.apt_max_age) == (None, None, None)


def test_values() -> None:
    s = settings.from_environ(
        {
            "LVSCONF_STATE_DIR": "/tmp/st",
            "LVSCONF_CACHE": "/tmp/c",
            "LVSCONF_ACCEL": "KVM",
            "LVSCONF_GUEST_MEM": "1536M",
            "LVSCONF_GUEST_TIMEOUT": "900",
            "LVSCONF_GUEST_WORKERS": "2",
            "LVSCONF_SLOWDOWN": "20",
            "LVSCONF_IN_GUEST": "1",
            "LVSCONF_KERNEL": "6.1.0-56-amd64",
            "LVSCONF_PROGRESS": "1",
        }
    )
    assert (s.state_dir, s.cache_dir, s.accel, s.guest_mem) == (
        Path("/tmp/st"),
        Path("/tmp/c"),
        "kvm",
        "1536M",
    )
    assert (s.guest_timeout, s.guest_workers, s.slowdown) == (900.0, 2, 20.0)
    assert s.in_guest and s.progress and s.kernel == "6.1.0-56-amd64"


@pytest.mark.parametrize(
    ("name", "value", "fix"),
    [
        ("STATE_DIR", "relative/dir", "must be an absolute path"),
        ("CACHE", "/a\nb", "must be an absolute path on one line"),
        ("ACCEL", "xen", "use kvm or tcg"),
        ("GUEST_MEM", "lots", "e.g. 1G"),
        ("GUEST_TIMEOUT", "1e999", "finite number >= 1"),
        ("GUEST_WORKERS", "two", "positive integer"),
        ("GUEST_PYTHON", "ramdisk", "use memory or share"),
        ("DATAPATH_START", "vfork", "use fork or exec"),
        ("SLOWDOWN", "0.5", ">= 1"),
        ("SLOWDOWN", "fast" * 100, "is not a number"),
        ("DEBIAN_MIRROR", "http://x/$(touch y)", "is not an http(s) URL"),
        ("APT_MAX_AGE", "-1", ">= 0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str, fix: str) -> None:
    with pytest.raises(settings.SettingsError) as err:
        settings.from_environ({f"LVSCONF_{name}": value})
    message = str(err.value)
    assert message.startswith(f"LVSCONF_{name}=") and fix in message
    assert "\n" not in message and len(message) < 200


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lvsconf.cli", "sweep"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LVSCONF_STATE_DIR": "state", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "lvsconf: LVSCONF_STATE_DIR='state' must be an absolute path on one line; e.g. /run/lvsconf"
    ]
    assert not (tmp_path / "state").exists()
