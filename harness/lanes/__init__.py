"""Kernel lanes: where the kernel implementation runs (the host kernel, or a VM).

:mod:`debian` resolves kernel names (suites, releases, versions) through a private apt
configuration, :mod:`provision` turns ``--kernel`` into :class:`~harness.lanes.provision.Lane`
objects and fetches Debian kernels into the cache, :mod:`vm` boots them with virtme-ng, and
:mod:`pytest_lane` runs kernel-marked tests in each lane, reporting the guest's outcomes
(:mod:`guest_records`) as the host's own.
"""
