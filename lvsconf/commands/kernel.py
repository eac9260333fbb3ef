"""``lvsconf kernel fetch|boot|probe|list``: Debian kernels for the kernel lane, by hand.

- ``fetch [NAME]``: download and unpack a kernel into the cache (default ``auto``); NAME is a
  suite (``sid``, ``stable`` …), a release, a ``linux-image-amd64`` version or a package name;
- ``boot [--kernel NAME] [CMD ...]``: boot it (one guest at a time) and run a shell command;
- ``probe [--kernel NAME]``: boot it and report what IPVS offers there (schedulers, PEs);
- ``list [--all]``: what each Debian suite offers now (``--all``: every release apt knows).

Names resolve through the private apt configuration under the cache (:mod:`harness.lanes.debian`).

Bad input or a missing prerequisite prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.lanes import debian, provision, vm
from harness.lanes.provision import LaneError

SCHEDULERS = (
    "rr",
    "wrr",
    "lc",
    "wlc",
    "lblc",
    "lblcr",
    "dh",
    "sh",
    "sed",
    "nq",
    "fo",
    "ovf",
    "mh",
    "twos",
)
PROBE_SCRIPT = (
    "echo kernel=$(uname -r); "
    "if modprobe ip_vs 2>/dev/null && test -e /proc/net/ip_vs; then echo ip_vs=yes; "
    "else echo ip_vs=no; fi; "
    f"for s in {' '.join(SCHEDULERS)}; do "
    "if modprobe ip_vs_$s 2>/dev/null; then echo sched_$s=yes; else echo sched_$s=no; fi; done; "
    "if modprobe ip_vs_pe_sip 2>/dev/null; then echo pe_sip=yes; else echo pe_sip=no; fi; "
    "for m in veth bridge ipip ip6_tunnel sctp nf_tables; do "
    "if modprobe $m 2>/dev/null; then echo mod_$m=yes; else echo mod_$m=no; fi; done"
)


def _say(message: str) -> None:
    print(f"[kernel] {message}", file=sys.stderr, flush=True)


def _tree(spec: str) -> provision.KernelTree:
    lane = provision.resolve_lane(spec)
    if not lane.is_vm:
        raise LaneError("--kernel host runs no VM; name a suite, a release, auto, or an image path")
    return lane.provide(_say)


def cmd_fetch(args: argparse.Namespace) -> int:
    fetched = provision.fetch(args.version, _say)
    how = "cached" if fetched.cached else f"fetched in {fetched.seconds:.1f} s"
    print(f"{fetched.tree.release}\t{fetched.package}\t{fetched.tree.image}\t{how}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    apt = provision.private_apt()
    debian.refresh(apt, _say)
    if args.all:
        print("\n".join(debian.all_releases(apt)))
        return 0
    rows = [("SUITE", "ALIASES", debian.META, "RELEASE", "LAYOUT", "CACHED")]
    for offer in debian.offers(apt):
        layout = cached = "-"
        if offer.release is not None:
            layout = debian.layout_for(apt, offer.release).layout
            cached = "yes" if provision.cached_tree(offer.release) is not None else "no"
        rows.append(
            (
                offer.suite,
                ",".join(offer.aliases) or "-",
                offer.version or "(none)",
                offer.release or "-",
                layout,
                cached,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"auto = {provision.host_suite()} (this host's suite, else stable)", file=sys.stderr)
    return 0


def _boot(spec: str, command: str, memory: str, timeout: float) -> int:
    tree = _tree(spec)
    rw = vm.scratch_dir("lvsconf-boot-")
    try:
        return _boot_tree(tree, command, memory, timeout, rw)
    finally:
        shutil.rmtree(rw, ignore_errors=True)


def _boot_tree(
    tree: provision.KernelTree, command: str, memory: str, timeout: float, rw: Path
) -> int:
    run = vm.GuestRun(
        image=tree.image,
        command=command,
        cwd=Path.cwd(),
        rwdir=rw,
        memory=memory,
        timeout=timeout,
    )
    vm.check_shell_safe(run, vm.shim_dir())  # bad paths: one line before any waiting
    with vm.vm_lock(_say):
        accel = vm.choose_accel(tree.image, _say)
        _say(f"booting {tree.release} ({accel}) …")
        run = dataclasses.replace(run, accel=accel)
        start = time.monotonic()
        res = vm.run_guest(run, lambda line: print(line, flush=True))
        _say(f"guest exit status {res.rc} after {time.monotonic() - start:.1f} s")
        if res.rc == 255:
            print(res.console_tail, file=sys.stderr)
            raise vm.GuestError("guest lost (kernel panic or lost I/O): console tail above")
        return res.rc


def cmd_boot(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    command = (
        " ".join(shlex.quote(a) for a in cmd)
        if cmd
        else "uname -r && modprobe ip_vs && cat /proc/net/ip_vs"
    )
    return _boot(args.kernel, command, args.memory, args.timeout)


def cmd_probe(args: argparse.Namespace) -> int:
    return _boot(args.kernel, PROBE_SCRIPT, args.memory, args.timeout)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input or a missing prerequisite: one line on stderr, exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except LaneError as exc:
            print(f"lvsconf kernel: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("kernel", help="fetch and boot Debian kernels for the kernel lane")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    default_kernel = os.environ.get("LVSCONF_KERNEL", "auto")

    p = verbs.add_parser("fetch", help="download and unpack a kernel into the cache")
    p.add_argument(
        "version",
        nargs="?",
        default="auto",
        metavar="NAME",
        help="auto (default), a suite (bullseye, bookworm, trixie, sid, stable, …), a release "
        "such as 6.1.0-57-amd64, or a linux-image-amd64 version",
    )
    p.set_defaults(func=_guarded(cmd_fetch))

    p = verbs.add_parser("list", help="what each Debian suite offers (private apt lists)")
    p.add_argument("--all", action="store_true", help="every amd64 kernel release apt knows")
    p.set_defaults(func=_guarded(cmd_list))

    for name, func, help_text in (
        ("boot", cmd_boot, "boot a kernel and run a shell command in it"),
        ("probe", cmd_probe, "boot a kernel and report its IPVS schedulers and modules"),
    ):
        p = verbs.add_parser(name, help=help_text)
        p.add_argument(
            "--kernel",
            default=default_kernel,
            help="auto (default), a suite, a release, a linux-image-amd64 version, or an image",
        )
        p.add_argument("--memory", default="1G", help="guest memory (default 1G)")
        p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
        if name == "boot":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="command (default: ip_vs info)")
        p.set_defaults(func=_guarded(func))
