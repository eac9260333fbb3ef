"""Scenarios and predictions shared by the datapath's namespace tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from harness import addresses
from harness.api import Outcome
from impl.director import Director
from impl.scenario import Scenario, ServiceConfig
from impl.types import Dest, Family, Flow, Fwd, Proto, Service, ServiceKey

#: one persistent service per protocol on VIP 0; NAT forwards to vport + 8000
VPORTS = {Proto.TCP: 80, Proto.UDP: 53, Proto.SCTP: 3868}
NAT_OFFSET = 8000


def dest_port(fwd: Fwd, vport: int) -> int:
    return vport + NAT_OFFSET if fwd is Fwd.NAT else vport


def persistent(
    family: Family,
    fwd: Fwd,
    protos: Sequence[Proto] = tuple(VPORTS),
    servers: int = 3,
    timeout: int = 300,
) -> Scenario:
    """rr, persistent (``timeout`` s), ``servers`` dests of method ``fwd`` per protocol."""
    vip = addresses.vip(family, 0)
    services = tuple(
        ServiceConfig(
            Service(ServiceKey(family, proto, vip, VPORTS[proto]), "rr", timeout),
            tuple(
                Dest(addresses.rip(family, i), dest_port(fwd, VPORTS[proto]), 1, fwd)
                for i in range(servers)
            ),
        )
        for proto in protos
    )
    return Scenario(f"persistent-{fwd.value}-{family.label}", services, ())


def client_flows(
    family: Family,
    protos: Iterable[Proto] = tuple(VPORTS),
    clients: int = 4,
    per_client: int = 2,
    first: int = 0,
) -> list[Flow]:
    """Clients number ``first``.. (spread over the client networks), several connections each."""
    vip = addresses.vip(family, 0)

    def client(i: int) -> object:
        return addresses.cip(family, i % addresses.CLIENT_NETS, 1 + i // addresses.CLIENT_NETS)

    return [
        Flow(proto, client(first + c), 40000 + k, vip, VPORTS[proto])  # type: ignore[arg-type]
        for c in range(clients)
        for proto in protos
        for k in range(per_client)
    ]


_KIND = {"forward": "forward", "unreachable": "unreachable", "drop": "dropped", "local": "local"}


def predict(
    model: Director, scenario: Scenario, flows: Iterable[Flow], now: float
) -> list[tuple[str, int | None, int | None]]:
    """(outcome kind, real server index, port at the real server) the model expects per flow."""
    out: list[tuple[str, int | None, int | None]] = []
    for flow in flows:
        v = model.packet(scenario.mark(flow), now)
        if v.kind == "forward":
            assert v.dest is not None
            port = v.dport if v.fwd is Fwd.NAT else flow.dport
            out.append(("forward", addresses.rs_index(v.dest), port))
        else:
            out.append((_KIND[v.kind], None, None))
    return out


def observed(outcomes: Iterable[Outcome]) -> list[tuple[str, int | None, int | None]]:
    return [
        (o.kind, o.rs, o.port) if o.kind == "forward" else (o.kind, None, None) for o in outcomes
    ]


def explain(flows: Sequence[Flow], expected: Sequence[object], seen: Sequence[object]) -> str:
    lines = ["flow | expected | observed"]
    for f, e, s in zip(flows, expected, seen, strict=True):
        mark = "  " if e == s else "!!"
        lines.append(f"{mark} {f} | {e} | {s}")
    return "\n".join(lines)
