"""The control channel: one JSON object per line over a unix stream socket.

Request ``{"op": NAME, "args": {...}}`` (args encoded with :mod:`impl.datapath.codec`); answer
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one line"}``. Ops: ``now``,
``templates`` (objects and the /proc/net/ip_vs_conn text), ``connections``, ``add_dest``,
``edit_dest``, ``del_dest``, ``edit_service``, ``set_sysctl``, ``stats``, ``stop``.

The server side is non-blocking and driven by the process's selector loop, so the model is only
ever touched from one thread (no locks around it), and no client can stall that loop (which
also forwards the packets): see :class:`ControlServer`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from impl.datapath.codec import from_jsonable, to_jsonable

Handler = Callable[[dict[str, Any]], Any]


class ControlError(RuntimeError):
    """The datapath process refused a control request or cannot be reached."""


#: longest request line; a longer one is refused and its client dropped
MAX_LINE = 64 * 1024
#: answers a client may leave unread on top of the one being sent before it is dropped
MAX_PENDING = 4 * 1024 * 1024


class _Client:
    __slots__ = ("sock", "inbuf", "outbuf", "events")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.events = selectors.EVENT_READ


class ControlServer:
    """Accepts connections on ``path`` and answers requests with ``handlers[op](args)``.

    The same loop reads the TUN device, so nothing here may block on a client: sockets are
    non-blocking, each client's answers wait in its own buffer until the socket is writable,
    a request line longer than ``max_line`` is refused, and a client that keeps asking
    without reading (more than ``max_pending`` bytes of answers waiting) is dropped.
    """

    def __init__(
        self,
        path: Path,
        selector: selectors.BaseSelector,
        handlers: dict[str, Handler],
        max_line: int = MAX_LINE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.path = path
        self.selector = selector
        self.handlers = handlers
        self.max_line = max_line
        self.max_pending = max_pending
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self._clients: dict[socket.socket, _Client] = {}
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        self.selector.unregister(self.sock)
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        client = self._clients[conn] = _Client(conn)
        self.selector.register(conn, client.events, lambda: self._service(client))

    def _drop(self, client: _Client) -> None:
        if self._clients.pop(client.sock, None) is not None:
            self.selector.unregister(client.sock)
            client.sock.close()

    def _service(self, client: _Client) -> None:
        """Readable or writable: take what arrived, answer it, send what the socket takes."""
        if self._receive(client):
            self._flush(client)

    def _receive(self, client: _Client) -> bool:
        try:
            chunk = client.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(client)
            return False
        client.inbuf += chunk
        while True:
            end = client.inbuf.find(b"\n", 0, self.max_line + 1)
            if end < 0:
                break
            line = bytes(client.inbuf[:end])
            del client.inbuf[: end + 1]
            answer = self.answer(line)
            if client.outbuf and len(client.outbuf) + len(answer) > self.max_pending:
                self._drop(client)  # asks and asks, never reads
                return False
            client.outbuf += answer
        if len(client.inbuf) > self.max_line:
            refusal = {"ok": False, "error": f"request line longer than {self.max_line} bytes"}
            with contextlib.suppress(OSError):
                client.sock.send(json.dumps(refusal).encode() + b"\n")
            self._drop(client)
            return False
        return True

    def _flush(self, client: _Client) -> None:
        if client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._drop(client)
                return
            del client.outbuf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        if events != client.events:
            client.events = events
            self.selector.modify(client.sock, events, lambda: self._service(client))

    def answer(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
            op = request.get("op")
            handler = self.handlers.get(op)
            if handler is None:
                raise ControlError(f"unknown op {op!r}; known: {', '.join(sorted(self.handlers))}")
            result = handler(from_jsonable(request.get("args", {})))
            reply: dict[str, Any] = {"ok": True, "result": to_jsonable(result)}
        except Exception as exc:  # noqa: BLE001 - any failure goes back as one line
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


class ControlClient:
    """The harness side: ``client.call("templates")`` etc. One connection, one request at a time."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                raise ControlError(
                    f"datapath control socket {self.path} unreachable: "
                    f"{exc.strerror or exc} (is the process running?)"
                ) from None
            self._sock = sock
        return self._sock

    def call(self, op: str, **args: Any) -> Any:
        sock = self._connect()
        payload = json.dumps({"op": op, "args": to_jsonable(args)}).encode() + b"\n"
        deadline = time.monotonic() + self.timeout
        try:
            sock.sendall(payload)
            while b"\n" not in self._buf:
                if time.monotonic() > deadline:
                    raise ControlError(f"datapath did not answer {op!r} within {self.timeout}s")
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError(f"datapath closed the control channel during {op!r}")
                self._buf += chunk
        except OSError as exc:
            self.close()
            raise ControlError(f"datapath control call {op!r} failed: {exc}") from None
        line, _, self._buf = self._buf.partition(b"\n")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(f"datapath refused {op!r}: {reply.get('error')}")
        return from_jsonable(reply.get("result"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""
