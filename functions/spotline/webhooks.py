"""HTTP delivery to chat webhooks and callbacks: one session, timeouts, bounded retries, and a
deadline for the whole delivery.

Retries only what can succeed later (connection errors, 429, 5xx), honouring ``Retry-After``.

The deadline covers everything (DNS, connect, TLS, sending, headers, body, retries, backoff).
``requests``' timeouts are per socket operation: an endpoint that trickles its headers one byte a
second never trips a 3 s read timeout and once held an 8 s delivery for more than 45 s. So each
attempt runs in a helper thread that the caller waits for only until the deadline; at the
deadline the attempt's sockets are shut down (a blocked ``recv`` returns at once) and the
delivery is reported failed. A DNS lookup cannot be interrupted: its thread is left to finish on
its own, and the connection it makes afterwards is shut before a byte is sent. The response body
is read up to a small cap, never whole: the status code is what matters.
"""

# The deadline every outbound call honours is three layers: the time budget (deadlines.py),
# sockets shut at the deadline and the retrying client (here, with the requests adapter in
# deadline_adapter.py, imported on the first delivery), read together.

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from spotline.deadlines import Deadline, DeadlineExceeded, run_within

if TYPE_CHECKING:
    import requests

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Enough for any chat service's or receiver's answer ("ok", a short JSON error); the rest of a
# larger body is dropped with the connection.
MAX_RESPONSE_BYTES = 64 * 1024
READ_CHUNK_BYTES = 8 * 1024
DEADLINE_EXCEEDED = "DeadlineExceeded"


@dataclass(frozen=True)
class Delivery:
    ok: bool
    status: int | None
    attempts: int
    error: str | None = None


class DeliveryFailed(RuntimeError):
    def __init__(self, channel: str, delivery: Delivery) -> None:
        super().__init__(
            f"{channel}: delivery failed after {delivery.attempts} attempts"
            f" (status {delivery.status}, {delivery.error})"
        )
        self.channel = channel
        self.delivery = delivery


# -- sockets shut down at the deadline ---------------------------------------------------------


class SocketWatch:
    """The sockets one attempt uses, shut down when its deadline passes.

    It holds duplicates of the sockets' descriptors, ours to close: shutting one down ends the
    connection for every holder (a TLS wrapper included), and a descriptor number that the
    attempt closed and the process reused for something else is never touched.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock``; once expired, shut it down and raise DeadlineExceeded instead."""
        try:
            descriptor = os.dup(sock.fileno())
        except OSError:
            return  # already closed: nothing left to wait on
        try:
            duplicate = socket.socket(fileno=descriptor)
        except OSError:
            os.close(descriptor)
            return
        with self._lock:
            if not self._expired:
                self._sockets.append(duplicate)
                return
        _shut(duplicate)
        raise DeadlineExceeded("the deadline passed before the connection was made")

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def release(self) -> None:
        """The attempt is over: close our duplicates (a kept-alive connection stays open)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shut(sock: socket.socket) -> None:
    # Not connected (yet or any more): then closing is all there is to do.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# The attempt's watch, for the connections it opens or reuses: urllib3 gives a connection no
# way to carry it, and each attempt runs in a thread of its own.
_current_attempt = threading.local()


def _watch(sock: socket.socket | None) -> None:
    watch: SocketWatch | None = getattr(_current_attempt, "watch", None)
    if watch is not None and sock is not None:
        watch.attach(sock)


class _WatchedSockets:
    """Connection mix-in: a new socket is watched as soon as it connects (before TLS), a
    kept-alive one from the pool when a request is sent on it."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        try:
            _watch(sock)
        except DeadlineExceeded:
            sock.close()
            raise
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            _watch(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedSockets, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedSockets, HTTPSConnection):
    pass


class WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection  # type: ignore[assignment]


def deadline_session() -> requests.Session:
    """A session whose connections are shut down at their attempt's deadline."""
    # requests (20-30 ms) loads here, when a client makes its session on its first delivery,
    # not when a function that may deliver imports this module at cold start.
    import requests

    from spotline.deadline_adapter import DeadlineAdapter

    session = requests.Session()
    session.mount("http://", DeadlineAdapter())
    session.mount("https://", DeadlineAdapter())
    return session


def read_at_most(response: requests.Response, limit_bytes: int) -> int:
    """Read and drop up to ``limit_bytes`` of the body (undecoded: a compressed bomb stays
    small); return how many were read."""
    raw = response.raw
    if raw is None:
        return 0
    total = 0
    while total < limit_bytes:
        chunk = raw.read(min(READ_CHUNK_BYTES, limit_bytes - total), decode_content=False)
        if not chunk:
            break
        total += len(chunk)
    return total


def _close(response: requests.Response) -> None:
    # A body left unread closes the connection rather than draining it into the pool.
    if response.raw is not None:
        response.close()


# -- the client ---------------------------------------------------------------------------------


def retry_after_s(value: str | None, default_s: float) -> float:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return default_s
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default_s


class _Answer:
    """What one attempt heard before its deadline: the status counts as soon as the headers
    are in, so a body cut off at the deadline changes nothing.

    Nothing heard after the deadline counts. Shutting the socket down looks like the peer
    closing it, and ``http.client`` takes that for the end of the headers: a slow-loris that
    had sent its status line would otherwise read as a clean 200.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.status: int | None = None
        self.retry_after: str | None = None

    def heard(self, status: int, retry_after: str | None) -> None:
        with self._lock:
            if not self._closed:
                self.status, self.retry_after = status, retry_after

    def close(self) -> None:
        with self._lock:
            self._closed = True


class WebhookClient:
    def __init__(
        self,
        *,
        session: requests.Session | None = None,
        session_factory: Callable[[], requests.Session] = deadline_session,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 5.0,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        max_total_s: float = 15.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        allow_redirects: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # A session without DeadlineAdapter still returns at the deadline, but its attempt's
        # thread lingers until the peer lets go.
        self._session = session
        self._session_factory = session_factory
        self._session_lock = threading.Lock()  # channels are sent to from parallel threads
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_total_s = max_total_s
        self.max_response_bytes = max_response_bytes
        self.allow_redirects = allow_redirects
        self._sleep = sleep

    @property
    def session(self) -> requests.Session:
        """The client's one session, made by ``session_factory`` when it is first needed: an
        invocation that sends nothing does not pay for importing ``requests``."""
        with self._session_lock:
            if self._session is None:
                self._session = self._session_factory()
            return self._session

    def deadline(self, deadline: Deadline | None = None) -> Deadline:
        """``deadline``, or this client's own total (``max_total_s`` from now) if sooner."""
        own = Deadline.after(self.max_total_s)
        return own if deadline is None else min(own, deadline)

    def post_json(
        self,
        url: str,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        deadline: Deadline | None = None,
    ) -> Delivery:
        """POST ``payload`` as JSON; never raises for HTTP or network failures."""
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return self.post(
            url,
            body,
            headers={"Content-Type": "application/json", **(headers or {})},
            deadline=deadline,
        )

    def post(
        self,
        url: str,
        body: bytes,
        *,
        headers: dict[str, str],
        deadline: Deadline | None = None,
    ) -> Delivery:
        """POST ``body``; done (delivered or not) by ``deadline`` and within ``max_total_s``."""
        import requests  # loaded by the session's first use; here for the exceptions it raises

        deadline = self.deadline(deadline)
        status: int | None = None
        error: str | None = None
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            wait_s = self.backoff_s * (2 ** (attempt - 1))
            try:
                answer = self._attempt(url, body, headers, deadline)
            except DeadlineExceeded:
                return Delivery(False, status, attempt, DEADLINE_EXCEEDED)
            except requests.RequestException as exc:
                error = type(exc).__name__
            else:
                status = answer.status
                if status is not None and 200 <= status < 300:
                    return Delivery(True, status, attempt)
                error = f"HTTP {status}"
                if status is not None and 300 <= status < 400:
                    return Delivery(False, status, attempt, "redirects are not followed")
                if status not in RETRYABLE_STATUS:
                    return Delivery(False, status, attempt, error)
                wait_s = retry_after_s(answer.retry_after, wait_s)
            if attempt == self.max_attempts or wait_s >= deadline.remaining_s():
                break
            self._sleep(wait_s)
        return Delivery(False, status, attempt, error)

    def _attempt(
        self, url: str, body: bytes, headers: dict[str, str], deadline: Deadline
    ) -> _Answer:
        session = self.session  # the first delivery makes it: here, not in the helper thread
        remaining_s = deadline.remaining_s()
        if remaining_s <= 0:
            raise DeadlineExceeded("no time left for another attempt")
        connect_s, read_s = self.timeout
        # Per-operation timeouts still name the usual failures (ConnectTimeout, ReadTimeout).
        timeout = (min(connect_s, remaining_s), min(read_s, remaining_s))
        watch = SocketWatch()
        answer = _Answer()

        def exchange() -> None:
            _current_attempt.watch = watch
            try:
                response = session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=self.allow_redirects,
                    stream=True,
                )
                try:
                    answer.heard(response.status_code, response.headers.get("Retry-After"))
                    read_at_most(response, self.max_response_bytes)
                except (urllib3.exceptions.HTTPError, OSError):
                    pass  # the answer is in; a body that breaks off changes nothing
                finally:
                    _close(response)
            finally:
                _current_attempt.watch = None
                watch.release()

        def expire() -> None:
            answer.close()  # before the sockets go down: what follows is our own doing
            watch.expire()

        try:
            run_within(deadline, exchange, on_expiry=expire)
        except DeadlineExceeded:
            if answer.status is None:
                raise
            # The answer came; only the body was cut short, and the body does not matter.
        return answer
