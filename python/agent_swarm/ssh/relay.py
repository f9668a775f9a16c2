"""Bytes between this process's stdin/stdout and a TCP connection (``ssh-proxy``)."""

from __future__ import annotations

import os
import selectors
import socket
import sys

from agent_swarm.errors import SSHError


def relay_stdio(host: str, port: int, *, timeout: float = 60) -> None:
    """Until the server closes. EOF on stdin is passed on as a half-close (the socket's
    write side), so `ssh` still gets the server's last bytes."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise SSHError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    sock.settimeout(None)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(stdin, 65536)
                    if data:
                        sock.sendall(data)
                    else:
                        sel.unregister(stdin)
                        sock.shutdown(socket.SHUT_WR)
                else:
                    data = sock.recv(65536)
                    if data:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(stdout, view) :]
                    else:
                        return
    finally:
        sock.close()
