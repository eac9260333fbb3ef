"""Schedulers driven by the core Director (impl.director) through ipvsadm rules: the list order
and hook calls the core makes must give the kernel's sequences."""

from __future__ import annotations

import ipaddress

from impl.director import Director
from impl.ipvsadm import apply, parse_rules
from impl.types import Flow, Proto

VIP = ipaddress.ip_address("198.19.0.1")


def _picks(rules: str, n: int) -> list[str]:
    d = Director()
    apply(d, parse_rules(rules, "r"))
    out = []
    for i in range(n):
        v = d.packet(
            Flow(Proto.TCP, ipaddress.ip_address(f"198.18.16.{1 + i}"), 40000 + i, VIP, 80),
            float(i),
        )
        assert v.kind == "forward" and v.dest is not None
        out.append("ABCD"[int(v.dest) - int(ipaddress.ip_address("198.18.10.11"))])
    return out


def test_rr_through_director_newest_first() -> None:
    rules = "-A -t 198.19.0.1:80 -s rr\n" + "".join(
        f"-a -t 198.19.0.1:80 -r 198.18.10.{11 + i}\n" for i in range(3)
    )
    assert _picks(rules, 6) == ["C", "B", "A", "C", "B", "A"]


def test_wrr_through_director_fresh_service() -> None:
    # added C(2), B(3), A(4): list A, B, C with weights 4, 3, 2
    rules = (
        "-A -t 198.19.0.1:80 -s wrr\n-a -t 198.19.0.1:80 -r 198.18.10.13 -w 2\n"
        "-a -t 198.19.0.1:80 -r 198.18.10.12 -w 3\n-a -t 198.19.0.1:80 -r 198.18.10.11 -w 4\n"
    )
    assert _picks(rules, 12) == ["A", "B", "C"] + list("AABABCABC")


def test_sh_through_director_follows_bucket_table() -> None:
    d = Director()
    apply(
        d,
        parse_rules(
            "-A -t 198.19.0.1:80 -s sh\n-a -t 198.19.0.1:80 -r 198.18.10.11\n"
            "-a -t 198.19.0.1:80 -r 198.18.10.12 -w 2\n",
            "r",
        ),
    )
    from impl.schedulers.sh import sh_hashkey
    from impl.siphash import fold_addr

    for host in range(1, 40):
        c = ipaddress.ip_address(f"198.18.16.{host}")
        v = d.packet(Flow(Proto.TCP, c, 40000, VIP, 80), 0.0)
        # list: .12 (weight 2) then .11 (weight 1): buckets .12 .12 .11 repeating
        want = "198.18.10.11" if sh_hashkey(fold_addr(c), 0) % 3 == 2 else "198.18.10.12"
        assert str(v.dest) == want


def test_lblc_cache_entry_expires_through_director() -> None:
    d = Director()
    apply(
        d,
        parse_rules(
            "-A -t 198.19.0.1:80 -s lblc\n-a -t 198.19.0.1:80 -r 198.18.10.11\n"
            "-a -t 198.19.0.1:80 -r 198.18.10.12\n",
            "r",
        ),
    )

    def send(host: int, at: float) -> str:
        v = d.packet(Flow(Proto.TCP, ipaddress.ip_address(f"198.18.16.{host}"), 40000, VIP, 80), at)
        return str(v.dest)

    # B (.12, newest) is cached until it is lblc-overloaded (2 active > weight 1, A idle)
    assert [send(1, 0.0), send(2, 0.0), send(3, 0.0)] == ["198.18.10.12"] * 2 + ["198.18.10.11"]
    # a day later (+ the kernel's 30 min full-check period): the entry for the VIP is gone, and
    # with every connection expired the wlc pick is the head again
    assert send(4, 86400 + 1800 + 60) == "198.18.10.12"
