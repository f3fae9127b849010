"""Every way the worker learns it is about to lose its machine, as one stream of one event.

Shaped after aws-node-termination-handler's ``pkg/monitor``: each source is a small *monitor*
behind one interface, and all of them feed a single callback, ``Worker.on_interruption``, that
decides what to do. Sources: the EC2 spot notice and rebalance recommendation (IMDSv2),
SIGTERM/SIGINT, and (optional) the GCP metadata ``preempted`` flag.

A monitor is anything with::

    name: str                          # for logs, e.g. "imds-spot"
    interval_s: float                  # how long to wait before the next check() (may change)
    def check(self) -> Interruption | None

``check()`` is called on the watch thread, so it must not block for long (use short timeouts)
and should return None for "nothing now" and for trouble it has already logged; an exception
is logged by the watch and counts as None. Each distinct (source, action) is delivered once.
Push sources (signals) call ``InterruptionWatch.emit`` directly instead of being polled.

To add a source (e.g. an ASG lifecycle hook): write such a class, give it a ``Source`` name,
and append it in ``monitors_from_settings``. Return ``Interruption(..., deadline=...)`` when
the source knows when the machine goes away (the worker fits its checkpoint grace inside it);
``Action.REBALANCE`` means "at risk, not leaving yet" and only drains the worker.
"""

from __future__ import annotations

import enum
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aws_lambda_powertools import Logger

logger = Logger(service="spotline-worker", child=True)

# AWS gives two minutes between the spot notice and the reclaim; GCP gives thirty seconds.
SPOT_NOTICE_S = 120.0
GCP_NOTICE_S = 30.0
# How long one metadata request may take: the poller must keep its rhythm.
METADATA_TIMEOUT_S = 1.0
# No metadata service at all (a laptop, another cloud): look again this rarely, quietly.
ABSENT_RETRY_S = 60.0
# Refresh the IMDSv2 token when less than this share of its TTL is left.
TOKEN_REFRESH_FRACTION = 0.2


class Source(enum.StrEnum):
    IMDS_SPOT = "imds-spot"
    IMDS_REBALANCE = "imds-rebalance"
    SIGNAL = "signal"
    GCP_PREEMPTED = "gcp-preempted"
    ASG_LIFECYCLE = "asg-lifecycle"


class Action(enum.StrEnum):
    TERMINATE = "terminate"
    STOP = "stop"
    HIBERNATE = "hibernate"
    REBALANCE = "rebalance"  # a recommendation only: the instance is at elevated risk
    SHUTDOWN = "shutdown"  # a signal: the process manager wants us gone


SPOT_ACTIONS = {Action.TERMINATE, Action.STOP, Action.HIBERNATE}


@dataclass(frozen=True)
class Interruption:
    """One interruption, whatever its source. Times are UNIX epoch seconds."""

    source: str
    action: Action
    noticed_at: float
    deadline: float | None = None  # when the machine goes away, if the source says
    detail: str = ""

    @property
    def advisory(self) -> bool:
        """True when the machine is not (yet) going away: stop taking work, keep running."""
        return self.action is Action.REBALANCE

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)

    def describe(self) -> str:
        text = f"{self.source} {self.action}"
        return f"{text} ({self.detail})" if self.detail else text


class Monitor(Protocol):
    name: str

    @property
    def interval_s(self) -> float: ...

    def check(self) -> Interruption | None: ...


def parse_time(value: Any) -> float | None:
    """IMDS times look like ``2026-11-23T08:22:00Z``; None when absent or unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


# IMDS and the GCP metadata server must never be reached through a proxy.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes


def _request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, timeout_s: float
) -> _Response:
    """One metadata request; HTTP errors are answers (status), connection errors raise OSError."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            return _Response(response.status, response.read(65536))
    except urllib.error.HTTPError as exc:
        with exc:
            return _Response(exc.code, exc.read(65536) if exc.fp is not None else b"")
    except http.client.HTTPException as exc:
        # Something answered, but not with HTTP: garbage, not absence.
        return _Response(0, f"{type(exc).__name__}: {exc}".encode())


class _Availability:
    """Logs a metadata service's absence once, not on every poll, and its return once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.available: bool | None = None

    def lost(self, reason: str) -> None:
        if self.available is None:
            logger.info(
                "metadata service not found; its notices are off until it answers",
                extra={"monitor": self.name, "reason": reason},
            )
        elif self.available:
            logger.warning(
                "metadata service stopped answering",
                extra={"monitor": self.name, "reason": reason},
            )
        self.available = False

    def found(self) -> None:
        if self.available is not True:
            logger.info("metadata service answering", extra={"monitor": self.name})
        self.available = True


class _Complaints:
    """Logs each distinct bad answer once, so garbage every 2 s does not flood the logs."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, monitor: str, what: str, status: int, body: bytes) -> None:
        sample = body[:200].decode("utf-8", errors="replace")
        key = f"{what}|{status}|{sample}"
        if key in self._seen:
            return
        if len(self._seen) > 100:
            self._seen.clear()
        self._seen.add(key)
        logger.warning(
            "ignoring unexpected metadata answer",
            extra={"monitor": monitor, "what": what, "status": status, "body": sample},
        )


class TokenRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"IMDS token request answered {status}")
        self.status = status
        self.body = body


class ImdsClient:
    """IMDSv2: a session token from ``PUT /latest/api/token`` on every metadata GET, refreshed
    before it expires and fetched again when the service answers 401."""

    def __init__(
        self,
        endpoint: str,
        *,
        token_ttl_s: int = 21600,
        timeout_s: float = METADATA_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self.tokens_fetched = 0
        # Shared by every monitor on this client: absence is logged once, not once per path.
        self.availability = _Availability("imds")
        self.complain = _Complaints()

    def _fresh_token(self) -> str:
        """The current token, or a new one; raises TokenRefused when the service says no."""
        now = self._clock()
        if self._token is not None and now < self._token_expires - (
            self.token_ttl_s * TOKEN_REFRESH_FRACTION
        ):
            return self._token
        response = _request(
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl_s)},
            timeout_s=self.timeout_s,
        )
        token = response.body.decode("ascii", errors="replace").strip()
        if response.status != 200 or not token or len(token) > 4096:
            self._token = None
            raise TokenRefused(response.status, response.body)
        self._token, self._token_expires = token, now + self.token_ttl_s
        self.tokens_fetched += 1
        return token

    def get(self, path: str) -> _Response:
        """GET a metadata path; raises OSError when unreachable, TokenRefused on a bad token."""
        for _ in range(2):
            token = self._fresh_token()
            response = _request(
                f"{self.endpoint}{path}",
                headers={"X-aws-ec2-metadata-token": token},
                timeout_s=self.timeout_s,
            )
            if response.status != 401:
                return response
            # Expired or revoked early (the service restarted, the clock jumped): fetch anew.
            self._token = None
        return response


class _ImdsMonitor:
    """Shared polling, absence and garbage handling of the two IMDS monitors."""

    name = "imds"
    path = ""

    def __init__(self, client: ImdsClient, *, poll_s: float) -> None:
        self.client = client
        self.poll_s = poll_s
        self.availability = client.availability
        self.complain = client.complain

    @property
    def interval_s(self) -> float:
        return self.poll_s if self.availability.available is not False else ABSENT_RETRY_S

    def check(self) -> Interruption | None:
        try:
            response = self.client.get(self.path)
        except TokenRefused as refused:
            if refused.status in {403, 404}:
                # IMDS disabled for this instance, or something that is not IMDS.
                self.availability.lost(f"token request answered {refused.status}")
            else:
                self.complain(self.name, "token", refused.status, refused.body)
            return None
        except OSError as exc:
            self.availability.lost(f"{type(exc).__name__}: {exc}")
            return None
        self.availability.found()
        if response.status == 404:
            return None
        if response.status != 200:
            self.complain(self.name, self.path, response.status, response.body)
            return None
        try:
            document = json.loads(response.body)
        except ValueError:
            document = None
        event = self.parse(document) if isinstance(document, dict) else None
        if event is None:
            self.complain(self.name, self.path, response.status, response.body)
        return event

    def parse(self, document: dict[str, Any]) -> Interruption | None:
        raise NotImplementedError


class SpotNoticeMonitor(_ImdsMonitor):
    """``spot/instance-action``: 404 until AWS decides to reclaim, then
    ``{"action": "terminate"|"stop"|"hibernate", "time": "<when>"}`` (two minutes ahead)."""

    name = str(Source.IMDS_SPOT)
    path = "/latest/meta-data/spot/instance-action"

    def parse(self, document: dict[str, Any]) -> Interruption | None:
        try:
            action = Action(str(document.get("action", "")).lower())
        except ValueError:
            return None
        if action not in SPOT_ACTIONS:
            return None
        now = time.time()
        deadline = parse_time(document.get("time"))
        if deadline is None:
            # A notice with an odd time is still a notice: assume the documented two minutes.
            logger.warning("spot notice without a usable time", extra={"at": document.get("time")})
            deadline = now + SPOT_NOTICE_S
        return Interruption(self.name, action, now, deadline, f"at {document.get('time')}")


class RebalanceMonitor(_ImdsMonitor):
    """``events/recommendations/rebalance``: ``{"noticeTime": ...}`` once the instance is at
    elevated risk of interruption (often minutes before a spot notice, sometimes never)."""

    name = str(Source.IMDS_REBALANCE)
    path = "/latest/meta-data/events/recommendations/rebalance"

    def parse(self, document: dict[str, Any]) -> Interruption | None:
        notice_time = document.get("noticeTime")
        if not isinstance(notice_time, str) or parse_time(notice_time) is None:
            return None
        return Interruption(self.name, Action.REBALANCE, time.time(), None, f"since {notice_time}")


class GcpPreemptedMonitor:
    """GCP metadata ``instance/preempted``: ``TRUE`` once the VM is being preempted (30 s)."""

    name = str(Source.GCP_PREEMPTED)
    path = "/computeMetadata/v1/instance/preempted"

    def __init__(
        self, endpoint: str, *, poll_s: float, timeout_s: float = METADATA_TIMEOUT_S
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.availability = _Availability(self.name)
        self.complain = _Complaints()

    @property
    def interval_s(self) -> float:
        return self.poll_s if self.availability.available is not False else ABSENT_RETRY_S

    def check(self) -> Interruption | None:
        try:
            response = _request(
                f"{self.endpoint}{self.path}",
                headers={"Metadata-Flavor": "Google"},
                timeout_s=self.timeout_s,
            )
        except OSError as exc:
            self.availability.lost(f"{type(exc).__name__}: {exc}")
            return None
        self.availability.found()
        answer = response.body.decode("utf-8", errors="replace").strip().upper()
        if response.status == 200 and answer == "TRUE":
            now = time.time()
            return Interruption(self.name, Action.TERMINATE, now, now + GCP_NOTICE_S, "preempted")
        if response.status != 200 or answer != "FALSE":
            self.complain(self.name, self.path, response.status, response.body)
        return None


def signal_interruption(signal_name: str) -> Interruption:
    return Interruption(str(Source.SIGNAL), Action.SHUTDOWN, time.time(), None, signal_name)


class InterruptionWatch:
    """Polls every monitor on its own rhythm on one daemon thread and hands each new
    interruption to ``on_event``, the one consumer. ``emit`` is the entry for push sources."""

    def __init__(
        self, monitors: Iterable[Monitor], on_event: Callable[[Interruption], None]
    ) -> None:
        self.monitors = list(monitors)
        self._on_event = on_event
        self._delivered: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events: list[Interruption] = []

    def emit(self, event: Interruption) -> bool:
        """Deliver ``event`` unless the same (source, action) was delivered before."""
        with self._lock:
            key = (event.source, str(event.action))
            if key in self._delivered:
                return False
            self._delivered.add(key)
            self.events.append(event)
        self._on_event(event)
        return True

    def check_all(self, now: float | None = None, due: dict[str, float] | None = None) -> None:
        """One round: check each monitor whose time has come (all of them when ``due`` is None)."""
        now = time.monotonic() if now is None else now
        for monitor in self.monitors:
            if due is not None and due.get(monitor.name, 0.0) > now:
                continue
            try:
                event = monitor.check()
            except Exception:  # a broken monitor must never stop the others
                logger.exception("interruption monitor failed", extra={"monitor": monitor.name})
                event = None
            if due is not None:
                due[monitor.name] = time.monotonic() + max(0.05, monitor.interval_s)
            if event is not None:
                self.emit(event)
        if due is not None:
            # The IMDS monitors share one availability: a single timed-out poll put the spot
            # monitor on the 60 s absent rhythm even when the rebalance poll right after found
            # IMDS answering again, blind to a notice for half its two minutes. Whoever is due
            # later than its interval now says is brought forward.
            soonest = time.monotonic()
            for monitor in self.monitors:
                if monitor.name in due:
                    due[monitor.name] = min(
                        due[monitor.name], soonest + max(0.05, monitor.interval_s)
                    )

    def _loop(self) -> None:
        due: dict[str, float] = {}
        while not self._stop.is_set():
            self.check_all(due=due)
            next_due = min(due.values(), default=time.monotonic() + 1.0)
            self._stop.wait(max(0.01, next_due - time.monotonic()))

    def start(self) -> InterruptionWatch:
        if self.monitors and self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="interruption-watch", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class LifecycleHookPending(Protocol):
    """What ``LifecycleMonitor`` needs of ``gpu_worker.lifecycle.LifecycleHookMonitor``."""

    hook_name: str
    min_interval_s: float

    def poll(self) -> bool: ...


class LifecycleMonitor:
    """The Auto Scaling termination hook as an interruption source: when the hook is pending
    for this instance (scale-in, or a capacity-rebalancing replacement), the worker drains
    exactly as for a spot notice; it completes the action after the job is released."""

    name = str(Source.ASG_LIFECYCLE)

    def __init__(self, hook: LifecycleHookPending) -> None:
        self.hook = hook

    @property
    def interval_s(self) -> float:
        return self.hook.min_interval_s

    def check(self) -> Interruption | None:
        if not self.hook.poll():
            return None
        return Interruption(
            str(Source.ASG_LIFECYCLE), Action.TERMINATE, time.time(), None, self.hook.hook_name
        )


def monitors_from_settings(
    *,
    imds_endpoint: str,
    imds_poll_s: float,
    imds_token_ttl_s: int,
    gcp_endpoint: str,
) -> list[Monitor]:
    """The polled monitors the configuration asks for (signals are installed by the worker)."""
    monitors: list[Monitor] = []
    if imds_endpoint:
        client = ImdsClient(imds_endpoint, token_ttl_s=imds_token_ttl_s)
        # One client, one token, shared by both IMDS monitors.
        monitors.append(SpotNoticeMonitor(client, poll_s=imds_poll_s))
        monitors.append(RebalanceMonitor(client, poll_s=imds_poll_s))
    if gcp_endpoint:
        monitors.append(GcpPreemptedMonitor(gcp_endpoint, poll_s=imds_poll_s))
    return monitors
