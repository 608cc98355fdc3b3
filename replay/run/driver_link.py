"""`DriverLink`: how replay workers learn, within a fraction of a second, that their driver is gone.

Ray ends a dead driver's actors only once its control plane has noticed (measured: workers went on
sending for 2.5 s after the driver was SIGKILLed). Here the driver listens on a TCP port of its own
node (`DriverLink.listen`), every worker connects to it when it starts (`DriverLink.watch`) and one
thread of the worker blocks reading the connection. Nothing is ever sent on it: when the driver's
process ends, however it ends (SIGKILL included), its kernel closes the socket, the worker's read
returns at once, and the worker stops sending (replay/run/worker.py). A worker on another node
learns it the same way, as soon as the FIN or RST crosses the network; a node whose network is cut
falls back on TCP keep-alive (`KEEPALIVE_IDLE_S` + `KEEPALIVE_PROBES` x `KEEPALIVE_INTERVAL_S`).

A worker that cannot connect (a firewall between the nodes) says so in one line and runs without
the watch: Ray still ends it, later.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_IDLE_S = 2
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_PROBES = 3
DRIVER_LOST_STOP_S = 0.2  # a worker's dispatcher notices a cancel at least this often


class DriverLink:
    """The driver's listening side (`listen`) or a worker's connected side (`watch`)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._peers: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- the driver ------------------------------------------------------------------------------
    @classmethod
    def listen(cls, host: str) -> DriverLink:
        """Listen on `host` (the driver node's address, as the workers reach it), on a free port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(256)
        link = cls(sock)
        link._thread = threading.Thread(target=link._accept_forever, name="driver-link", daemon=True)
        link._thread.start()
        return link

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def _accept_forever(self) -> None:
        while True:
            try:
                peer, _ = self._sock.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._closed:
                    peer.close()
                    return
                self._peers.append(peer)

    # -- a worker --------------------------------------------------------------------------------
    @classmethod
    def watch(cls, address: tuple[str, int], on_lost: Callable[[], None]) -> DriverLink | None:
        """Connect to the driver at `address`; `on_lost` is called (once, from the watching thread)
        when the connection ends, unless this side closed it first. None when it cannot connect."""
        try:
            sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            print(
                f"replay worker: cannot watch the driver at {address[0]}:{address[1]} ({exc}); "
                "if the driver dies, Ray stops this worker later",
                flush=True,
            )
            return None
        sock.settimeout(None)
        _keep_alive(sock)
        link = cls(sock)
        link._thread = threading.Thread(
            target=link._read_until_closed, args=(on_lost,), name="driver-watch", daemon=True
        )
        link._thread.start()
        return link

    def _read_until_closed(self, on_lost: Callable[[], None]) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except OSError:
                data = b""
            if not data:
                break
        with self._lock:
            closed_here = self._closed
        if not closed_here:
            on_lost()

    # -- both ------------------------------------------------------------------------------------
    def close(self) -> None:
        """End the link from this side (no `on_lost` here; a worker sees the driver close it)."""
        with self._lock:
            self._closed = True
            peers, self._peers = self._peers, []
        for sock in [*peers, self._sock]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def _keep_alive(sock: socket.socket) -> None:
    """TCP keep-alive, so a silently cut network ends the read too (Linux options where present)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
