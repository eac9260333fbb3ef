"""Kernel release parsing: the stable level decides lc/wlc overheads and overload rules."""

from __future__ import annotations

import pytest

from impl.kernel_level import parse_release

PROC_VERSION_6_1 = (
    "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
    "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
    "PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-10-01)"
)


def test_proc_version_names_the_kernel_not_the_compiler() -> None:
    level = parse_release(PROC_VERSION_6_1)
    assert (level.major, level.minor, level.patch) == (6, 1, 192)
    assert level.totalconns


@pytest.mark.parametrize(
    ("text", "expected", "totalconns"),
    [
        ("6.1.176", (6, 1, 176), False),
        ("6.1.183", (6, 1, 183), True),
        ("6.12.103", (6, 12, 103), False),
        ("6.12.117", (6, 12, 117), True),
        ("#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)", (6, 1, 158), False),
        ("6.1.0-56-amd64", (6, 1, None), True),  # ABI string: level unknown, newest assumed
    ],
)
def test_stable_levels(text: str, expected: tuple[int, int, int | None], totalconns: bool) -> None:
    level = parse_release(text)
    assert (level.major, level.minor, level.patch) == expected
    assert level.totalconns is totalconns
    assert level.exact is (expected[2] is not None)


def test_proc_version_without_debian_level_falls_back_to_uname() -> None:
    level = parse_release("Linux version 6.18.44-fc-v669 (root@build) (gcc 12) #1 SMP")
    assert (level.major, level.minor, level.patch) == (6, 18, 44)


def test_garbage_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="not a kernel release"):
        parse_release("banana")
