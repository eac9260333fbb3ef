"""Errors the reference model raises for bad input (never for kernel behaviour).

Each message says what is wrong and how to fix it in one line, like the kernel's -EEXIST /
-ESRCH / -EINVAL answers to ipvsadm, so a CLI can print it and exit 2.
"""

from __future__ import annotations

from impl.schedulers.base import UnknownScheduler


class ModelError(Exception):
    """Base class: a request the model (like the kernel) refuses."""


class ServiceExists(ModelError):
    """Adding a service whose key is already configured (kernel: -EEXIST)."""


class NoSuchService(ModelError):
    """Editing/deleting a service, or touching its dests, when it does not exist (-ESRCH)."""


class DestExists(ModelError):
    """Adding a dest that is already in the service (-EEXIST)."""


class NoSuchDest(ModelError):
    """Editing or deleting a dest that is not in the service (-ENOENT)."""


class InvalidConfig(ModelError):
    """A service or dest value the kernel rejects with -EINVAL (e.g. IPv6 prefix 0)."""


class UnknownSysctl(ModelError):
    """A sysctl name the model does not know."""


class ProcParseError(ModelError):
    """Text that is not in the /proc/net/ip_vs or /proc/net/ip_vs_conn format."""


class SchedulerRejected(InvalidConfig, UnknownScheduler):
    """A scheduler name the modelled kernel does not have (both a ModelError, so CLIs print it,
    and the registry's UnknownScheduler, so existing handlers still catch it)."""
