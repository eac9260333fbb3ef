"""Longest cases first, one per worker (conformance/runner/schedule.py), checked against the
installed pytest-xdist's own worksteal scheduler and against the suite's real rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from xdist.scheduler.worksteal import WorkStealingScheduling

from conformance.runner import schedule
from harness.addresses import cip, rip, vip
from impl.scenario import Advance, Scenario, Send, ServiceConfig
from impl.types import IPV4, Dest, Flow, Proto, Service, ServiceKey

pytest_plugins = ["pytester"]


@dataclass(eq=False)
class FakeNode:
    """What xdist's scheduler calls on a worker controller."""

    name: str
    got: list[int] = field(default_factory=list)
    gateway: Any = None
    shutting_down: bool = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.got.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


class FakeConfig:
    def __init__(self, workers: int) -> None:
        self.workers = workers

    def getvalue(self, name: str) -> Any:
        return {"tx": [f"{self.workers}*popen"]}[name]


def first_queues(collection: list[str], workers: int) -> list[list[str]]:
    """The queue each worker gets from xdist's worksteal at the start of a run."""
    sched = WorkStealingScheduling(FakeConfig(workers))  # type: ignore[arg-type]
    nodes = [FakeNode(f"gw{i}", gateway=SimpleNamespace(id=f"gw{i}")) for i in range(workers)]
    for node in nodes:
        sched.add_node(node)  # type: ignore[arg-type]
    for node in nodes:
        sched.add_node_collection(node, collection)  # type: ignore[arg-type]
    sched.schedule()
    return [[collection[i] for i in node.got] for node in nodes]


@pytest.mark.parametrize(("total", "workers"), [(112, 8), (114, 4), (7, 3), (228, 8), (5, 8)])
def test_ranges_are_those_xdist_hands_out(total: int, workers: int) -> None:
    names = [f"t{i}" for i in range(total)]
    queues = first_queues(names, min(workers, total))
    ranges = schedule.worksteal_ranges(total, min(workers, total))
    assert [[names[i] for i in r] for r in ranges] == queues


def test_every_worker_starts_with_one_of_the_longest() -> None:
    cost = {f"t{i}": float(i % 10 == 3) * (100 - i) for i in range(40)}  # four long ones
    items = list(cost)
    arranged = schedule.spread(items, cost.__getitem__, workers=4)
    assert sorted(arranged) == sorted(items)  # a permutation: nothing lost, nothing doubled
    queues = first_queues(arranged, 4)
    assert sorted(q[0] for q in queues) == ["t13", "t23", "t3", "t33"]
    # and each queue runs longest first
    assert all([cost[n] for n in q] == sorted((cost[n] for n in q), reverse=True) for q in queues)


def test_replayed_items_keep_their_place_at_the_front() -> None:
    items = ["vm1", "vm2", "vm3"] + [f"t{i}" for i in range(9)]
    cost = {n: (5.0 if n == "t8" else 1.0) for n in items}
    arranged = schedule.spread(items, cost.__getitem__, fixed=3, workers=3)
    assert arranged[:3] == ["vm1", "vm2", "vm3"]
    queues = first_queues(arranged, 3)
    # the first queue starts with the replayed items; the longest local case leads another
    assert queues[0][:3] == ["vm1", "vm2", "vm3"]
    assert "t8" in {queues[1][0], queues[2][0]}


def test_one_worker_only_sorts_and_keeps_ties_in_order() -> None:
    items = ["a", "b", "c", "d"]
    cost = {"a": 0.0, "b": 2.0, "c": 0.0, "d": 2.0}
    assert schedule.spread(items, cost.__getitem__, workers=1) == ["b", "d", "a", "c"]


def test_a_scenario_costs_its_waits() -> None:
    key = ServiceKey(IPV4, Proto.TCP, vip(IPV4, 0), 80)
    scenario = Scenario(
        services=(ServiceConfig(Service(key, "rr"), (Dest(rip(IPV4, 0)),)),),
        steps=(Send((Flow(Proto.TCP, cip(IPV4, 0, 1), 40000, vip(IPV4, 0), 80),)), Advance(7.0)),
    )
    assert schedule.scenario_seconds(scenario) == pytest.approx(
        schedule.PER_CASE + 7.0 + schedule.PER_FLOW
    )


def test_the_real_rules_are_planned_without_a_network(pytester: pytest.Pytester) -> None:
    """The suite's own rule functions, called with a planning case at collection: the SIP
    revive case waits ~17 s of director time, a plain key case almost nothing."""
    pytester.makepyfile(
        planprobe="""
        from conformance.runner import schedule
        from conformance.runner.plugin import level_for, selection

        def pytest_collection_finish(session):
            impls = {i.name: i for i in selection(session.config).impls}
            for item in session.items:
                impl = impls[item.callspec.params["case"][0]]
                print("PLAN", round(schedule.planned_seconds(item, impl, level_for(impl)), 2),
                      item.nodeid.split("::")[-1])
        """
    )
    root = Path(__file__).resolve().parents[2]
    result = pytester.runpytest_subprocess(
        "--co", "-q", "-s", "-p", "no:cacheprovider", "-p", "planprobe", "--impl", "reference",
        "-k", "sip_invalidated_revive or test_normal_key",
        str(root / "conformance" / "test_template_invalidation.py"),
        str(root / "conformance" / "test_persistence_keys.py"),
    )  # fmt: skip
    plans = {
        line.split()[2]: float(line.split()[1])
        for line in result.outlines
        if line.startswith("PLAN")
    }
    assert plans["test_sip_invalidated_revive[reference-ipv4]"] > 17
    assert plans["test_normal_key[reference-ipv4]"] < 2
    assert len(plans) == 4, result.outlines


def test_longest_first_only_with_several_workers_per_cpu() -> None:
    assert schedule.longest_first(8, cpus=2)  # lvsconf run on this machine's host lane
    assert not schedule.longest_first(4, cpus=2)  # a TCG guest's workers
    assert not schedule.longest_first(3, cpus=2)
