"""HTTP delivery to chat webhooks and callbacks: one session, timeouts, bounded retries.

Retries only what can succeed later (connection errors, 429, 5xx), honouring ``Retry-After``,
within a total time budget so a Lambda never times out waiting on a slow webhook.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


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


class WebhookClient:
    def __init__(
        self,
        *,
        session: requests.Session | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 5.0,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        max_total_s: float = 15.0,
        allow_redirects: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session or requests.Session()
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_total_s = max_total_s
        self.allow_redirects = allow_redirects
        self._sleep = sleep

    def post_json(
        self, url: str, payload: Any, *, headers: dict[str, str] | None = None
    ) -> Delivery:
        """POST ``payload`` as JSON; never raises for HTTP or network failures."""
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return self.post(url, body, headers={"Content-Type": "application/json", **(headers or {})})

    def post(self, url: str, body: bytes, *, headers: dict[str, str]) -> Delivery:
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            wait_s = self.backoff_s * (2 ** (attempt - 1))
            try:
                response = self.session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=self.allow_redirects,
                )
                status = response.status_code
                if 200 <= status < 300:
                    return Delivery(True, status, attempt)
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    return Delivery(False, status, attempt, "redirects are not followed")
                if status not in RETRYABLE_STATUS:
                    return Delivery(False, status, attempt, error)
                wait_s = retry_after_s(response.headers.get("Retry-After"), wait_s)
            except requests.RequestException as exc:
                error = type(exc).__name__
            if attempt == self.max_attempts:
                break
            if time.monotonic() - started + wait_s > self.max_total_s:
                break
            self._sleep(wait_s)
        return Delivery(False, status, attempt, error)
