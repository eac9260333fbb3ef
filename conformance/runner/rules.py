"""The ``rule`` decorator: every conformance case names the rule it checks and where it comes from.

A case is a test function taking the ``case`` fixture::

    @rule("fwmark-any-port-same-rs", source="core.c ip_vs_sched_persist 305-338")
    def test_fwmark_template_ignores_vaddr_and_vport(case: Case) -> None:
        '''One client, one mark: every marked flow reaches one real server.'''
        case.play(scenario).assert_conforms()

The decorator records the rule in :data:`REGISTRY` and on the function (``__lvs_rule__``), where
the pytest plugin (:mod:`conformance.runner.plugin`) finds it to parametrise the ``case``
fixture over implementation x family, to mark kernel and slow items, to skip items whose kernel
features are missing, and to turn declared divergences into ``xfail(strict=True)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from impl.types import IPV4, IPV6, Family

F = TypeVar("F", bound=Callable[..., Any])

#: rule ids are stable, lower-case, dash separated (they are report anchors and CLI filters)
_RULE_ID = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")

#: kernel features a case may need: the fields of harness.features.KernelFeatures (probe())
KNOWN_FEATURES = frozenset({"ip_vs", "ipip", "ip6tnl", "sctp", "veth", "bridge", "nftables", "tun"})


class RuleError(ValueError):
    """A ``@rule`` declaration is malformed (raised at import, naming the rule and the fix)."""


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """Everything a case declares about the rule it checks."""

    rule_id: str
    source: str
    families: tuple[Family, ...]
    needs: tuple[str, ...] = ()
    slow: bool = False
    #: implementation name -> reason the divergence is expected (traced to kernel source)
    diverges: Mapping[str, str] = field(default_factory=dict)
    doc: str = ""
    #: ``module:qualname`` of the test function (to tell a re-import from a duplicate id)
    origin: str = ""

    @property
    def title(self) -> str:
        """The docstring's first paragraph on one line: the rule in a sentence or two."""
        first = self.doc.strip().split("\n\n", 1)[0]
        return " ".join(first.split()) or self.rule_id


#: every rule declared so far, by id
REGISTRY: dict[str, RuleInfo] = {}


def rule(
    rule_id: str,
    *,
    source: str,
    families: tuple[Family, ...] = (IPV4, IPV6),
    needs: tuple[str, ...] = (),
    slow: bool = False,
    diverges: dict[str, str] | None = None,
) -> Callable[[F], F]:
    """Declare the rule a conformance case checks (see module docstring)."""
    if not _RULE_ID.match(rule_id):
        raise RuleError(
            f"rule id {rule_id!r} is not a stable id: use lower-case words joined by '-', "
            "e.g. 'fwmark-any-port-same-rs'"
        )
    if not source.strip():
        raise RuleError(
            f"rule {rule_id}: source is empty; cite the kernel source (file, function, lines)"
        )
    fams = tuple(families)
    if not fams or any(not isinstance(f, Family) for f in fams):
        raise RuleError(
            f"rule {rule_id}: families must be a non-empty tuple of Family (IPV4, IPV6)"
        )
    unknown = sorted(set(needs) - KNOWN_FEATURES)
    if unknown:
        raise RuleError(
            f"rule {rule_id}: unknown kernel feature(s) {', '.join(unknown)} in needs; "
            f"known: {', '.join(sorted(KNOWN_FEATURES))}"
        )
    for impl_name, reason in (diverges or {}).items():
        if not reason.strip():
            raise RuleError(
                f"rule {rule_id}: divergence for {impl_name!r} has no reason; "
                "say why, traced to the kernel source"
            )

    def decorate(func: F) -> F:
        info = RuleInfo(
            rule_id=rule_id,
            source=source.strip(),
            families=fams,
            needs=tuple(needs),
            slow=slow,
            diverges=dict(diverges or {}),
            doc=func.__doc__ or "",
            origin=f"{func.__module__}:{func.__qualname__}",
        )
        previous = REGISTRY.get(rule_id)
        if previous is not None and previous.origin != info.origin:
            raise RuleError(
                f"rule id {rule_id!r} is declared twice ({previous.origin} and {info.origin}); "
                "rule ids must be unique"
            )
        REGISTRY[rule_id] = info
        func.__lvs_rule__ = info  # type: ignore[attr-defined]
        return func

    return decorate


def rule_of(func: object) -> RuleInfo | None:
    """The rule a test function declares, or None for an ordinary test."""
    info = getattr(func, "__lvs_rule__", None)
    return info if isinstance(info, RuleInfo) else None
