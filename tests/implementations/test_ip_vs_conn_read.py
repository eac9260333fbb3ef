"""Reading /proc/net/ip_vs_conn (harness/implementations/kernel.py): a listing with a repeated
row, which seq_file's walk of a changing hash table can produce, is read again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness.implementations import kernel

HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
LIVE = "UDP C61210 0000 C6130001 13C4 C6120A0C 0000 NONE         13 sip    call-1\n"
DEAD = "UDP C6121001 0000 C6130001 FFFF C6120A0D FFFF NONE         13 sip    call-1\n"


def reads(monkeypatch: pytest.MonkeyPatch, listings: list[str]) -> list[str]:
    """Make the kernel's reads return ``listings`` in turn; the list of reads made so far."""
    done: list[str] = []

    def fake(netns: str, fn: Callable[[], Any]) -> str:
        text = listings[min(len(done), len(listings) - 1)]
        done.append(text)
        return text

    monkeypatch.setattr(kernel, "in_netns", fake)
    return done


def test_a_row_listed_twice_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    done = reads(monkeypatch, [HEADER + LIVE + DEAD + DEAD, HEADER + LIVE + DEAD])
    assert kernel.read_ip_vs_conn("ns") == HEADER + LIVE + DEAD
    assert len(done) == 2


def test_a_row_that_stays_twice_is_the_kernels_state(monkeypatch: pytest.MonkeyPatch) -> None:
    twice = HEADER + DEAD + DEAD
    done = reads(monkeypatch, [twice])
    assert kernel.read_ip_vs_conn("ns") == twice
    assert len(done) == 1 + kernel.REREADS  # bounded


def test_a_clean_listing_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    done = reads(monkeypatch, [HEADER + LIVE + DEAD])
    assert kernel.read_ip_vs_conn("ns") == HEADER + LIVE + DEAD
    assert len(done) == 1
