"""What every lanes module shares: the one-line error and how commands are run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Progress = Callable[[str], None]


class LaneError(Exception):
    """A kernel lane cannot be provided; the message is one line naming the problem and the fix."""


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell), capturing text output; bounded by 10 minutes."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=600)
