"""Endpoints that misbehave on purpose, and a Lambda context whose time runs out.

Each :class:`HostileServer` listens on a free 127.0.0.1 port, accepts in a thread of its own and
plays one behaviour per connection (a thread each) until the client goes away or the test stops
it. It counts what happened so a test can wait for it (``wait_until(lambda: server.ended ...)``).
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from devstack.lambdas import LambdaContext

MIB = 2**20


class Connection:
    """One accepted connection, as a behaviour sees it."""

    def __init__(self, sock: socket.socket, stop: threading.Event, server: HostileServer) -> None:
        self.sock = sock
        self.stop = stop
        self._server = server

    def read_request(self) -> bytes:
        """The request's head and body (by Content-Length), or what came before EOF."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self._server.count_sent(len(data))

    def trickle(self, data: Iterable[bytes], interval_s: float) -> None:
        """Send ``data`` piece by piece, ``interval_s`` apart, until the client leaves or the
        test stops us. Between pieces it watches the socket, so a client that shuts the
        connection is seen at once, not at the next piece."""
        for piece in data:
            self.send(piece)
            readable, _, _ = select.select([self.sock], [], [], interval_s)
            if self.stop.is_set() or (readable and not self.sock.recv(65536)):
                return

    def wait_for_client_to_leave(self) -> None:
        """Hold the connection without a word until the client closes it (or the test ends)."""
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                if not self.sock.recv(65536):
                    return
            except TimeoutError:
                continue


Behaviour = Callable[[Connection], None]


@dataclass
class HostileServer:
    behaviour: Behaviour
    accepted: int = 0
    ended: int = 0  # connections whose behaviour is over (client gone, or done)
    completed: int = 0  # ... that ran to their end without the client breaking off
    sent_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _open: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop sees stop()
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def count_sent(self, count: int) -> None:
        with self._lock:
            self.sent_bytes += count

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(10)  # a client that neither reads nor leaves cannot hang the test
            with self._lock:
                self.accepted += 1
                self._open.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        completed = False
        try:
            self.behaviour(Connection(sock, self._stop, self))
            completed = not self._stop.is_set()
        except OSError:
            pass  # the client broke off: that is what these servers are for
        finally:
            sock.close()
            with self._lock:
                self.ended += 1
                self.completed += int(completed)

    def __enter__(self) -> HostileServer:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a behaviour blocked in send or recv
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()


# -- behaviours ---------------------------------------------------------------------------------

TRICKLE_S = 0.5


def slow_headers(connection: Connection) -> None:
    """A slow-loris: the status line and then one endless header, a byte every 0.5 s."""
    connection.read_request()
    head = b"HTTP/1.1 200 OK\r\nX-Drip: "
    pieces = itertools.chain((head[i : i + 1] for i in range(len(head))), itertools.repeat(b"a"))
    connection.trickle(pieces, TRICKLE_S)


def status_then_slow_headers(connection: Connection) -> None:
    """The status line at once, then one endless header, a byte every 0.5 s."""
    connection.read_request()
    connection.send(b"HTTP/1.1 200 OK\r\nX-Drip: ")
    connection.trickle(itertools.repeat(b"a"), TRICKLE_S)


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"


def endless_body(connection: Connection) -> None:
    """Headers at once, then a body (no length) that never ends, as fast as it goes."""
    connection.read_request()
    connection.send(OK_HEAD)
    chunk = b"x" * 65536
    while not connection.stop.is_set():
        connection.send(chunk)


def trickling_body(connection: Connection) -> None:
    """Headers at once, then a body that never ends, a byte every 0.5 s."""
    connection.read_request()
    connection.send(OK_HEAD)
    connection.trickle(itertools.repeat(b"x"), TRICKLE_S)


BIG_BODY_BYTES = 50 * MIB


def big_body(connection: Connection) -> None:
    """A 50 MB answer with its Content-Length, sent as fast as the client takes it."""
    connection.read_request()
    connection.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        + f"Content-Length: {BIG_BODY_BYTES}\r\n\r\n".encode()
    )
    chunk = b"x" * MIB
    for _ in range(BIG_BODY_BYTES // MIB):
        connection.send(chunk)


def silent(connection: Connection) -> None:
    """Accepts, reads the request, and never answers."""
    connection.read_request()
    connection.wait_for_client_to_leave()


def slow_tls_handshake(connection: Connection) -> None:
    """Takes the ClientHello, then trickles a TLS record header and its body a byte at a time:
    the handshake waits on every byte, and no single read ever times out."""
    connection.sock.recv(65536)
    record = b"\x16\x03\x03\x40\x00"  # handshake record, 16 KiB long
    pieces = itertools.chain((record[i : i + 1] for i in range(5)), itertools.repeat(b"\x00"))
    connection.trickle(pieces, TRICKLE_S)


def answers_slowly(status: int, after_s: float, retry_after: str = "0") -> Behaviour:
    """Every request answered ``status`` after ``after_s`` (waited on the server's stop)."""

    def behaviour(connection: Connection) -> None:
        connection.read_request()
        if connection.stop.wait(after_s):
            return
        connection.send(
            f"HTTP/1.1 {status} Busy\r\nRetry-After: {retry_after}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )

    return behaviour


def refused_url() -> str:
    """A 127.0.0.1 URL whose port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- Lambda time --------------------------------------------------------------------------------


class CountdownContext(LambdaContext):
    """A Lambda context whose remaining time runs down from ``remaining_s`` like the real one."""

    def __init__(self, remaining_s: float, function_name: str = "spotline-local") -> None:
        super().__init__(function_name=function_name)
        self.ends_at = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends_at - time.monotonic()) * 1000))


def elapsed_s(started: float) -> float:
    return time.monotonic() - started
