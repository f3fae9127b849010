"""What every metadata source shares: one HTTP request that never goes through a proxy, and
logging that says a service is absent (or garbled) once, not on every poll."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass

from aws_lambda_powertools import Logger

logger = Logger(service="spotline-worker", child=True)

# How long one metadata request may take: the poller must keep its rhythm.
METADATA_TIMEOUT_S = 1.0
# No metadata service at all (a laptop, another cloud): look again this rarely, quietly.
ABSENT_RETRY_S = 60.0

# IMDS and the GCP metadata server must never be reached through a proxy.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, timeout_s: float
) -> Response:
    """One metadata request; HTTP errors are answers (status), connection errors raise OSError."""
    http_request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _opener.open(http_request, timeout=timeout_s) as response:
            return Response(response.status, response.read(65536))
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(exc.code, exc.read(65536) if exc.fp is not None else b"")
    except http.client.HTTPException as exc:
        # Something answered, but not with HTTP: garbage, not absence.
        return Response(0, f"{type(exc).__name__}: {exc}".encode())


class Availability:
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

    def interval_s(self, poll_s: float) -> float:
        """The rhythm of a monitor on this service: ``poll_s``, or rarely while it is absent."""
        return poll_s if self.available is not False else ABSENT_RETRY_S


class Complaints:
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
