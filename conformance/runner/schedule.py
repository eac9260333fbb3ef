"""Which cases start first: the longest, spread over the xdist workers.

Most of a long case is waiting on the director's clock (its Advance steps: expiry, the 60 s
extension, SIP keep-alives). Under pytest-xdist's ``worksteal`` each worker first gets one
contiguous range of the collected items and later steals from the *end* of the longest queue.
In collection order the two families of a rule sit side by side, so one worker got both 18 s
SIP cases back to back, late in the run: the reference lane's tail (measured: 42 s for a lane
whose CPU work fits in about 25 s).

So, when there are several workers per CPU (:func:`longest_first`), the items are ordered by how
long their scenario waits, longest first, and dealt over the ranges worksteal will hand out:
every worker starts with a long case, and the short ones at the ends of the ranges are what idle
workers steal. How long a case waits is read from its scenario
without running anything: the rule function is called with a :class:`PlanningCase` whose
``play`` stops at the first scenario. Ordering changes when a case runs, never what it checks:
verdicts stay those of a serial run (``lvsconf bench suite`` compares them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from conformance.runner.case import Case
from conformance.runner.rules import rule_of
from impl.scenario import Advance, Scenario, Send
from impl.types import Family

T = TypeVar("T")

#: seconds a Send costs per flow, next to its waits (only the order of estimates matters)
PER_FLOW = 0.02
#: seconds every case costs (director renewal, datapath start) before its own steps
PER_CASE = 0.5


class _Planned(Exception):
    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario.name)
        self.scenario = scenario


def _no_net() -> Any:
    raise RuntimeError("a planning case has no network")


class PlanningCase(Case):
    """A :class:`Case` whose ``play`` records the scenario and stops the rule function."""

    def play(self, scenario: Scenario, *, allow_ftpdata: bool = False) -> Any:
        raise _Planned(scenario)


def scenario_seconds(scenario: Scenario) -> float:
    """What a scenario costs in wall time, roughly: its waits plus a little per flow."""
    waits = sum(s.seconds for s in scenario.steps if isinstance(s, Advance))
    flows = sum(len(s.flows) for s in scenario.steps if isinstance(s, Send))
    return PER_CASE + waits + PER_FLOW * flows


def planned_seconds(item: Any, impl: Any, level: Any) -> float:
    """The estimated wall time of a conformance item (0 for anything else, or when its rule
    function cannot be planned: such items keep their place among the unplanned)."""
    function = getattr(item, "function", None)
    info = rule_of(function)
    callspec = getattr(item, "callspec", None)
    if info is None or callspec is None or "case" not in callspec.params:
        return 0.0
    _impl_name, family = callspec.params["case"]
    case = PlanningCase(
        rule_id=info.rule_id, impl=impl, family=Family(family), net_provider=_no_net, level=level
    )
    try:
        function(case)  # type: ignore[misc]
    except _Planned as planned:
        return scenario_seconds(planned.scenario)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - a skip or an assertion before play(): no estimate
        return 0.0
    return 0.0


def worksteal_ranges(total: int, workers: int) -> list[range]:
    """The contiguous ranges pytest-xdist's ``worksteal`` hands to ``workers`` idle workers at
    the start (xdist/scheduler/worksteal.py ``check_schedule``: each takes
    ``len(pending) // nodes_remaining`` of what is left)."""
    out, start = [], 0
    for i in range(workers):
        size = (total - start) // (workers - i)
        out.append(range(start, start + size))
        start += size
    return out


def spread(
    items: Sequence[T], cost: Callable[[T], float], *, fixed: int = 0, workers: int = 1
) -> list[T]:
    """``items`` with ``items[fixed:]`` ordered longest first and, for several workers, dealt
    round robin over worksteal's initial ranges (each range filled front to back), so that
    every worker starts with one of the longest. The first ``fixed`` items stay where they are
    (VM-lane items that one worker replays, see harness.lanes.pytest_lane)."""
    head, rest = list(items[:fixed]), list(items[fixed:])
    ranked = sorted(rest, key=cost, reverse=True)  # stable: equal costs keep their order
    if workers <= 1 or len(ranked) <= 1:
        return head + ranked
    ranges = worksteal_ranges(len(items), min(workers, len(items)))
    # ranges without replayed items first: their workers start at once
    slots = sorted(([p for p in r if p >= fixed] for r in ranges), key=lambda s: -len(s))
    placed: list[T | None] = [None] * len(items)
    queue = iter(ranked)
    depth = 0
    while any(depth < len(s) for s in slots):
        for s in slots:
            if depth < len(s):
                placed[s[depth]] = next(queue)
        depth += 1
    return head + [x for x in placed[fixed:] if x is not None]


#: workers per CPU from which the longest cases go first. With fewer, every worker would start
#: on a long wait and leave the CPUs idle while the short cases, which are mostly CPU work, pile
#: up at the end: measured in a TCG guest with 4 workers on 2 vCPUs, the kernel lane's guest
#: took 160 s with them first and 148 s in collection order; on the host with 8 workers on 2
#: CPUs, the reference lane took 29-32 s with them first and 43 s without
WORKERS_PER_CPU = 3

#: the controller's ``--dist`` mode, handed to each worker (a worker's own option says "no")
DIST_KEY = "lvsconf_dist"


def xdist_workers(config: Any) -> int:
    """How many workers share this run's items, as a worker sees it (1 outside xdist or when
    the distribution mode is not worksteal, whose ranges :func:`spread` deals over)."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or workerinput.get(DIST_KEY) != "worksteal":
        return 1
    return int(workerinput.get("workercount", 1))


def longest_first(workers: int, cpus: int | None = None) -> bool:
    """Whether :func:`spread` pays off: at least :data:`WORKERS_PER_CPU` workers per CPU."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return workers >= WORKERS_PER_CPU * cpus
