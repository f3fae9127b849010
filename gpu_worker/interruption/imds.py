"""The one IMDSv2 client every EC2 source shares, and the polling they have in common.

One client means one session token, one place that honours ``WORKER_IMDS_ENDPOINT`` (resolved
in ``gpu_worker.config``), and one availability: IMDS's absence is logged once, not once per
path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aws_lambda_powertools import Logger

from gpu_worker.interruption.event import Interruption
from gpu_worker.interruption.metadata import (
    METADATA_TIMEOUT_S,
    Availability,
    Complaints,
    Response,
    request,
)

logger = Logger(service="spotline-worker", child=True)

# Refresh the IMDSv2 token when less than this share of its TTL is left.
TOKEN_REFRESH_FRACTION = 0.2
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"


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
        self.availability = Availability("imds")
        self.complain = Complaints()

    def _fresh_token(self) -> str:
        """The current token, or a new one; raises TokenRefused when the service says no."""
        now = self._clock()
        if self._token is not None and now < self._token_expires - (
            self.token_ttl_s * TOKEN_REFRESH_FRACTION
        ):
            return self._token
        response = request(
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

    def get(self, path: str) -> Response:
        """GET a metadata path; raises OSError when unreachable, TokenRefused on a bad token."""
        for _ in range(2):
            token = self._fresh_token()
            response = request(
                f"{self.endpoint}{path}",
                headers={"X-aws-ec2-metadata-token": token},
                timeout_s=self.timeout_s,
            )
            if response.status != 401:
                return response
            # Expired or revoked early (the service restarted, the clock jumped): fetch anew.
            self._token = None
        return response

    def text(self, path: str) -> str | None:
        """A plain-text item; None when IMDS does not have it (404). Raises on anything else."""
        response = self.get(path)
        if response.status == 404:
            return None
        if response.status != 200:
            raise OSError(f"IMDS answered {response.status} for {path}")
        return response.body.decode("utf-8", errors="replace").strip()

    def instance_id(self) -> str:
        instance_id = self.text(INSTANCE_ID_PATH)
        if not instance_id:
            raise OSError("IMDS has no instance-id")
        return instance_id


class ImdsMonitor:
    """Polling, absence and garbage handling shared by every IMDS source. A subclass names its
    ``path`` and parses the body of a 200: an Interruption, None for "nothing now", or
    ValueError for an answer that makes no sense (logged once, ignored). 404 is "nothing"."""

    name = "imds"
    path = ""

    def __init__(self, client: ImdsClient, *, poll_s: float) -> None:
        self.client = client
        self.poll_s = poll_s
        self.availability = client.availability
        self.complain = client.complain

    @property
    def interval_s(self) -> float:
        return self.availability.interval_s(self.poll_s)

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
        if response.status == 200:
            try:
                return self.parse(response.body)
            except ValueError:
                pass
        self.complain(self.name, self.path, response.status, response.body)
        return None

    def parse(self, body: bytes) -> Interruption | None:
        raise NotImplementedError
