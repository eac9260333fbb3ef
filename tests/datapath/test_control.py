"""Control channel, config file and process entry point of the datapath (no namespaces)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from impl.datapath.codec import CodecError, dumps, loads
from impl.datapath.config import ConfigError, DatapathConfig
from impl.datapath.control import MAX_LINE, ControlClient, ControlError, ControlServer
from impl.scenario import Scenario, ServiceConfig
from impl.types import IPV6, Dest, Fwd, FwmarkRule, Proto, Service, ServiceKey, SvcFlag, Template

A = ipaddress.ip_address
KEY = ServiceKey(IPV6, Proto.UDP, A("2001:db8:f::1"), 53)
SCENARIO = Scenario(
    "c",
    (
        ServiceConfig(
            Service(KEY, "sh", 30, netmask=64, sched_flags=SvcFlag.SCHED1),
            (Dest(A("2001:db8:a::11"), 5353, 2, Fwd.NAT),),
        ),
    ),
    (),
    fwmark_rules=(FwmarkRule(3, IPV6, ipaddress.ip_network("2001:db8:f::/64"), None, (1, 9)),),
)


def test_codec_round_trips_the_vocabulary() -> None:
    assert loads(dumps(SCENARIO)) == SCENARIO
    tpl = Template(
        IPV6,
        Proto.UDP,
        A("2001:db8:c0::"),
        0,
        A("2001:db8:f::1"),
        53,
        A("2001:db8:a::11"),
        5353,
        "NONE",
        29,
    )
    assert loads(dumps([tpl, {"x": (1, b"\x00")}])) == [tpl, {"x": (1, b"\x00")}]


def test_codec_refuses_unknown_types() -> None:
    with pytest.raises(CodecError, match="unknown type 'os.system'"):
        loads(json.dumps({"$": "os.system"}))


def test_config_round_trip_and_targets(tmp_path: Path) -> None:
    config = DatapathConfig(
        SCENARIO,
        "dcl0",
        "dbr0",
        {A("2001:db8:a::11"): "02:00:00:00:00:01"},
        (ipaddress.ip_network("2001:db8:c0::/48"),),
    )
    config.dump(tmp_path / "c.json")
    again = DatapathConfig.load(tmp_path / "c.json")
    assert again == config
    assert [str(n) for n in again.targets()] == ["2001:db8:f::1/128", "2001:db8:f::/64"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not JSON"),
        ('{"scenario": 1, "client_if": "a", "segment_if": "b"}', "'scenario' must be a Scenario"),
        ('{"client_if": "a"}', "missing"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        DatapathConfig.load(path)


def test_process_rejects_a_missing_config_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "impl.datapath",
            "--config",
            str(tmp_path / "nope.json"),
            "--control",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lvsconf-datapath: cannot read datapath config {tmp_path / 'nope.json'}: "
        "No such file or directory"
    ]


def test_control_round_trip_over_a_unix_socket(tmp_path: Path) -> None:
    calls: list[object] = []
    selector = selectors.DefaultSelector()
    handlers = {
        "echo": lambda a: a,
        "add_dest": lambda a: calls.append((a["key"], a["dest"])),
        "boom": lambda a: 1 / 0,
    }
    server = ControlServer(tmp_path / "ctl", selector, handlers)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                key.data()

    thread = threading.Thread(target=loop)
    thread.start()
    client = ControlClient(tmp_path / "ctl", timeout=10)
    try:
        dest = Dest(A("2001:db8:a::12"), 0, 0, Fwd.TUN)
        assert client.call("echo", x=(1, 2), key=KEY) == {"x": (1, 2), "key": KEY}
        assert client.call("add_dest", key=KEY, dest=dest) is None
        assert calls == [(KEY, dest)]
        with pytest.raises(ControlError, match="ZeroDivisionError"):
            client.call("boom")
        with pytest.raises(ControlError, match="unknown op 'nope'"):
            client.call("nope")
        assert client.call("echo") == {}  # the connection survives refused requests
    finally:
        client.close()
        stop.set()
        thread.join(timeout=10)
        server.close()
    assert not (tmp_path / "ctl").exists()
    with pytest.raises(ControlError, match="unreachable"):
        ControlClient(tmp_path / "ctl").call("echo")


@contextlib.contextmanager
def serving(path: Path, handlers: dict[str, Any], **limits: int) -> Iterator[ControlServer]:
    """The server driven by a loop thread, as the datapath's packet loop drives it."""
    selector = selectors.DefaultSelector()
    server = ControlServer(path, selector, handlers, **limits)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                key.data()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the control loop is stuck"
        server.close()


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def test_a_client_that_asks_without_reading_is_dropped_and_stalls_nothing(
    tmp_path: Path,
) -> None:
    """Regression: answers were sent with a blocking sendall from the packet loop, so a client
    that never read froze forwarding and every other client."""
    path = tmp_path / "ctl"
    with serving(path, {"echo": lambda a: a}, max_pending=64 * 1024):
        flood = _connect(path)
        requests = b'{"op":"echo","args":{"pad":"' + b"x" * 200 + b'"}}\n'
        dropped = False
        try:
            for _ in range(400):  # 400 x 230 kB of requests; never a byte read
                flood.sendall(requests * 1000)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
        except TimeoutError:
            pass  # the server stopped reading: it is stuck answering
        finally:
            other = ControlClient(path, timeout=5)
            try:
                assert other.call("echo", x=1) == {"x": 1}  # the loop still answers others
            finally:
                other.close()
                flood.close()
        assert dropped, "a client that never reads was not dropped"


def test_a_request_line_longer_than_the_cap_is_refused_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "ctl"
    with serving(path, {"echo": lambda a: a}):
        sock = _connect(path)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"x" * (16 * MAX_LINE))  # no newline, ever
            received = b""
            with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
                while chunk := sock.recv(65536):  # until the server hangs up (10 s timeout)
                    received += chunk
        finally:
            sock.close()
        refusal = {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"}
        assert not received or json.loads(received) == refusal
        other = ControlClient(path, timeout=5)
        try:
            assert other.call("echo") == {}
        finally:
            other.close()
