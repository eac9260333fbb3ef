"""Load nftables rules inside a namespace (nft has no netlink API in pyroute2).

The child process enters the namespace before exec, so rules never land in the host's ruleset.
"""

from __future__ import annotations

import shutil
import subprocess

from harness.runs import netns_preexec


class NftError(RuntimeError):
    """nft is missing or rejected a ruleset; the message says which and how to fix it."""


def nft(netns: str, script: str, timeout: float = 30.0) -> str:
    """Run ``nft -f -`` with ``script`` inside network namespace ``netns``; return stdout."""
    exe = shutil.which("nft")
    if exe is None:
        raise NftError("nft not found: apt-get install nftables")
    proc = subprocess.run(
        [exe, "-f", "-"],
        input=script,
        text=True,
        capture_output=True,
        timeout=timeout,
        preexec_fn=netns_preexec(netns),
        check=False,
    )
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["(no message)"])[0]
        raise NftError(f"nft rejected the ruleset in namespace {netns}: {first}")
    return proc.stdout


def nft_list(netns: str, timeout: float = 30.0) -> str:
    """``nft list ruleset`` inside ``netns``."""
    exe = shutil.which("nft")
    if exe is None:
        raise NftError("nft not found: apt-get install nftables")
    proc = subprocess.run(
        [exe, "list", "ruleset"],
        text=True,
        capture_output=True,
        timeout=timeout,
        preexec_fn=netns_preexec(netns),
        check=False,
    )
    if proc.returncode != 0:
        raise NftError(f"nft list ruleset failed in namespace {netns}: {proc.stderr.strip()}")
    return proc.stdout
