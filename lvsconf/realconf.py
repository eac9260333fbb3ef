"""Rule files as users have them: ipvsadm-save text or a keepalived.conf, told apart by content.

:func:`read_rules` is what ``lvsconf predict --rules`` (and any command that takes a rule file)
calls: it reads the file, follows a keepalived.conf's ``include`` directives on the filesystem
(globs relative to the including file, as keepalived does) and returns ipvsadm operations plus
the final services. :func:`topology_rules` also maps the addresses onto the test topology (three
real servers, eight VIPs per family) and returns the mapping, one line each, to print.
Bad input raises :class:`impl.errors.ModelError` with one line ``FILE:LINE: what (fix)``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from impl.errors import ModelError
from impl.ipvsadm import Op, parse_rules, replay
from impl.keepalived import looks_like_keepalived, parse_conf, scale, to_ops
from impl.scenario import ServiceConfig
from impl.types import IPV4, IPV6, ProtoTimeouts

#: the test topology's real servers per family (harness.topology builds three)
TOPOLOGY_REAL_SERVERS = 3


class RulesInputError(ModelError):
    """A rule file that cannot be read (one line naming the file and the fix)."""


@dataclass(frozen=True, slots=True)
class Rules:
    """A rule file's content: its format, operations (for replaying into a model), the final
    services and the protocol timeouts it sets (keepalived's ``lvs_timeouts``)."""

    format: str  # "ipvsadm" | "keepalived"
    ops: list[Op]
    services: tuple[ServiceConfig, ...]
    timeouts: ProtoTimeouts = ProtoTimeouts()


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise RulesInputError(
            f"cannot read rules file {path}: {why} (give a readable text file)"
        ) from None


def file_reader(pattern: str, base: str) -> list[tuple[str, str]]:
    """keepalived's include: a glob relative to the including file's directory, sorted."""
    full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
    return [(path, _read(path)) for path in sorted(glob.glob(full)) if os.path.isfile(path)]


def parse_text(text: str, filename: str) -> Rules:
    """:func:`read_rules` for text already read (includes resolved relative to ``filename``)."""
    if looks_like_keepalived(text):
        conf = parse_conf(text, filename, file_reader)
        return Rules("keepalived", to_ops(conf.services, conf.lines), conf.services, conf.timeouts)
    ops = parse_rules(text, filename)
    return Rules("ipvsadm", ops, replay(ops, filename))


def read_rules(path: str) -> Rules:
    """The rules in ``path``, ipvsadm text or keepalived.conf (see the module docstring)."""
    return parse_text(_read(path), path)


def topology_rules(path: str) -> tuple[Rules, list[str]]:
    """The rules in ``path`` mapped onto the test topology, and the mapping to print."""
    from harness import addresses  # noqa: PLC0415 - only the topology path needs it

    rules = read_rules(path)
    rips = {f: [addresses.rip(f, i) for i in range(TOPOLOGY_REAL_SERVERS)] for f in (IPV4, IPV6)}
    vips = {f: [addresses.vip(f, i) for i in range(addresses.VIPS)] for f in (IPV4, IPV6)}
    try:
        services, mapping = scale(rules.services, rips, vips)
    except ValueError as exc:
        raise RulesInputError(f"{path}: {exc}") from None
    return Rules(rules.format, to_ops(services), services, rules.timeouts), mapping


__all__ = ["Rules", "RulesInputError", "read_rules", "parse_text", "topology_rules", "file_reader"]
