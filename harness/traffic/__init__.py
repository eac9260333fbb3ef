"""Traffic generation and observation: flows in at the client, real server (or answer) out.

- :mod:`harness.traffic.packets` — building (scapy-checked) and parsing of every packet;
- :mod:`harness.traffic.capture` — filtered AF_PACKET observers inside the namespaces;
- :mod:`harness.traffic.engine` — ``run(net, flows, mode="ordered"|"batch") -> [FlowResult]``;
- :mod:`harness.traffic.servers` — name servers in the real servers, for real connections.

Neither importing this package nor building packets imports scapy (it is slow to import in the
VM lane); only TUN encapsulation and the scapy reference builder do.
"""

from __future__ import annotations

from harness.traffic.engine import (
    FlowResult,
    Mode,
    Report,
    TrafficError,
    quiet_endpoints,
    send_flows,
    send_flows_report,
    slowdown,
    unquiet_endpoints,
)

__all__ = [
    "FlowResult",
    "Mode",
    "Report",
    "TrafficError",
    "quiet_endpoints",
    "send_flows",
    "send_flows_report",
    "slowdown",
    "unquiet_endpoints",
]
