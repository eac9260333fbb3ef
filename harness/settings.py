"""Every ``LVSCONF_*`` environment variable in one place: read once, validated, frozen.

``current()`` reads the environment the first time it is called and returns the same
:class:`Settings` afterwards (``current.cache_clear()`` re-reads it, for tests). A bad value is a
:class:`SettingsError` whose message is one line naming the variable, the value and the fix.

========================  =================================================================
variable                  meaning (default)
========================  =================================================================
LVSCONF_STATE_DIR         owner records, scratch files, locks (``/run/lvsconf``)
LVSCONF_CACHE             kernel packages, accelerator verdict (``~/.cache/lvsconf``)
LVSCONF_ACCEL             ``kvm`` or ``tcg``: skip the KVM trial boot (unset: try KVM)
LVSCONF_GUEST_MEM         guest memory, a number with an optional K/M/G suffix (``2G``)
LVSCONF_GUEST_TIMEOUT     seconds for a whole guest run (unset: 300 + 60 per case)
LVSCONF_GUEST_WORKERS     xdist workers inside the guest (``4``)
LVSCONF_GUEST_PYTHON      ``memory``: the guest imports from a tmpfs copy; ``share``: over 9p
                          as virtme-ng shares it (``memory``; harness/lanes/guest_python.py)
LVSCONF_DATAPATH_START    ``fork``: the reference datapath is forked from a pre-imported
                          server; ``exec``: a fresh interpreter per case (``fork``)
LVSCONF_SLOWDOWN          scales traffic bounds, >= 1 (``1``; the VM lane sets 20)
LVSCONF_IN_GUEST          set by the VM lane inside the guest (unset)
LVSCONF_KERNEL            default kernel lane of ``ci/test`` and ``lvsconf kernel`` (``auto``)
LVSCONF_DEBIAN_MIRROR     Debian mirror for kernel packages (unset: the host's apt sources)
LVSCONF_DEBIAN_SECURITY_MIRROR  the same for the security suites
LVSCONF_APT_MAX_AGE       seconds before the private apt lists are refreshed (lanes' default)
LVSCONF_REQUIRE_CASES     an empty case selection is an error (set by ``lvsconf run``)
LVSCONF_PROGRESS          one progress line per case (set by ``lvsconf run``)
========================  =================================================================

Outside Python: ``LVSCONF_REPORT`` (report directory of ``ci/test``), ``LVSCONF_PYTHON``
(interpreter for ``ci/bootstrap``'s virtualenv), ``LVSCONF_HYPOTHESIS`` (``dev`` | ``ci``:
Hypothesis profile of the project's own tests). ``LVSCONF_CLIENT_IF``, ``LVSCONF_SEGMENT_IF``,
``LVSCONF_SCRATCH``, ... are the other direction: the harness sets them for an ``exec``
implementation under test (see harness/implementations/exec.py).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "LVSCONF_"
_MEMORY_RE = re.compile(r"[1-9][0-9]*[KMGT]?")
_ACCELS = ("kvm", "tcg")
_GUEST_PYTHON = ("memory", "share")
_DATAPATH_START = ("fork", "exec")
#: four guest workers overlap the cases' timer waits; they and the guest Python in memory
#: (~170 MB of tmpfs) need more than 1G (docs/architecture.md §6, items 8 and 10)
GUEST_WORKERS = 4
GUEST_MEMORY = "2G"


class SettingsError(ValueError):
    """An ``LVSCONF_*`` variable has a value lvsconf cannot use; the message is one line."""


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path
    cache_dir: Path
    accel: str | None
    guest_mem: str
    guest_timeout: float | None
    guest_workers: int
    guest_python: str
    datapath_start: str
    slowdown: float
    in_guest: bool
    kernel: str
    require_cases: bool
    progress: bool
    debian_mirror: str | None
    debian_security_mirror: str | None
    apt_max_age: float | None

    @property
    def owners_dir(self) -> Path:
        return self.state_dir / "owners"

    @property
    def scratch_dir(self) -> Path:
        return self.state_dir / "scratch"


def _bad(name: str, raw: str, fix: str) -> SettingsError:
    shown = raw if len(raw) <= 60 else raw[:57] + "..."
    return SettingsError(f"{PREFIX}{name}={shown!r} {fix}")


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(PREFIX + name, "")
    if not raw:
        return default
    if not raw.startswith("/") or "\n" in raw or "\0" in raw:
        raise _bad(name, raw, f"must be an absolute path on one line; e.g. {default}")
    return Path(raw)


def _number(env: Mapping[str, str], name: str, lowest: float, example: str) -> float | None:
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad(name, raw, f"is not a number; e.g. {PREFIX}{name}={example}") from None
    if not lowest <= value < float("inf"):
        raise _bad(name, raw, f"must be a finite number >= {lowest:g}; e.g. {example}")
    return value


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"https?://[^\s'\"$`\\]+", raw):
        raise _bad(name, raw, "is not an http(s) URL; e.g. http://deb.debian.org/debian")
    return raw


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(PREFIX + name, "") not in ("", "0")


def from_environ(env: Mapping[str, str]) -> Settings:
    """Settings from ``env`` (validated; raises :class:`SettingsError` naming the variable)."""
    accel = env.get(PREFIX + "ACCEL", "").strip().lower() or None
    if accel is not None and accel not in _ACCELS:
        raise _bad("ACCEL", env[PREFIX + "ACCEL"], "is not valid; use kvm or tcg")
    memory = env.get(PREFIX + "GUEST_MEM", "").strip() or GUEST_MEMORY
    if not _MEMORY_RE.fullmatch(memory):
        raise _bad("GUEST_MEM", memory, "is not a memory size; e.g. 1G or 1536M")
    workers_raw = env.get(PREFIX + "GUEST_WORKERS", "").strip() or str(GUEST_WORKERS)
    if not workers_raw.isdigit() or not 1 <= int(workers_raw) <= 256:
        raise _bad("GUEST_WORKERS", workers_raw, "is not a positive integer; e.g. 2")
    guest_python = env.get(PREFIX + "GUEST_PYTHON", "").strip().lower() or "memory"
    if guest_python not in _GUEST_PYTHON:
        raise _bad("GUEST_PYTHON", guest_python, "is not valid; use memory or share")
    datapath_start = env.get(PREFIX + "DATAPATH_START", "").strip().lower() or "fork"
    if datapath_start not in _DATAPATH_START:
        raise _bad("DATAPATH_START", datapath_start, "is not valid; use fork or exec")
    home_cache = Path(os.path.expanduser("~")) / ".cache" / "lvsconf"
    return Settings(
        state_dir=_path(env, "STATE_DIR", Path("/run/lvsconf")),
        cache_dir=_path(env, "CACHE", home_cache),
        accel=accel,
        guest_mem=memory,
        guest_timeout=_number(env, "GUEST_TIMEOUT", 1, "1800"),
        guest_workers=int(workers_raw),
        guest_python=guest_python,
        datapath_start=datapath_start,
        slowdown=_number(env, "SLOWDOWN", 1, "20") or 1.0,
        in_guest=_flag(env, "IN_GUEST"),
        kernel=env.get(PREFIX + "KERNEL", "").strip() or "auto",
        require_cases=_flag(env, "REQUIRE_CASES"),
        progress=_flag(env, "PROGRESS"),
        debian_mirror=_url(env, "DEBIAN_MIRROR"),
        debian_security_mirror=_url(env, "DEBIAN_SECURITY_MIRROR"),
        apt_max_age=_number(env, "APT_MAX_AGE", 0, "86400"),
    )


@functools.cache
def current() -> Settings:
    """The process's settings, read from ``os.environ`` on first use."""
    return from_environ(os.environ)
