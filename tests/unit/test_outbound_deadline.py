"""Outbound calls have a total deadline: real misbehaving servers on 127.0.0.1, real sockets.

``requests``' timeouts are per socket operation, so an endpoint that trickles its answer never
trips them; these tests show a delivery ends at its deadline whatever the other side does, and
that the connection is shut (the server sees the client go), not merely abandoned.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dead_letter.callbacks import CallbackSender, pinned_session
from devstack.motoserver import wait_until
from devstack.sink import WebhookSink
from spotline.alerts import AlertSender, Channel
from spotline.deadlines import Deadline, TimeBudget
from spotline.standard_webhooks import generate_key_pair
from spotline.webhooks import DEADLINE_EXCEEDED, MAX_RESPONSE_BYTES, SocketWatch, WebhookClient
from tests.unit.deadline_fixtures import (
    BIG_BODY_BYTES,
    Behaviour,
    HostileServer,
    answers_slowly,
    big_body,
    elapsed_s,
    endless_body,
    refused_url,
    silent,
    slow_headers,
    slow_tls_handshake,
    status_then_slow_headers,
    trickling_body,
)

DEADLINE_S = 1.0
SLACK_S = 1.0  # what the brief allows past a deadline: thread scheduling, the socket's teardown
KEY, PUBLIC_KEY = generate_key_pair()


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(behaviour)`` starts a HostileServer, stopped when the test ends."""
    servers: list[HostileServer] = []

    def start(behaviour: Behaviour) -> HostileServer:
        server = HostileServer(behaviour).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def client(**settings: Any) -> WebhookClient:
    """The default client with a short total and no backoff waits, unless a test says so."""
    return WebhookClient(**{"max_total_s": DEADLINE_S, "backoff_s": 0, **settings})


def attempts_running() -> bool:
    return any(t.name == "outbound-call" and t.is_alive() for t in threading.enumerate())


def client_left(server: HostileServer) -> bool:
    return server.accepted >= 1 and server.ended == server.accepted


# -- one delivery, one hostile endpoint ------------------------------------------------------


def test_slow_loris_headers_end_at_the_deadline_and_the_connection_is_shut(serve: Any) -> None:
    server = serve(slow_headers)
    started = time.monotonic()
    delivery = client(max_attempts=3).post_json(server.url + "/hook", {"a": 1})
    took_s = elapsed_s(started)

    assert not delivery.ok and delivery.error == DEADLINE_EXCEEDED
    assert delivery.attempts == 1  # the attempt took the whole deadline: no retry after it
    assert DEADLINE_S - 0.05 <= took_s < DEADLINE_S + SLACK_S, took_s
    wait_until(lambda: client_left(server), timeout=3, what="the slow-loris to see the client go")


def test_a_status_line_without_the_rest_of_the_headers_is_no_answer(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shutting the socket looks like EOF, which http.client takes for the end of the headers:
    # the 200 it then parses is our own doing and must not count as delivered.
    server = serve(status_then_slow_headers)
    expire = SocketWatch.expire

    def expire_and_let_the_attempt_finish(watch: SocketWatch) -> None:
        expire(watch)
        # The race made certain: the attempt parses its "200" before the caller looks.
        wait_until(lambda: not attempts_running(), timeout=3, what="the attempt's thread to end")

    monkeypatch.setattr(SocketWatch, "expire", expire_and_let_the_attempt_finish)
    started = time.monotonic()
    delivery = client().post_json(server.url + "/hook", {"a": 1})

    assert not delivery.ok and delivery.status is None and delivery.error == DEADLINE_EXCEEDED
    assert elapsed_s(started) < DEADLINE_S + SLACK_S
    wait_until(lambda: client_left(server), timeout=3, what="the server to see the client go")


def test_a_users_slow_loris_callback_cannot_hold_the_sender_past_its_deadline(serve: Any) -> None:
    # The incident: read timeout 3 s, max_total_s 8, and one send held for more than 45 s.
    server = serve(slow_headers)
    sender = CallbackSender(
        signing_key_ref="secretsmanager:k",
        public_key=PUBLIC_KEY,
        resolve=lambda ref: KEY,
        test_mode=True,
    )
    url = server.url.replace("http://", "https://") + "/cb"  # test mode sends it over http
    started = time.monotonic()
    delivery = sender.send(url, {"job_id": "j"}, deadline=Deadline.after(DEADLINE_S))
    took_s = elapsed_s(started)

    assert not delivery.ok and delivery.error == DEADLINE_EXCEEDED
    assert took_s < DEADLINE_S + SLACK_S, took_s
    wait_until(lambda: client_left(server), timeout=3, what="the callback's connection to close")


def test_the_callback_senders_own_total_bounds_a_send_without_a_deadline(serve: Any) -> None:
    server = serve(slow_headers)
    sender = CallbackSender(
        signing_key_ref="secretsmanager:k",
        public_key=PUBLIC_KEY,
        client=WebhookClient(session=pinned_session(), read_timeout_s=3.0, max_total_s=DEADLINE_S),
        resolve=lambda ref: KEY,
        test_mode=True,
    )
    started = time.monotonic()
    delivery = sender.send(server.url.replace("http://", "https://") + "/cb", {"job_id": "j"})
    assert not delivery.ok and delivery.error == DEADLINE_EXCEEDED
    assert elapsed_s(started) < DEADLINE_S + SLACK_S


def test_a_slow_tls_handshake_on_the_pinned_session_ends_at_the_deadline(serve: Any) -> None:
    # The socket is watched from the moment it connects, before TLS wraps it.
    server = serve(slow_tls_handshake)
    pinned = WebhookClient(session=pinned_session(), max_total_s=DEADLINE_S, backoff_s=0)
    url = f"https://127.0.0.1:{server.port}/cb"
    started = time.monotonic()
    delivery = pinned.post(url, b"{}", headers={"Host": "hooks.test"})
    took_s = elapsed_s(started)

    assert not delivery.ok and delivery.error == DEADLINE_EXCEEDED
    assert took_s < DEADLINE_S + SLACK_S, took_s
    wait_until(lambda: client_left(server), timeout=3, what="the TLS connection to close")


def test_headers_then_an_endless_body_are_delivered_and_only_the_cap_is_read(
    serve: Any,
) -> None:
    server = serve(endless_body)
    started = time.monotonic()
    delivery = client(max_total_s=10).post_json(server.url + "/hook", {"a": 1})

    assert delivery.ok and delivery.status == 200 and delivery.attempts == 1
    assert elapsed_s(started) < SLACK_S  # the cap, not the deadline, ended the read
    wait_until(lambda: client_left(server), timeout=3, what="the endless body to be cut off")


def test_headers_then_a_trickling_body_count_as_answered_at_the_deadline(serve: Any) -> None:
    # The status is what matters: a body that never ends is dropped, the 200 stands.
    server = serve(trickling_body)
    started = time.monotonic()
    delivery = client().post_json(server.url + "/hook", {"a": 1})
    took_s = elapsed_s(started)

    assert delivery.ok and delivery.status == 200
    assert took_s < DEADLINE_S + SLACK_S, took_s
    wait_until(lambda: client_left(server), timeout=3, what="the trickling body to be cut off")


def test_a_50_mb_answer_is_not_read_past_the_cap(serve: Any) -> None:
    server = serve(big_body)
    delivery = client(max_total_s=10).post_json(server.url + "/hook", {"a": 1})

    assert delivery.ok and delivery.status == 200
    wait_until(lambda: client_left(server), timeout=5, what="the big answer to be cut off")
    assert server.completed == 0  # the client closed long before the 50 MB were taken
    # What the kernel's buffers took on loopback, a few MiB at most; never the whole body.
    assert server.sent_bytes < BIG_BODY_BYTES / 2, server.sent_bytes
    assert MAX_RESPONSE_BYTES == 64 * 1024


def test_an_endpoint_that_accepts_and_never_answers_ends_at_the_deadline(serve: Any) -> None:
    server = serve(silent)
    started = time.monotonic()
    delivery = client(read_timeout_s=30, max_attempts=3).post_json(server.url + "/hook", {})
    took_s = elapsed_s(started)

    assert not delivery.ok
    # Whichever ends it first: the last read's timeout (cut to the time left) or the deadline.
    assert delivery.error in ("ReadTimeout", DEADLINE_EXCEEDED), delivery.error
    assert DEADLINE_S - 0.05 <= took_s < DEADLINE_S + SLACK_S, took_s
    wait_until(lambda: client_left(server), timeout=3, what="the silent server to see us go")


def test_connection_refused_fails_fast_after_its_retries() -> None:
    started = time.monotonic()
    delivery = client(max_attempts=3).post_json(refused_url() + "/hook", {})
    assert not delivery.ok and delivery.error == "ConnectionError" and delivery.attempts == 3
    assert elapsed_s(started) < SLACK_S


# -- retries live inside the deadline ---------------------------------------------------------


def test_retries_of_slow_503s_stop_at_the_deadline(serve: Any) -> None:
    server = serve(answers_slowly(503, after_s=0.4))
    started = time.monotonic()
    delivery = client(max_attempts=20).post_json(server.url + "/hook", {})
    took_s = elapsed_s(started)

    assert not delivery.ok and 2 <= delivery.attempts < 20
    assert delivery.error in ("HTTP 503", DEADLINE_EXCEEDED)
    assert took_s < DEADLINE_S + SLACK_S, took_s


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(serve: Any) -> None:
    server = serve(answers_slowly(503, after_s=0, retry_after="30"))
    started = time.monotonic()
    delivery = client(max_attempts=3).post_json(server.url + "/hook", {})
    assert not delivery.ok and delivery.status == 503 and delivery.attempts == 1
    assert elapsed_s(started) < SLACK_S


def test_the_sooner_of_the_callers_deadline_and_the_clients_total_wins(serve: Any) -> None:
    server = serve(slow_headers)
    started = time.monotonic()
    delivery = client(max_total_s=30).post_json(
        server.url + "/hook", {}, deadline=Deadline.after(0.5)
    )
    assert delivery.error == DEADLINE_EXCEEDED and elapsed_s(started) < 0.5 + SLACK_S


# -- what else a delivery waits on ------------------------------------------------------------


def test_a_callback_hosts_slow_dns_answer_counts_toward_the_deadline() -> None:
    answer = threading.Event()

    def slow_resolver(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        answer.wait(10)  # a name server that takes its time (released when the test ends)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    sender = CallbackSender(
        signing_key_ref="secretsmanager:k",
        public_key=PUBLIC_KEY,
        resolver=slow_resolver,
        resolve=lambda ref: KEY,
    )
    started = time.monotonic()
    try:
        delivery = sender.send(
            "https://hooks.example.com/cb", {"job_id": "j"}, deadline=Deadline.after(0.5)
        )
    finally:
        answer.set()
    assert not delivery.ok and (delivery.error or "").startswith(DEADLINE_EXCEEDED)
    assert elapsed_s(started) < 0.5 + SLACK_S


def test_a_slow_channel_never_delays_the_others(serve: Any) -> None:
    slow = serve(slow_headers)
    with WebhookSink() as sink:
        urls = {"slack": sink.url + "/slack", "discord": slow.url + "/discord"}
        sender = AlertSender(
            [Channel("slack", "slack", "slack"), Channel("discord", "discord", "discord")],
            client=client(max_total_s=30),
            resolve=urls.__getitem__,
        )
        from spotline.alerts import Alert

        started = time.monotonic()
        deliveries = sender.send(Alert("t", "x"), deadline=Deadline.after(DEADLINE_S))
        took_s = elapsed_s(started)
        assert deliveries["slack"].ok and len(sink.on("/slack")) == 1
    assert deliveries["discord"].error == DEADLINE_EXCEEDED
    assert took_s < DEADLINE_S + SLACK_S, took_s


# -- the invocation's time, shared -----------------------------------------------------------


def test_each_item_gets_an_even_share_of_the_time_left_after_the_reserve() -> None:
    remaining_ms = [10_000]
    budget = TimeBudget(lambda: remaining_ms[0], reserve_s=4.0)
    shares = budget.shares(3)
    assert next(shares).remaining_s() == pytest.approx(2.0, abs=0.05)
    remaining_ms[0] = 9_000  # the first item finished early: the others get more
    assert next(shares).remaining_s() == pytest.approx(2.5, abs=0.05)
    remaining_ms[0] = 3_000  # less than the reserve: nothing left to spend
    assert next(shares).expired
    assert list(shares) == []
