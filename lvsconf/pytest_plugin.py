"""The lvsconf pytest plugin (registered through the ``pytest11`` entry point).

Declares the options and registers the parts, each in its own module:

- :mod:`harness.fixtures` — run prefix, sweep at session start, ``topology``/``net`` fixtures;
- :mod:`harness.lanes.pytest_lane` — kernel lanes (``--kernel``), VM runs, guest results;
- :mod:`conformance.runner.plugin` — implementations (``--impl``), cases, verdicts, reports;
- :mod:`conformance.runner.scenario_files` — ``*.scn`` scenario files collected as cases.
"""

from __future__ import annotations

import importlib

import pytest

from harness.lanes.provision import JoinKernels
from harness.settings import SettingsError

_PARTS = (
    "harness.fixtures",
    "harness.lanes.pytest_lane",
    "conformance.runner.plugin",
    "conformance.runner.scenario_files",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lvsconf", "lvsconf: IPVS persistence conformance")
    group.addoption(
        "--impl",
        action="store",
        default=None,
        metavar="NAMES",
        help="implementations under test, comma separated: kernel, reference, or module:attr "
        "(default: every implementation available here)",
    )
    group.addoption(
        "--kernel",
        action=JoinKernels,
        default=None,
        metavar="LANE",
        help="kernel lane(s) for kernel-IPVS tests, comma separated or repeated (one VM after "
        "another, an item per lane): 'host' (the running kernel), 'auto' (this host's Debian "
        "suite in a VM), a suite (bullseye, bookworm, trixie, sid, stable, ...), a release such "
        "as 6.1.0-57-amd64, a linux-image-amd64 version, or a kernel image path (default: host "
        "if it has IPVS, else auto)",
    )
    group.addoption(
        "--lvs-report",
        action="store",
        default=None,
        metavar="DIR",
        help="write results.json, index.html and summary.md into DIR",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name in _PARTS:
        try:
            module = importlib.import_module(name)
        except SettingsError as exc:  # a bad LVSCONF_* variable: one line, not a traceback
            raise pytest.UsageError(str(exc)) from None
        if not config.pluginmanager.is_registered(module):
            config.pluginmanager.register(module, f"lvsconf-{name}")
