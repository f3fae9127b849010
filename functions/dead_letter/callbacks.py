"""User notices: a signed JSON POST to the job's ``notify.callback_url`` when it is dead-lettered.

The URL is the user's, so it is treated as hostile (SSRF): it must be https, every address its
host resolves to must be public (checked at send time, not only at enqueue, because DNS
answers change), redirects are never followed, and the connection goes to the very address
that was checked, so a DNS answer that changes between the check and the connect (rebinding)
cannot reach an internal host. TLS still verifies the certificate against the URL's host name.

Signature: the Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1a,...``), Ed25519 with the stack's secret key
(spotline/standard_webhooks.py); users verify with the public key, the stack output
``NoticePublicKey``. Deprecated, for one release and only when ``LegacyNoticeSignature=true``:
also ``X-Spotline-Signature: sha256=HEX``, HMAC-SHA256 with a shared key over
``TIMESTAMP + "." + BODY`` and ``X-Spotline-Timestamp``. The README shows how a receiver
verifies either.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from spotline.alerts import resolve_secret
from spotline.contract import ErrorKind, JobStatus
from spotline.deadlines import Deadline, DeadlineExceeded, run_within
from spotline.standard_webhooks import NoticeKeyError, NoticeSigner
from spotline.webhooks import DEADLINE_EXCEEDED, Delivery, WebhookClient

if TYPE_CHECKING:
    import requests

# Deprecated (LegacyNoticeSignature): the shared-key HMAC headers of the release before.
SIGNATURE_HEADER = "X-Spotline-Signature"
TIMESTAMP_HEADER = "X-Spotline-Timestamp"
# Test mode (off by default, never set by the template): callbacks to 127.0.0.1 are allowed and
# sent over plain http, so tests and devstack can use a local sink.
TEST_MODE_ENV = "CALLBACK_TEST_MODE"
TEST_HOST = "127.0.0.1"

# What the user reads: why their analysis could not be done, never a stack trace.
USER_REASONS: dict[ErrorKind, str] = {
    ErrorKind.OOM: "the input needed more memory than the analyzer allows",
    ErrorKind.TIMEOUT: "the analysis took longer than its time limit",
    ErrorKind.INVALID_INPUT: "the input could not be read or is not valid for this analyzer",
    ErrorKind.ANALYZER_ERROR: "the analyzer failed on this input after repeated attempts",
    ErrorKind.INTERRUPTED: "the analysis was interrupted too many times by capacity changes",
    ErrorKind.UNKNOWN: "the analysis could not be completed after repeated attempts",
}

Resolver = Callable[..., list[tuple[Any, ...]]]


class CallbackRefused(ValueError):
    """The callback URL may not be called (scheme, host or a resolved address); permanent."""


def user_reason(kind: ErrorKind | str | None) -> str:
    try:
        return USER_REASONS[ErrorKind(kind)] if kind else USER_REASONS[ErrorKind.UNKNOWN]
    except ValueError:
        return USER_REASONS[ErrorKind.UNKNOWN]


def build_notice(
    job_id: str,
    kind: ErrorKind | str | None,
    *,
    attempts: int,
    dead_lettered_at: str | None,
    reason: str | None = None,
) -> dict[str, Any]:
    """``reason``: a more precise one than the kind's (the largest tier's memory, with tiers)."""
    return {
        "job_id": job_id,
        "status": str(JobStatus.DEAD_LETTERED),
        "reason": reason or user_reason(kind),
        "error_kind": str(kind or ErrorKind.UNKNOWN),
        "attempts": attempts,
        "dead_lettered_at": dead_lettered_at,
    }


def encode_notice(notice: dict[str, Any]) -> bytes:
    return json.dumps(notice, separators=(",", ":"), sort_keys=True).encode("utf-8")


def notice_id(notice: dict[str, Any]) -> str:
    """``webhook-id``: one per dead-lettering of a job, the same on every retry of its notice (so
    a receiver can drop a duplicate), a new one when a redriven job is dead-lettered again."""
    occurrence = f"{notice.get('job_id')}\n{notice.get('dead_lettered_at')}".encode()
    return "msg_" + hashlib.sha256(occurrence).hexdigest()[:32]


def sign(key: str | bytes, timestamp: str, body: bytes) -> str:
    """Deprecated: ``sha256=`` + hex HMAC-SHA256 over ``timestamp + "." + body``."""
    secret = key.encode("utf-8") if isinstance(key, str) else key
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(
    key: str | bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """What a receiver does: recompute, compare in constant time, reject stale timestamps."""
    try:
        age_s = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age_s <= tolerance_s and hmac.compare_digest(sign(key, timestamp, body), signature)


# -- SSRF guard --------------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be called, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = address_refusal(ip.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and (inner := address_refusal(embedded)):
            return f"embeds {inner}"
    checks = (
        (ip.is_unspecified, "unspecified address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address (cloud metadata lives at 169.254.169.254)"),
        (ip.is_multicast, "multicast address"),
        (ip.is_reserved, "reserved address"),
        (ip.is_private, "private address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local address"),
        (not ip.is_global, "non-public address"),
    )
    for refused, reason in checks:
        if refused:
            return f"{reason} {ip}"
    return None


@dataclass(frozen=True)
class Target:
    """A checked callback: the URL to connect to (an address, not a name) and the Host."""

    url: str
    host_header: str
    address: str


def check_callback_url(
    url: str, *, resolver: Resolver = socket.getaddrinfo, test_mode: bool = False
) -> Target:
    """Validate ``url`` and resolve its host; raise CallbackRefused with the reason."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"callback URL is malformed: {exc}") from exc
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackRefused("callback URL has no host")
    if parts.username or parts.password:
        raise CallbackRefused("callback URL may not carry credentials")
    if test_mode and host == TEST_HOST and parts.scheme in ("http", "https"):
        netloc = f"{TEST_HOST}:{port}" if port else TEST_HOST
        return Target(urlunsplit(("http", netloc, parts.path, parts.query, "")), netloc, TEST_HOST)
    if parts.scheme != "https":
        raise CallbackRefused(f"callback URL must use https, not {parts.scheme or 'nothing'}")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = resolver(host, port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise CallbackRefused(f"callback host {host} does not resolve: {exc}") from exc
        # Strip an IPv6 zone id ("fe80::1%eth0") before parsing.
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise CallbackRefused(f"callback host {host} does not resolve")
    for address in addresses:
        if reason := address_refusal(address):
            raise CallbackRefused(f"callback host {host} resolves to a {reason}")
    pinned = addresses[0]
    shown = f"[{pinned}]" if pinned.version == 6 else str(pinned)
    netloc = f"{shown}:{port}" if port else shown
    host_header = f"{host}:{port}" if port else host
    pinned_url = urlunsplit(("https", netloc, parts.path, parts.query, ""))
    return Target(pinned_url, host_header, str(pinned))


def pinned_session() -> requests.Session:
    """A session whose https connections go to the checked address (PinnedHostAdapter)."""
    # requests (20-30 ms) loads here, when the client makes its session for the first notice,
    # not at the dead-letter function's cold start.
    import requests

    from dead_letter.pinned_adapter import PinnedHostAdapter
    from spotline.deadline_adapter import DeadlineAdapter

    session = requests.Session()
    session.trust_env = False  # a proxy from the environment would undo the address pinning
    session.mount("https://", PinnedHostAdapter())
    session.mount("http://", DeadlineAdapter())  # test mode's local sink only (see TEST_MODE_ENV)
    return session


class CallbackSender:
    """Sign and POST user notices, refusing URLs that point inside the network."""

    def __init__(
        self,
        *,
        signing_key_ref: str | None,
        public_key: str | None,
        legacy_secret_ref: str | None = None,
        client: WebhookClient | None = None,
        resolver: Resolver = socket.getaddrinfo,
        resolve: Callable[[str], str] = resolve_secret,
        test_mode: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signing_key_ref = signing_key_ref
        self.public_key = public_key
        self.legacy_secret_ref = legacy_secret_ref
        # Short timeouts: a user's slow endpoint must not hold the dead-letter batch.
        self.client = client or WebhookClient(
            session_factory=pinned_session,
            connect_timeout_s=2.0,
            read_timeout_s=3.0,
            max_attempts=2,
            max_total_s=8.0,
        )
        self.resolver = resolver
        self._resolve = resolve
        self.test_mode = test_mode
        self._clock = clock

    def check(self, url: str) -> Target:
        return check_callback_url(url, resolver=self.resolver, test_mode=self.test_mode)

    def send(
        self, url: str, notice: dict[str, Any], *, deadline: Deadline | None = None
    ) -> Delivery:
        """POST the signed notice; raise CallbackRefused when the URL may not be called.

        Done by ``deadline`` (and within the client's ``max_total_s``), the host's DNS lookup
        included: the user's name server answers as slowly as its owner likes. A redirect comes
        back as a failed Delivery with a 3xx status (never followed).
        """
        deadline = self.client.deadline(deadline)
        try:
            target = run_within(deadline, lambda: self.check(url))
        except DeadlineExceeded:
            return Delivery(False, None, 0, f"{DEADLINE_EXCEEDED} (resolving the callback host)")
        signer = self._signer(deadline)
        if isinstance(signer, Delivery):
            return signer
        body = encode_notice(notice)
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "Host": target.host_header,
            "User-Agent": "spotline-callbacks/1",
            **signer.headers(notice_id(notice), timestamp, body),
        }
        if self.legacy_secret_ref:
            try:
                legacy_key = run_within(
                    deadline, lambda: self._resolve(str(self.legacy_secret_ref))
                )
            except Exception as exc:  # noqa: BLE001 - reported as a failed (retryable) delivery
                return Delivery(
                    False, None, 0, f"legacy signing key unavailable: {type(exc).__name__}"
                )
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(legacy_key, str(timestamp), body)
        return self.client.post(target.url, body, headers=headers, deadline=deadline)

    def _signer(self, deadline: Deadline) -> NoticeSigner | Delivery:
        """The signer from the stack's secret key, or the failed (retryable) delivery that says
        why not. Never an unsigned notice, and never a word of the key in the reason."""
        if not self.signing_key_ref:
            return Delivery(False, None, 0, "no signing key configured (NOTICE_SIGNING_KEY_SECRET)")
        if not self.public_key:
            return Delivery(False, None, 0, "no public key configured (NOTICE_PUBLIC_KEY)")
        try:
            secret = run_within(deadline, lambda: self._resolve(str(self.signing_key_ref)))
        except Exception as exc:  # noqa: BLE001 - reported as a failed (retryable) delivery
            return Delivery(False, None, 0, f"signing key unavailable: {type(exc).__name__}")
        try:
            signer = NoticeSigner.from_secret(secret)
        except NoticeKeyError as exc:
            return Delivery(False, None, 0, f"signing key unreadable: {exc}")
        # A notice signed by a key other than the published one would fail every receiver's
        # check: refuse it here, where the operator alert says why.
        if signer.public_key != self.public_key.strip():
            return Delivery(
                False, None, 0, "signing key does not match the stack's NoticePublicKey"
            )
        return signer
