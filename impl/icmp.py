"""ICMP towards a VIP, as IPVS sees it (docs/semantics.md §1.8).

IPVS has no protocol handler for ICMP: ``ip_vs_in_hook`` passes ICMP to ``ip_vs_in_icmp``
(``_v6``), which handles only the *related* error types (v4: DEST_UNREACH, SOURCE_QUENCH,
TIME_EXCEEDED; v6: every non-informational type) and returns "not related" for the rest.
An echo request then finds no IPVS protocol (``ip_vs_proto_data_get`` is NULL) and is
accepted to the director's own stack, which answers the ping itself. No connection and no
template is ever created for it.

The model's flows carry only echo requests for ICMP (related errors with ``schedule_icmp``
are out of scope), so :func:`icmp_verdict` answers every ICMP flow with ``local``.
"""

from __future__ import annotations

from typing import Final

from impl.types import Decision, Flow, Proto

ICMP_PROTOS: Final = frozenset({Proto.ICMP, Proto.ICMPV6})

#: the verdict for a ping to the VIP (one shared instance: a Decision is frozen)
ECHO_LOCAL: Final = Decision(
    "local",
    reason="ICMP echo is answered by the director; IPVS schedules only related ICMP errors "
    "(ip_vs_in_icmp)",
)


class UnmodelledIcmp(ValueError):
    """An ICMP flow that is not an echo request: the model does not predict it."""


def icmp_verdict(flow: Flow) -> Decision | None:
    """What the director does with ``flow`` if it is ICMP; None for any other protocol.

    Meant as the first check of ``Director.packet``: it touches no state, because ICMP never
    creates or refreshes a connection or a template (unless ``schedule_icmp`` schedules a
    related error, which no Flow can be).
    """
    if flow.proto not in ICMP_PROTOS:
        return None
    if flow.packet_kind != "echo":
        raise UnmodelledIcmp(
            f"{flow}: only ICMP echo requests are modelled; use kind='echo' (related ICMP "
            "errors with schedule_icmp are out of the model's scope)"
        )
    return ECHO_LOCAL


__all__ = ["ECHO_LOCAL", "ICMP_PROTOS", "UnmodelledIcmp", "icmp_verdict"]
