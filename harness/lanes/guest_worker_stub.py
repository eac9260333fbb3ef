"""What xdist runs as a guest worker's python (harness/lanes/guest_workers.py).

It hands its stdin, stdout and stderr to the zygote, which forks the worker, waits until the
worker exits and exits with its status. Without a zygote it execs the interpreter with the same
arguments. Started with ``python -S`` and kept to the standard library: its own start is on the
worker's path.
"""

import json
import os
import socket
import sys


def main() -> None:
    path = os.environ.get("LVSCONF_GUEST_ZYGOTE", "")
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        request = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    except OSError:
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    received = b""
    while chunk := conn.recv(4096):  # the worker holds the other end until it exits
        received += chunk
    sys.exit(received[-1] if received else 1)  # its status; none: it was killed


main()
