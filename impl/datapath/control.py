"""The control channel: one JSON object per line over a unix stream socket.

Request ``{"op": NAME, "args": {...}}`` (args encoded with :mod:`impl.datapath.codec`); answer
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one line"}``. Ops: ``now``,
``templates`` (objects and the /proc/net/ip_vs_conn text), ``connections``, ``add_dest``,
``edit_dest``, ``del_dest``, ``edit_service``, ``set_sysctl``, ``stats``, ``stop``.

The server side is non-blocking and driven by the process's selector loop, so the model is only
ever touched from one thread (no locks around it).
"""

from __future__ import annotations

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


class ControlServer:
    """Accepts connections on ``path`` and answers requests with ``handlers[op](args)``."""

    def __init__(
        self, path: Path, selector: selectors.BaseSelector, handlers: dict[str, Handler]
    ) -> None:
        self.path = path
        self.selector = selector
        self.handlers = handlers
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self._buffers: dict[socket.socket, bytearray] = {}
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        self.selector.unregister(self.sock)
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._buffers[conn] = bytearray()
        self.selector.register(conn, selectors.EVENT_READ, lambda: self._readable(conn))

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        self.selector.unregister(conn)
        conn.close()

    def _readable(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        buf = self._buffers[conn]
        buf += chunk
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            answer = self.answer(line)
            conn.setblocking(True)  # answers are small; a blocking send keeps this simple
            try:
                conn.sendall(answer)
            except OSError:
                self._drop(conn)
                return
            conn.setblocking(False)

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
