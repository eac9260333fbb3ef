"""The ``lvsconf`` command line.

Each subcommand lives in its own module under :mod:`lvsconf.commands` exposing
``register(subparsers)`` (adds its parser and sets ``func``); ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys

import lvsconf.commands
from harness.settings import SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsconf", description="IPVS persistence conformance: harness, model and suite"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(lvsconf.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"lvsconf.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


INTERRUPTED = 130  # what a command returns when Ctrl-C ended it


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except SettingsError as exc:  # a bad LVSCONF_* variable, met while importing a command
        print(f"lvsconf: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = int(func(args))
    except KeyboardInterrupt:
        _teardown_only()
        print("lvsconf: interrupted", file=sys.stderr)
        return 130
    if code == INTERRUPTED:
        _teardown_only()
    return code


def _teardown_only() -> None:
    """After an interrupt only teardown is left (atexit: the run's namespaces, records, scratch
    files): further Ctrl-C presses must not cut it short. Under xdist a KeyboardInterrupt could
    otherwise escape from the controller's teardown (pytest restores Python's own handler) and
    the process died by SIGINT instead of exiting 130."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    raise SystemExit(main())
