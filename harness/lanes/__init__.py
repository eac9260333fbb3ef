"""Kernel lanes: where the kernel implementation runs (the host kernel, or a VM).

:mod:`provision` resolves ``--kernel`` to a :class:`~harness.lanes.provision.Lane` and fetches
Debian kernels, :mod:`vm` boots them with virtme-ng, and :mod:`pytest_lane` runs kernel-marked
tests in the lane and reports their outcomes as the host's own.
"""
