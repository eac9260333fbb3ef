"""Schedulers against the kernel's behaviour (docs/semantics.md §4), driven like the core does:
dests inserted at the head of the list, hooks called after each list change."""

from __future__ import annotations

import ipaddress

import pytest

from impl.kernel_level import DEFAULT, KernelLevel
from impl.schedulers.base import DestState, Scheduler, UnknownScheduler
from impl.schedulers.mh import MH_TAB_SIZE, MaglevHashing, dest_offset_skip
from impl.schedulers.registry import SCHEDULERS, make_scheduler
from impl.schedulers.sh import SourceHashing
from impl.types import IPV4, Dest, Flow, Fwd, Proto, Service, ServiceKey, SvcFlag

VIP = ipaddress.ip_address("198.19.0.1")


class Svc:
    """A service's dest list plus its scheduler, changed the way impl.director does."""

    def __init__(
        self, sched: str, flags: SvcFlag = SvcFlag.NONE, level: KernelLevel = DEFAULT
    ) -> None:
        service = Service(ServiceKey(IPV4, Proto.TCP, VIP, 80), sched, sched_flags=flags)
        self.dests: list[DestState] = []
        self.s: Scheduler = make_scheduler(sched, service, level)
        self.s.init_service(self.dests)

    def add(self, name: str, weight: int = 1, port: int = 80) -> DestState:
        d = DestState.from_dest(Dest(rs(name), port, weight, Fwd.DR))
        self.dests.insert(0, d)
        self.s.add_dest(self.dests, d)
        return d

    def edit(self, d: DestState, weight: int) -> None:
        d.weight = weight
        if weight > 0:
            d.last_weight = weight
        self.s.upd_dest(self.dests, d)

    def delete(self, d: DestState) -> None:
        self.dests.remove(d)
        d.available = False
        self.s.del_dest(self.dests, d)

    def pick(self, client: str = "198.18.16.1", sport: int = 40000) -> str | None:
        f = Flow(Proto.TCP, ipaddress.ip_address(client), sport, VIP, 80)
        d = self.s.schedule(self.dests, f)
        return None if d is None else NAMES[int(d.addr) & 0xFF]

    def picks(self, n: int) -> list[str | None]:
        return [self.pick() for _ in range(n)]


NAMES = {11 + i: c for i, c in enumerate("ABCDEFGH")}


def rs(name: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"198.18.10.{11 + 'ABCDEFGH'.index(name)}")


# ---- registry ---------------------------------------------------------------------------


def test_unknown_scheduler_message_lists_known_names() -> None:
    with pytest.raises(UnknownScheduler, match=r"unknown scheduler 'xyz': IPVS knows rr, wrr"):
        make_scheduler("xyz", Service(ServiceKey(IPV4, Proto.TCP, VIP, 80)), DEFAULT)


def test_twos_needs_a_newer_kernel() -> None:
    svc = Service(ServiceKey(IPV4, Proto.TCP, VIP, 80), "twos")
    with pytest.raises(UnknownScheduler, match="twos"):
        make_scheduler("twos", svc, DEFAULT)
    s = make_scheduler("twos", svc, KernelLevel(6, 12, 117))
    assert s.exact is False and make_scheduler("rr", svc, DEFAULT).exact is True


def test_all_names_known() -> None:
    assert set(SCHEDULERS) == {
        "rr",
        "wrr",
        "sh",
        "mh",
        "dh",
        "lc",
        "wlc",
        "sed",
        "nq",
        "fo",
        "ovf",
        "lblc",
        "lblcr",
        "twos",
        "none",
    }


# ---- rr -------------------------------------------------------------------------------------


def test_rr_first_pick_is_newest_then_list_order() -> None:
    svc = Svc("rr")
    for n in "ABC":
        svc.add(n)
    assert svc.picks(6) == ["C", "B", "A", "C", "B", "A"]


def test_rr_added_dest_reached_at_next_wrap() -> None:
    svc = Svc("rr")
    for n in "ABC":
        svc.add(n)
    assert svc.picks(2) == ["C", "B"]
    svc.add("D")  # list D C B A, pointer on B
    assert svc.picks(5) == ["A", "D", "C", "B", "A"]


def test_rr_delete_picked_dest_moves_pointer_back() -> None:
    svc = Svc("rr")
    svc.add("A")
    b = svc.add("B")
    svc.add("C")
    assert svc.picks(2) == ["C", "B"]
    svc.delete(b)  # pointer was on B: back to C, next is B's successor A
    assert svc.picks(3) == ["A", "C", "A"]
    svc2 = Svc("rr")
    svc2.add("A"), svc2.add("B")
    c2 = svc2.add("C")
    assert svc2.pick() == "C"
    svc2.delete(c2)  # head entry deleted: pointer back to the head
    assert svc2.picks(2) == ["B", "A"]


def test_rr_skips_weight0_and_overloaded() -> None:
    svc = Svc("rr")
    a, b, c = svc.add("A"), svc.add("B"), svc.add("C")
    svc.edit(b, 0)
    c.overloaded = True
    assert svc.picks(3) == ["A", "A", "A"]
    a.overloaded = True
    assert svc.pick() is None


# ---- wrr ------------------------------------------------------------------------------------


def test_wrr_4_3_2_steady_cycle() -> None:
    svc = Svc("wrr")
    svc.add("C", 2), svc.add("B", 3), svc.add("A", 4)  # list order A=4, B=3, C=2
    seq = svc.picks(3 + 9 * 3)
    # fresh service: cw is 1 after the adds (first dest alone: gcd 2, mw 1), so one pass at
    # weight >= 1 comes first; then the steady cycle from cw = mw = 4.
    assert seq[:3] == ["A", "B", "C"]
    assert seq[3:] == list("AABABCABC") * 3


def test_wrr_first_add_state() -> None:
    svc = Svc("wrr")
    svc.add("A", 4)
    s = svc.s
    assert (s.di, s.mw, s.cw) == (4, 1, 1)  # type: ignore[attr-defined]


def test_wrr_edit_restarts_from_head() -> None:
    svc = Svc("wrr")
    svc.add("C", 2), svc.add("B", 3)
    a = svc.add("A", 4)
    svc.picks(3 + 4)  # ..., A A B A : now cw 3, cl A
    svc.edit(a, 4)  # same values: cl back to head, cw kept (di == 1)
    assert svc.picks(2) == ["A", "B"]


def test_wrr_all_overloaded_none() -> None:
    svc = Svc("wrr")
    a = svc.add("A", 2)
    a.overloaded = True
    assert svc.pick() is None
    empty = Svc("wrr")
    assert empty.pick() is None


# ---- sh -------------------------------------------------------------------------------------


def test_sh_bucket_check_values() -> None:
    svc = Svc("sh")
    svc.add("A")
    s = svc.s
    assert isinstance(s, SourceHashing)
    f = Flow(Proto.TCP, ipaddress.ip_address("10.0.0.1"), 1234, VIP, 80)
    assert s.bucket_of(f) == 39
    port_svc = Svc("sh", SvcFlag.SCHED2)
    port_svc.add("A")
    assert port_svc.s.bucket_of(f) == 128  # type: ignore[attr-defined]


def test_sh_table_weight_consecutive_and_weight0_one_bucket() -> None:
    svc = Svc("sh")
    a = svc.add("A", 1)
    svc.add("B", 2)
    svc.add("C", 0)
    s = svc.s
    assert isinstance(s, SourceHashing)
    names = [NAMES[int(d.addr) & 0xFF] for d in s.buckets if d is not None]
    assert names[:8] == ["C", "B", "B", "A", "C", "B", "B", "A"]
    # the weight-0 dest's bucket refuses its clients without fallback
    c_bucket = 0
    client = next(
        f"10.0.{i // 250}.{i % 250 + 1}"
        for i in range(5000)
        if s.bucket_of(
            Flow(Proto.TCP, ipaddress.ip_address(f"10.0.{i // 250}.{i % 250 + 1}"), 1, VIP, 80)
        )
        % 4
        == c_bucket
    )
    assert svc.pick(client) is None
    del a


def test_sh_fallback_probes_2h_plus_k() -> None:
    svc = Svc("sh", SvcFlag.SCHED1)
    a = svc.add("A", 1)
    b = svc.add("B", 1)  # buckets alternate B, A, B, A ...
    s = svc.s
    assert isinstance(s, SourceHashing)
    f = Flow(Proto.TCP, ipaddress.ip_address("10.0.0.1"), 1, VIP, 80)
    h = s.bucket_of(f)  # 39 -> odd -> A
    assert s.buckets[h] is a
    svc.edit(a, 0)  # rebuild; A stays in its buckets with weight 0
    assert s.buckets[h] is a
    expected = next(
        s.buckets[(2 * h + k) % 256] for k in range(256) if s.buckets[(2 * h + k) % 256] is not a
    )
    assert svc.pick("10.0.0.1") == NAMES[int(expected.addr) & 0xFF] == "B"
    del b


# ---- mh -------------------------------------------------------------------------------------


def test_mh_dest_permutation_check_values() -> None:
    d = DestState.from_dest(Dest(ipaddress.ip_address("192.168.10.11"), 80))
    assert dest_offset_skip(d) == (3834, 1607)


def test_mh_lookup_slot_and_table_full() -> None:
    svc = Svc("mh")
    for n in "ABC":
        svc.add(n)
    s = svc.s
    assert isinstance(s, MaglevHashing)
    assert all(d is not None for d in s.lookup)
    f = Flow(Proto.TCP, ipaddress.ip_address("10.0.0.1"), 1, VIP, 80)
    assert s.slot_of(f) == 3711
    counts = {
        n: sum(1 for d in s.lookup if d is not None and NAMES[int(d.addr) & 0xFF] == n)
        for n in "ABC"
    }
    assert sum(counts.values()) == MH_TAB_SIZE and max(counts.values()) - min(counts.values()) <= 1


def test_mh_first_slot_is_dest_offset() -> None:
    svc = Svc("mh")
    a = svc.add("A", 1)
    s = svc.s
    assert isinstance(s, MaglevHashing)
    assert s.lookup[dest_offset_skip(a)[0]] is a


def test_mh_weight0_moves_only_its_clients() -> None:
    svc = Svc("mh", SvcFlag.SCHED1)
    svc.add("A"), svc.add("B")
    c = svc.add("C")
    clients = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(600)]
    before = {cl: svc.pick(cl) for cl in clients}
    svc.edit(c, 0)
    after = {cl: svc.pick(cl) for cl in clients}
    moved = {cl for cl in clients if before[cl] != after[cl]}
    assert moved == {cl for cl in clients if before[cl] == "C"} and moved
    assert all(after[cl] in ("A", "B") for cl in moved)
    nofb = Svc("mh")
    nofb.add("A")
    x = nofb.add("B")
    nofb.edit(x, 0)
    assert any(nofb.pick(cl) is None for cl in clients[:50])


def test_mh_weights_share_proportionally() -> None:
    svc = Svc("mh")
    svc.add("A", 1)
    svc.add("B", 3)
    s = svc.s
    assert isinstance(s, MaglevHashing)
    b = sum(1 for d in s.lookup if d is not None and d.weight == 3)
    assert abs(b - 3 * MH_TAB_SIZE / 4) < 3


# ---- dh ---------------------------------------------------------------------------------------


def test_dh_one_server_per_vip() -> None:
    svc = Svc("dh")
    for n in "ABC":
        svc.add(n)
    picks = {svc.pick(f"10.2.0.{i}", 1000 + i) for i in range(1, 50)}
    assert len(picks) == 1
    from impl.siphash import hash_32

    assert picks == {"CBA"[hash_32(int(VIP), 8) % 3]}


# ---- lc / wlc / sed / nq / fo / ovf ------------------------------------------------------


def test_lc_overhead_by_level_and_ties() -> None:
    new, old = Svc("lc"), Svc("lc", level=KernelLevel(6, 1, 176))
    for svc in (new, old):
        a, b = svc.add("A"), svc.add("B")  # list B, A
        b.activeconns, b.totalconns = 1, 1  # 256 + 1 (new) / 256 + 0 (old)
        a.activeconns, a.totalconns = 0, 257  # 257 (new) / 257 (old)
    assert new.pick() == "B"  # tie 257 == 257: earlier entry (B) kept
    assert old.pick() == "B"  # 256 < 257
    new.dests[0].totalconns = 2  # B: 258 > 257
    assert new.pick() == "A"


def test_wlc_weights() -> None:
    svc = Svc("wlc")
    a, b = svc.add("A", 1), svc.add("B", 3)
    a.totalconns = 1
    b.totalconns = 3
    assert svc.pick() == "B"  # 3*1 > 1*3 is false: keep B
    b.totalconns = 4
    assert svc.pick() == "A"


def test_sed_and_nq() -> None:
    sed, nq = Svc("sed"), Svc("nq")
    for svc in (sed, nq):
        svc.add("A", 1)
        b = svc.add("B", 2)
        b.activeconns = 2  # sed: (2+1)/2 = 1.5 vs A (0+1)/1 = 1 -> A
    assert sed.pick() == "A" and nq.pick() == "A"
    for svc in (sed, nq):
        svc.dests[1].activeconns = 1  # A: 2/1 vs B: 3/2
    assert sed.pick() == "B" and nq.pick() == "B"
    nq.add("C", 1)  # idle: nq returns it at once
    assert nq.pick() == "C"


def test_fo_and_ovf() -> None:
    fo, ovf = Svc("fo"), Svc("ovf")
    for svc in (fo, ovf):
        svc.add("A", 5), svc.add("B", 5), svc.add("C", 1)
    assert fo.pick() == "B" and ovf.pick() == "B"  # tie: earlier (B before A)
    ovf.dests[1].activeconns = 6  # B over its weight
    assert ovf.pick() == "A"
    fo.dests[1].overloaded = True
    assert fo.pick() == "A"


# ---- lblc / lblcr -----------------------------------------------------------------------


def test_lblc_caches_by_destination() -> None:
    svc = Svc("lblc")
    a, b = svc.add("A"), svc.add("B")
    assert svc.pick() == "B"
    b.activeconns = b.totalconns = 1
    assert svc.pick() == "B"  # cached, not lblc-overloaded (active 1 <= weight 1)
    b.activeconns = b.totalconns = 2  # active > weight and A idle (0*2 < 1)
    assert svc.pick() == "A"
    svc.s.now = 86400.0 + 1
    a.activeconns = a.totalconns = 5
    assert svc.pick() == "B"  # entry expired: fresh wlc pick


def test_lblcr_grows_set_and_expires_members() -> None:
    svc = Svc("lblcr")
    a, b = svc.add("A"), svc.add("B")
    assert svc.pick() == "B"
    b.activeconns = b.totalconns = 2
    assert svc.pick() == "A"  # B lblc-overloaded: A joins the set
    b.activeconns = b.totalconns = 0
    assert svc.pick() == "A"  # set is [A, B] (newest first); tie keeps A
    svc.s.now = 1000.0
    svc.s.expiration = 500.0  # type: ignore[attr-defined]
    a.activeconns = a.totalconns = 3
    assert svc.pick() == "B"
    assert [d for d in svc.s.cache[VIP].members] == [b]  # type: ignore[attr-defined]


def test_none_never_schedules() -> None:
    svc = Svc("none")
    svc.add("A")
    assert svc.pick() is None


def test_twos_picks_eligible() -> None:
    svc = Svc("twos", level=KernelLevel(6, 12, 117))
    a, b = svc.add("A", 2), svc.add("B", 0)
    assert set(svc.picks(20)) == {"A"}
    del a, b


# ---- the inlined wlc loop equals the generic one ------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from impl.schedulers.wlc import weighted_least, wlc_pick  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 50), st.integers(0, 300), st.booleans()),
        max_size=6,
    ),
    st.sampled_from([KernelLevel(6, 1, 176), KernelLevel(6, 1, 192)]),
)
def test_wlc_pick_matches_generic_loop(
    rows: list[tuple[int, int, int, bool]], level: KernelLevel
) -> None:
    svc = Svc("wlc", level=level)
    for i, (w, act, inact, over) in enumerate(rows):
        d = DestState.from_dest(Dest(ipaddress.IPv4Address(f"198.18.10.{11 + i}"), 80, w))
        d.activeconns, d.totalconns, d.overloaded = act, act + inact, over
        svc.dests.append(d)
    assert wlc_pick(svc.dests, level.totalconns) is weighted_least(svc.dests, svc.s.overhead)


def test_wrr_overloaded_dest_skipped_and_cycle_kept() -> None:
    svc = Svc("wrr")
    svc.add("B", 1)
    a = svc.add("A", 2)  # list A=2, B=1: di 1, mw 2; fresh cw is 1
    assert svc.picks(5) == ["A", "B", "A", "A", "B"]
    a.overloaded = True  # no hook: the walk just skips A
    assert svc.picks(3) == ["B", "B", "B"]
    b = svc.dests[1]
    b.overloaded = True
    assert svc.pick() is None  # every dest overloaded: NULL after one pass at weight >= 1
    b.overloaded = False
    assert svc.pick() == "B"


def test_mh_large_weights_are_shifted() -> None:
    svc = Svc("mh")
    svc.add("A", 1)
    svc.add("B", 1000)  # fls(1000) = 10 > 6: rshift 4, turns 62 and 1 (0 -> 1 as lw != 0)
    s = svc.s
    assert isinstance(s, MaglevHashing)
    assert (s.gcd, s.rshift) == (1, 4)
    a_slots = sum(1 for d in s.lookup if d is not None and d.weight == 1)
    assert 0 < a_slots < MH_TAB_SIZE // 40  # about 1/63 of the table


def test_sh_ipv6_client_hashes_folded_words() -> None:
    from impl.schedulers.sh import sh_hashkey
    from impl.siphash import fold_addr, hash_32

    c = ipaddress.ip_address("2001:db8:c0::1")
    assert sh_hashkey(fold_addr(c), 0) == hash_32(0x20010DB8 ^ 0x00C00000 ^ 0 ^ 1, 8)
