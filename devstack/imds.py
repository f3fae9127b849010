"""An EC2 instance metadata service (IMDSv2) on 127.0.0.1, standing in for 169.254.169.254.

Token semantics as on EC2 with ``HttpTokens=required``: ``PUT /latest/api/token`` with
``X-aws-ec2-metadata-token-ttl-seconds`` (1-21600, else 400) returns a token; every metadata
GET needs a live token in ``X-aws-ec2-metadata-token`` and gets 401 without one or with an
expired one. Paths served:

- ``/latest/meta-data/spot/instance-action``: 404 until a notice is scheduled and due, then
  ``{"action": "terminate", "time": "<deadline>"}``
- ``/latest/meta-data/events/recommendations/rebalance``: 404, or ``{"noticeTime": ...}``
- ``/latest/meta-data/instance-id``
- ``/latest/meta-data/autoscaling/target-lifecycle-state``: 404 outside an Auto Scaling group
  (the default), else the target state set with ``set_lifecycle_state`` (``InService``,
  ``Terminated``, ``Warmed:Stopped``, ...)
- ``/latest/meta-data/tags/instance/aws:autoscaling:groupName``: the group, when one is given
- ``/latest/meta-data/tags/instance/<key>``: any tag set with ``set_tag`` (as EC2 serves them
  with ``InstanceMetadataTags: enabled``), e.g. the spot-events function's
  ``spotline:terminates-at``
- ``/computeMetadata/v1/instance/preempted`` (GCP shape; needs ``Metadata-Flavor: Google``)

Control, from Python (``mock.schedule_notice(...)``) or over HTTP for other processes:
``POST /_control/notice`` ``{"action", "in_s", "deadline_s"}``, ``POST /_control/rebalance``,
``POST /_control/preempt`` (GCP), ``POST /_control/lifecycle`` ``{"state"}``,
``POST /_control/garbage`` ``{"path", "status", "body"}``,
``POST /_control/tag`` ``{"key", "value"}``,
``POST /_control/expire-tokens``, ``POST /_control/reset``, ``GET /_control/stats``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SPOT_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
LIFECYCLE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
TAGS_PATH = "/latest/meta-data/tags/instance/"
GROUP_TAG_PATH = f"{TAGS_PATH}aws:autoscaling:groupName"
TOKEN_PATH = "/latest/api/token"
GCP_PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
MAX_TTL_S = 21600


def imds_time(epoch_s: float) -> str:
    """IMDS's time format: ``2026-11-23T08:22:00Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Notice:
    action: str
    visible_at: float  # epoch seconds: when IMDS starts answering 200
    deadline: float


@dataclass
class _Garbage:
    status: int
    body: bytes


class ImdsMock:
    def __init__(
        self,
        instance_id: str = "i-0123456789abcdef0",
        *,
        lifecycle_state: str | None = None,
        group_name: str | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.group_name = group_name
        self._initial_lifecycle_state = lifecycle_state
        self._lifecycle_state = lifecycle_state
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._notice: _Notice | None = None
        self._rebalance_at: float | None = None
        self._preempted = False
        self._garbage: dict[str, _Garbage] = {}
        self._tags: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.first_notice_served_at: float | None = None
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                mock._handle(self, "PUT")

            def do_GET(self) -> None:
                mock._handle(self, "GET")

            def do_POST(self) -> None:
                mock._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- control (Python) ----------------------------------------------------------------------

    def schedule_notice(
        self, action: str = "terminate", *, in_s: float = 0.0, deadline_s: float = 120.0
    ) -> float:
        """Make the spot notice appear ``in_s`` from now; returns when it appears (epoch s)."""
        visible_at = time.time() + in_s
        with self._lock:
            self._notice = _Notice(action, visible_at, visible_at + deadline_s)
            self.first_notice_served_at = None
        return visible_at

    def recommend_rebalance(self) -> None:
        with self._lock:
            self._rebalance_at = time.time()

    def preempt_gcp(self) -> None:
        with self._lock:
            self._preempted = True

    def set_lifecycle_state(self, state: str | None) -> None:
        """Auto Scaling's target state for this instance (None: not in a group, 404)."""
        with self._lock:
            self._lifecycle_state = state

    def set_tag(self, key: str, value: str | None) -> None:
        """An instance tag as IMDS serves it (None removes it)."""
        with self._lock:
            if value is None:
                self._tags.pop(key, None)
            else:
                self._tags[key] = value

    def serve_garbage(self, path: str, *, status: int = 200, body: bytes = b"{not json") -> None:
        """Answer ``path`` (e.g. SPOT_PATH) with ``status``/``body`` regardless of tokens."""
        with self._lock:
            self._garbage[path] = _Garbage(status, body)

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (as after an IMDS restart)."""
        with self._lock:
            self._tokens = {token: 0.0 for token in self._tokens}

    def reset(self) -> None:
        with self._lock:
            self._notice, self._rebalance_at, self._preempted = None, None, False
            self._lifecycle_state = self._initial_lifecycle_state
            self._garbage.clear()
            self._tags.clear()
            self._tokens.clear()
            self.counts.clear()
            self.first_notice_served_at = None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "counts": dict(self.counts),
                "live_tokens": sum(1 for e in self._tokens.values() if e > time.monotonic()),
                "first_notice_served_at": self.first_notice_served_at,
            }

    # -- HTTP ----------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?", 1)[0]
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        if path.startswith("/_control/"):
            status, answer = self._control(method, path.removeprefix("/_control/"), body)
        else:
            status, answer = self._metadata(method, path, request.headers)
        with self._lock:
            self.counts[f"{method} {path} {status}"] += 1
        request.send_response(status)
        request.send_header("Content-Type", "text/plain")
        request.send_header("Content-Length", str(len(answer)))
        request.end_headers()
        request.wfile.write(answer)

    def _metadata(self, method: str, path: str, headers: Any) -> tuple[int, bytes]:
        now = time.monotonic()
        with self._lock:
            garbage = self._garbage.get(path)
        if garbage is not None:
            return garbage.status, garbage.body
        if path == GCP_PREEMPTED_PATH:
            if headers.get("Metadata-Flavor") != "Google":
                return 403, b"Missing Metadata-Flavor:Google header."
            with self._lock:
                return 200, b"TRUE" if self._preempted else b"FALSE"
        if path == TOKEN_PATH:
            if method != "PUT":
                return 405, b""
            if headers.get("X-Forwarded-For"):
                return 403, b""  # IMDS refuses tokens to anything that went through a proxy
            try:
                ttl_s = int(headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                return 400, b""
            if not 1 <= ttl_s <= MAX_TTL_S:
                return 400, b""
            token = secrets.token_urlsafe(32)
            with self._lock:
                self._tokens[token] = now + ttl_s
            return 200, token.encode()
        if method != "GET":
            return 405, b""
        token = headers.get("X-aws-ec2-metadata-token")
        with self._lock:
            expiry = self._tokens.get(token or "")
            if expiry is None or expiry <= now:
                return 401, b""
            return self._document(path)

    def _document(self, path: str) -> tuple[int, bytes]:
        """Called with the lock held."""
        if path == INSTANCE_ID_PATH:
            return 200, self.instance_id.encode()
        if path == SPOT_PATH:
            notice = self._notice
            if notice is None or time.time() < notice.visible_at:
                return 404, b"Not Found"
            if self.first_notice_served_at is None:
                self.first_notice_served_at = time.time()
            return 200, json.dumps(
                {"action": notice.action, "time": imds_time(notice.deadline)}
            ).encode()
        if path == REBALANCE_PATH:
            if self._rebalance_at is None:
                return 404, b"Not Found"
            return 200, json.dumps({"noticeTime": imds_time(self._rebalance_at)}).encode()
        if path == LIFECYCLE_PATH and self._lifecycle_state is not None:
            return 200, self._lifecycle_state.encode()
        if path == GROUP_TAG_PATH and self.group_name is not None:
            return 200, self.group_name.encode()
        tag = self._tags.get(path.removeprefix(TAGS_PATH)) if path.startswith(TAGS_PATH) else None
        if tag is not None:
            return 200, tag.encode()
        return 404, b"Not Found"

    def _control(self, method: str, command: str, body: bytes) -> tuple[int, bytes]:
        try:
            args = json.loads(body) if body else {}
        except ValueError:
            return 400, b"control bodies are JSON"
        if method == "GET" and command == "stats":
            return 200, json.dumps(self.stats()).encode()
        if method != "POST":
            return 405, b""
        if command == "notice":
            visible_at = self.schedule_notice(
                str(args.get("action", "terminate")),
                in_s=float(args.get("in_s", 0.0)),
                deadline_s=float(args.get("deadline_s", 120.0)),
            )
            return 200, json.dumps({"visible_at": visible_at}).encode()
        if command == "rebalance":
            self.recommend_rebalance()
        elif command == "preempt":
            self.preempt_gcp()
        elif command == "lifecycle":
            state = args.get("state")
            self.set_lifecycle_state(None if state is None else str(state))
        elif command == "tag":
            value = args.get("value")
            self.set_tag(str(args.get("key", "")), None if value is None else str(value))
        elif command == "garbage":
            self.serve_garbage(
                str(args.get("path", SPOT_PATH)),
                status=int(args.get("status", 200)),
                body=str(args.get("body", "{not json")).encode(),
            )
        elif command == "expire-tokens":
            self.expire_tokens()
        elif command == "reset":
            self.reset()
        else:
            return 404, b"unknown control command"
        return 200, b"{}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ImdsMock:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ImdsMock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
