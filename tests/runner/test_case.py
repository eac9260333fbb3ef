"""Case.play stepping, the verdict -> outcome mapping, grading and explain(), with fakes."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace

import pytest

from conformance.runner.case import ClockStalled, Unsupported
from conformance.runner.grading import persistence_key
from conformance.runner.outcomes import expected_outcome, same_outcome
from conformance.runner.templates import compare_templates, expires_tolerance
from harness.api import Outcome
from impl.scenario import Advance, DelDest, Send
from impl.types import IPV4, IPV6, Decision, Flow, Fwd, Proto, Service, ServiceKey, Template

from .fakes import FakeImpl, FakeNet, make_case, persistent_scenario, relabel

VIP = ipaddress.ip_address("198.19.0.1")
RIP1 = ipaddress.ip_address("198.18.10.11")
CIP = ipaddress.ip_address("198.18.16.1")


def _flow(proto: Proto = Proto.TCP, dport: int = 80):
    from impl.types import Flow

    return Flow(proto, CIP, 40000, VIP, dport)


# --------------------------------------------------------------------------- mapping


def test_forward_nat_maps_to_rs_and_forwarded_port() -> None:
    v = Decision("forward", dest=RIP1, dport=8080, fwd=Fwd.NAT)
    assert expected_outcome(v, _flow()) == Outcome("forward", 0, RIP1, 8080)


@pytest.mark.parametrize("fwd", [Fwd.DR, Fwd.TUN])
def test_forward_dr_tun_keep_the_packet_port_and_vip(fwd: Fwd) -> None:
    v = Decision("forward", dest=RIP1, dport=8080, fwd=fwd)
    assert expected_outcome(v, _flow()) == Outcome("forward", 0, VIP, 80)


def test_nat_to_port_zero_dest_keeps_the_packet_port() -> None:
    v = Decision("forward", dest=RIP1, dport=0, fwd=Fwd.NAT)
    assert expected_outcome(v, _flow(dport=443)).port == 443


@pytest.mark.parametrize(
    ("kind", "proto", "wire"),
    [
        ("unreachable", Proto.TCP, "unreachable"),
        ("drop", Proto.UDP, "dropped"),
        ("local", Proto.TCP, "local"),
        ("local", Proto.SCTP, "local"),
        ("local", Proto.UDP, "unreachable"),
    ],
)
def test_non_forward_verdicts(kind: str, proto: Proto, wire: str) -> None:
    assert expected_outcome(Decision(kind), _flow(proto)).kind == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(("proto", "kind"), [(Proto.TCP, "rst"), (Proto.SCTP, "abort")])
def test_local_rst_and_abort_get_no_answer(proto: Proto, kind: str) -> None:
    flow = replace(_flow(proto), kind=kind)  # type: ignore[arg-type]
    assert expected_outcome(Decision("local"), flow).kind == "dropped"
    assert expected_outcome(Decision("local"), replace(flow, kind="ack")).kind == "local"


def test_same_outcome_compares_rs_port_and_known_addresses() -> None:
    a = Outcome("forward", 0, VIP, 80)
    assert same_outcome(a, replace(a, elapsed=3.0))
    assert same_outcome(a, replace(a, addr=None))  # implementation did not report the address
    assert not same_outcome(a, replace(a, rs=1))
    assert not same_outcome(a, replace(a, port=81))
    assert not same_outcome(a, Outcome("dropped"))


# --------------------------------------------------------------------------- templates


def _tpl(expires: int | None = 60, daddr: str = "198.18.10.11", **kw: object) -> Template:
    base = dict(
        family=IPV4,
        proto=Proto.TCP,
        caddr=CIP,
        cport=0,
        vaddr=VIP,
        vport=80,
        daddr=ipaddress.ip_address(daddr),
        dport=80,
        expires=expires,
    )
    base.update(kw)
    return Template(**base)  # type: ignore[arg-type]


def test_templates_agree_within_expires_tolerance() -> None:
    assert expires_tolerance(60) == 8 and expires_tolerance(2) == 1
    assert compare_templates([_tpl(60)], [_tpl(53)]) == []
    diffs = compare_templates([_tpl(60)], [_tpl(50)])
    assert len(diffs) == 1 and diffs[0].startswith("expires 50s, model 60s")


def test_template_field_differences_are_reported_both_ways() -> None:
    diffs = compare_templates([_tpl()], [_tpl(daddr="198.18.10.12")])
    assert [d.split(":")[0] for d in diffs] == ["missing", "unexpected"]
    assert compare_templates([], [_tpl(state="ASSURED")])[0].startswith("unexpected")


def test_persistence_key_follows_the_template_key_rules() -> None:
    v4 = IPV4
    svc = Service(ServiceKey(v4, Proto.TCP, VIP, 80), timeout=30, netmask=0xFFFFFF00)
    services = {svc.key: svc}
    key = persistence_key(services, _flow())
    assert key == (v4, Proto.TCP, ipaddress.ip_address("198.18.16.0"), VIP, 80)
    other = replace(_flow(), saddr=ipaddress.ip_address("198.18.16.77"), sport=1)
    assert persistence_key(services, other) == key  # same /24: same template
    fw = Service(ServiceKey(v4, fwmark=7), timeout=30)
    assert persistence_key({fw.key: fw}, _flow().with_mark(7))[1:5] == (  # type: ignore[index]
        Proto.IP,
        CIP,
        7,
        0,
    )
    plain = Service(ServiceKey(v4, Proto.TCP, VIP, 80))
    assert persistence_key({plain.key: plain}, _flow()) is None


# --------------------------------------------------------------------------- grading


def test_identical_implementation_is_exact() -> None:
    case, net = make_case(FakeImpl())
    result = case.play(persistent_scenario(case))
    assert result.verdict == "exact", result.explain()
    assert result.problems == []
    assert len(result.flows) == 4 and net.installs == 1
    # persistence: each client's two flows share a server, the clients got different ones
    assert result.rs(0) == result.rs(2) and result.rs(1) == result.rs(3)
    assert result.rs(0) != result.rs(1)
    assert len(result.templates_expected[0]) == 2
    result.assert_conforms()


def test_wrong_real_server_fails_with_evidence() -> None:
    def second_flow_elsewhere(i: int, flow, outcome: Outcome) -> Outcome:
        return replace(outcome, rs=(outcome.rs + 1) % 3) if i == 2 else outcome

    case, _ = make_case(FakeImpl(perturb=second_flow_elsewhere))
    result = case.play(persistent_scenario(case))
    assert result.verdict == "fail"
    text = result.explain()
    assert "rule unit-rule on fake (ipv4): fail" in text
    assert "<-- differs" in text
    assert "-A -t 198.19.0.1:80" in text  # the scenario as an ipvsadm script
    assert "model | implementation" in text  # template tables side by side
    assert "flow 3 (tcp 198.18.16.1:40001 -> 198.19.0.1:80)" in text
    with pytest.raises(AssertionError, match="<-- differs"):
        result.assert_conforms()


def test_template_mismatch_alone_fails_an_exact_implementation() -> None:
    case, _ = make_case(FakeImpl(mangle_template=lambda t: replace(t, state="ASSURED")))
    result = case.play(persistent_scenario(case))
    assert result.verdict == "fail"
    assert any("templates after step 1: missing" in p for p in result.problems)


def test_hidden_templates_are_not_compared() -> None:
    case, _ = make_case(FakeImpl(expose_templates=False))
    result = case.play(persistent_scenario(case))
    assert result.verdict == "exact"
    assert result.templates_observed == [None]
    assert "model only" in result.explain()


def test_consistent_relabelling_is_equivalent_for_a_non_exact_implementation() -> None:
    swap = relabel({0: 1, 1: 2, 2: 0})
    case, _ = make_case(FakeImpl(exact=False, perturb=swap, expose_templates=False))
    result = case.play(persistent_scenario(case))
    assert result.verdict == "equivalent", result.explain()
    result.assert_conforms()
    # the same behaviour on an implementation claiming exactness is a failure
    case, _ = make_case(FakeImpl(exact=True, perturb=swap, expose_templates=False))
    assert case.play(persistent_scenario(case)).verdict == "fail"


def test_split_persistence_group_is_not_equivalent() -> None:
    def split(i: int, flow, outcome: Outcome) -> Outcome:
        return replace(outcome, rs=(outcome.rs + 1) % 3) if i == 2 else outcome

    case, _ = make_case(FakeImpl(exact=False, perturb=split, expose_templates=False))
    result = case.play(persistent_scenario(case))
    assert result.verdict == "fail"
    assert any("same persistence template" in p for p in result.problems)


def test_equivalence_still_requires_the_same_non_forward_outcomes() -> None:
    def drop_last(i: int, flow, outcome: Outcome) -> Outcome:
        return Outcome("dropped") if i == 3 else outcome

    case, _ = make_case(FakeImpl(exact=False, perturb=drop_last, expose_templates=False))
    result = case.play(persistent_scenario(case))
    assert result.verdict == "fail"
    assert "expected forward, observed dropped" in result.problems[0]


def test_random_scheduler_is_graded_by_equivalence() -> None:
    from impl.kernel_level import parse_release

    impl = FakeImpl(
        perturb=relabel({0: 2, 2: 0}), expose_templates=False, level=parse_release("6.12.117")
    )
    case, _ = make_case(impl)
    result = case.play(persistent_scenario(case, scheduler="twos"))
    assert result.equivalence
    assert result.verdict == "equivalent", result.explain()


def test_unsupported_scenario_skips_with_reason() -> None:
    case, net = make_case(FakeImpl(unsupported_reason="no netmask"))
    with pytest.raises(Unsupported, match="unsupported by fake: no netmask"):
        case.play(persistent_scenario(case))
    assert case.unsupported_reason == "no netmask" and net.installs == 0


# --------------------------------------------------------------------------- time and edits


def test_advance_waits_on_the_director_clock_and_expiry_is_modelled() -> None:
    impl = FakeImpl()
    case, _ = make_case(impl)
    start = impl.clock.now()
    scenario = persistent_scenario(case, clients=1, flows_per_client=1, timeout=2)
    flows = scenario.flows()
    scenario = replace(
        scenario, steps=(*scenario.steps, Advance(3.0), Send((replace(flows[0], sport=41000),)))
    )
    result = case.play(scenario)
    assert impl.clock.now() - start >= 3.0
    assert result.verdict == "exact", result.explain()
    assert len(result.template_checks) == 2


def test_advance_on_a_stalled_clock_raises() -> None:
    impl = FakeImpl()
    case, _ = make_case(impl)
    case._sleep = lambda s: None  # the clock never moves
    scenario = replace(
        persistent_scenario(case, clients=1, flows_per_client=1), steps=(Advance(0.2),)
    )
    with pytest.raises(ClockStalled, match="did not advance 0.2s"):
        case.play(scenario)


def test_dest_removal_reaches_both_sides_and_reschedules() -> None:
    case, _ = make_case(FakeImpl(), family=IPV6)
    scenario = persistent_scenario(case, clients=1, flows_per_client=1)
    (first,) = scenario.flows()
    key = scenario.services[0].service.key
    pre = case.play(scenario)
    gone = pre.rs(0)
    assert gone is not None
    case, _ = make_case(FakeImpl(), family=IPV6)
    scenario = replace(
        scenario,
        steps=(
            *scenario.steps,
            DelDest(key, case.rip(gone), 80),
            Send((replace(first, sport=41000),)),
        ),
    )
    result = case.play(scenario)
    assert result.verdict == "exact", result.explain()
    assert result.rs(1) != gone
    assert result.groups[0] != result.groups[1]  # different stretch: no equivalence constraint
    assert "delete dest" in result.explain()


def test_record_is_json_serialisable() -> None:
    import json

    case, _ = make_case(FakeImpl())
    rec = case.play(persistent_scenario(case)).to_record()
    text = json.dumps(rec)
    assert rec["verdict"] == "exact" and len(rec["flows"]) == 4
    assert rec["templates"][0]["observed"] and "timings" in rec and "198.19.0.1" in text


def test_model_runs_at_the_send_time_not_when_the_runner_predicted() -> None:
    """A slow first send (a fresh guest importing and opening sockets) must not move the
    model's timers: the model decides each flow at the engine's send timestamp."""
    impl = FakeImpl()
    case, net = make_case(impl)

    def slow_traffic(fnet: FakeNet, flows: Sequence[Flow], mode: str) -> list[Outcome]:
        impl.clock.sleep(7.0)  # the harness is slow before the frame leaves
        assert fnet.handle is not None
        return [replace(fnet.handle.deliver(f), sent_at=impl.clock.now()) for f in flows]

    case._traffic = slow_traffic  # what make_case wired, but slow
    result = case.play(persistent_scenario(case, timeout=30))
    assert result.verdict == "exact", result.explain()
    # 7 s per flow: a model anchored at prediction time would be 7 s behind per template
    assert not result.problems
