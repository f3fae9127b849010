"""A dead letter is never silent: find its job, mark it DEAD_LETTERED with its reason, tell the
user (signed callback) and the operators (Slack, Discord), and only then call it done.

Each DLQ record ends one of these ways:

- a job the worker dead-lettered (message attributes carry the reason), or one that SQS moved
  after ``maxReceiveCount`` (no attributes: the reason is the job's ``last_error``, else the
  receive count): the job is marked, the notice and the alert go out;
- a job that succeeded meanwhile, or that an operator redrove after this message was sent:
  acknowledged without an alert (nothing is wrong any more);
- a body with no job id (not JSON, no ``job_id``) or an id with no job record: the operators
  are still alerted, with the message id and the first bytes of the body, escaped.

What was delivered is remembered per dead-lettering and per channel (in the job record, or for
messages without a job in a ledger item keyed by message id), so a retried record never sends
twice to a channel that already took it. Anything not delivered raises ``NotDelivered``: the
record is reported as a batch item failure and comes back; after the DLQ's own
``maxReceiveCount`` it lands in the notification-failures queue, which alarms.

Length note: about 400 lines, the three endings above and the tally of what each channel took;
the ledgers live in ``ledger.py`` and the user callbacks in ``callbacks.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dead_letter.callbacks import TEST_MODE_ENV, CallbackRefused, CallbackSender, build_notice
from dead_letter.ledger import MessageLedger
from spotline.alerts import Alert, AlertSender, Channel, Severity, channels_from_env
from spotline.contract import (
    ErrorKind,
    JobStatus,
    MessageAttribute,
    is_job_id,
    job_id_from_body,
)
from spotline.deadlines import Deadline
from spotline.jobstore import JobError, JobRecord, JobStore, utc_now
from spotline.notified import CALLBACK, delivered_for, notified_field
from spotline.webhooks import Delivery

BODY_PREVIEW_BYTES = 200
GIB = 2**30
# The user's endpoint may spend at most this part of a record's time: the operators' alert,
# which comes after it, always keeps the rest.
NOTICE_SHARE = 0.5


class NotDelivered(RuntimeError):
    """Some channel or the user notice failed; the record must be retried."""


@dataclass(frozen=True)
class DeadLetterConfig:
    channels: tuple[Channel, ...]
    notice_key_ref: str | None
    notice_public_key: str | None
    legacy_secret_ref: str | None = None  # deprecated: LegacyNoticeSignature
    callback_test_mode: bool = False
    stack_name: str = "spotline"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DeadLetterConfig:
        env = os.environ if environ is None else environ
        return cls(
            channels=tuple(channels_from_env(env)),
            notice_key_ref=env.get("NOTICE_SIGNING_KEY_SECRET", "").strip() or None,
            notice_public_key=env.get("NOTICE_PUBLIC_KEY", "").strip() or None,
            legacy_secret_ref=env.get("CALLBACK_SIGNING_SECRET", "").strip() or None,
            callback_test_mode=env.get(TEST_MODE_ENV, "").strip().lower() in ("1", "true"),
            stack_name=env.get("STACK_NAME", "").strip() or "spotline",
        )


# -- the record ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One DLQ record, as Lambda's SQS event source delivers it."""

    message_id: str
    body: str
    receive_count: int
    sent_timestamp_ms: int | None
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_event_record(cls, record: Mapping[str, Any]) -> DeadLetter:
        system = record.get("attributes") or {}
        attributes = {}
        for name, value in (record.get("messageAttributes") or {}).items():
            text = value.get("stringValue") if isinstance(value, dict) else None
            if text is not None:
                attributes[name] = str(text)
        sent = system.get("SentTimestamp")
        return cls(
            message_id=str(record.get("messageId", "")),
            body=str(record.get("body") or ""),
            receive_count=_int(system.get("ApproximateReceiveCount"), 1),
            sent_timestamp_ms=_int(sent, 0) or None,
            attributes=attributes,
        )

    @property
    def from_worker(self) -> bool:
        """The worker dead-lettered it itself (with the reason); else SQS's redrive moved it."""
        return MessageAttribute.ERROR_KIND in self.attributes

    @property
    def job_id(self) -> str | None:
        from_attribute = self.attributes.get(MessageAttribute.JOB_ID, "")
        return from_attribute if is_job_id(from_attribute) else job_id_from_body(self.body)

    def attribute_error(self) -> JobError | None:
        if not self.from_worker:
            return None
        kind = self.attributes[MessageAttribute.ERROR_KIND]
        return JobError(
            kind=ErrorKind(kind) if kind in ErrorKind.__members__ else ErrorKind.UNKNOWN,
            message=self.attributes.get(MessageAttribute.ERROR_MESSAGE, ""),
            peak_memory_bytes=_int(self.attributes.get(MessageAttribute.PEAK_MEMORY_BYTES), None),
        )

    def preview(self, limit: int = BODY_PREVIEW_BYTES) -> str:
        """The first bytes of the body with everything unprintable escaped."""
        head = self.body.encode("utf-8", errors="replace")[:limit]
        text = head.decode("ascii", errors="backslashreplace").encode("unicode_escape")
        suffix = "…" if len(self.body.encode("utf-8", errors="replace")) > limit else ""
        return text.decode("ascii") + suffix


def _int(value: Any, default: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# -- the outcome ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterOutcome:
    kind: str  # dead_lettered | succeeded | stale | unknown_job | unparseable
    job_id: str | None
    results: dict[str, str] = field(default_factory=dict)


def _plain(text: str, limit: int = 500) -> str:
    """Error text for chat: no mentions (``<!channel>``), no code fences breaking the layout."""
    cleaned = text.translate({ord("<"): "(", ord(">"): ")", ord("`"): "'", ord("&"): "+"})
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def _sent_at(letter: DeadLetter) -> str:
    if letter.sent_timestamp_ms is None:
        return "-"
    moment = datetime.fromtimestamp(letter.sent_timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeadLetterService:
    def __init__(
        self,
        *,
        store: JobStore,
        ledger: MessageLedger,
        alerts: AlertSender,
        callbacks: CallbackSender,
        stack_name: str = "spotline",
        logger: Any = None,
    ) -> None:
        # The handler's Powertools Logger (stdlib logging when used outside Lambda).
        self.logger = logger or logging.getLogger(__name__)
        self.store = store
        self.ledger = ledger
        self.alerts = alerts
        self.callbacks = callbacks
        self.stack_name = stack_name

    def redrive_command(self, job_id: str) -> str:
        return f"spotline --stack-name {self.stack_name} dlq redrive --job {job_id}"

    def handle(self, letter: DeadLetter, *, deadline: Deadline | None = None) -> DeadLetterOutcome:
        """Settle one dead letter; every delivery is done by ``deadline`` (delivered or not).

        Raises NotDelivered for anything not delivered, a delivery cut off by the deadline
        included, and at once when the deadline has passed already: the record comes back.
        """
        job_id = letter.job_id
        keys = {"job_id": job_id, "message_id": letter.message_id}
        if deadline is not None and deadline.expired:
            self.logger.warning("no time left in this invocation; record retried", extra=keys)
            raise NotDelivered(f"message {letter.message_id}: no time left in this invocation")
        if job_id is None:
            return self._without_job(letter, "unparseable", None, deadline)
        record = self.store.get(job_id)
        if record is None:
            return self._without_job(letter, "unknown_job", job_id, deadline)
        if record.status == JobStatus.SUCCEEDED:
            self.logger.info("dead letter for a job that succeeded; acknowledged", extra=keys)
            return DeadLetterOutcome("succeeded", job_id)
        if self._redriven_since(letter, record):
            self.logger.info("dead letter older than the job's redrive; acknowledged", extra=keys)
            return DeadLetterOutcome("stale", job_id)
        return self._dead_lettered(letter, record, deadline)

    # -- jobs ------------------------------------------------------------------------------

    @staticmethod
    def _redriven_since(letter: DeadLetter, record: JobRecord) -> bool:
        """An operator redrove the job after this message was sent: the message is history."""
        if record.status == JobStatus.DEAD_LETTERED or letter.sent_timestamp_ms is None:
            return False
        redriven_at = record.extra.get("redriven_at")
        if not isinstance(redriven_at, str):
            return False
        try:
            moment = datetime.fromisoformat(redriven_at.replace("Z", "+00:00"))
        except ValueError:
            return False
        return moment.timestamp() * 1000 > letter.sent_timestamp_ms

    def _reason(self, letter: DeadLetter, record: JobRecord) -> JobError:
        from_attributes = letter.attribute_error()
        if from_attributes is not None:
            return from_attributes
        exceeded = f"exceeded maxReceiveCount after {letter.receive_count} receives"
        if record.last_error is not None:
            last = record.last_error
            return JobError(
                last.kind, f"{last.message} ({exceeded})", last.peak_memory_bytes, last.limit_bytes
            )
        return JobError(ErrorKind.UNKNOWN, exceeded)

    def _dead_lettered(
        self, letter: DeadLetter, record: JobRecord, deadline: Deadline | None
    ) -> DeadLetterOutcome:
        if record.status != JobStatus.DEAD_LETTERED:
            # SQS's own redrive (a crashed worker never recorded an outcome) or a worker that
            # died between its steps: record it now. Doing it twice returns the first record.
            record = self.store.dead_letter(record.job_id, self._reason(letter, record))
        holder = f"message:{letter.message_id}"
        if not self.ledger.lease(record.job_id, holder):
            raise NotDelivered(
                f"job {record.job_id}: another invocation is notifying for it; retried later"
            )
        try:
            # Read again under the lease: the last holder may have delivered since we looked.
            return self._notify(letter, self.store.get(record.job_id) or record, deadline)
        finally:
            self.ledger.release(record.job_id, holder)

    def _notify(
        self, letter: DeadLetter, record: JobRecord, deadline: Deadline | None
    ) -> DeadLetterOutcome:
        error = record.last_error or self._reason(letter, record)
        analyzer = str(record.request.get("analyzer", "-"))
        keys = {
            "job_id": record.job_id,
            "message_id": letter.message_id,
            "analyzer": analyzer,
            "attempt": record.attempts,
        }
        results = delivered_for(record)

        # The notice goes first so the operator alert can say what happened to it (refused by
        # the SSRF guard, redirected, delivered): the operator is the one who can act on it.
        notice = results.get(CALLBACK)
        if notice is None:
            notice_deadline = deadline.part(NOTICE_SHARE) if deadline is not None else None
            notice = self._notify_user(record, error, keys, notice_deadline)
            if notice is not None and notice.startswith(("delivered", "refused")):
                results[CALLBACK] = notice  # final: never sent again for this dead-lettering
                self._remember(record, results)
        notice_text = notice or "no callback_url"

        alert = self._job_alert(record, error, analyzer, notice_text)
        deliveries = self.alerts.send(
            alert, skip=[c for c in results if c != CALLBACK], deadline=deadline
        )
        failed = _tally(deliveries, results)
        if deliveries:
            self._remember(record, results)
        if notice_text.startswith("failed"):
            failed[CALLBACK] = notice_text
        self.logger.warning(
            "job dead-lettered",
            extra={**keys, "error_kind": str(error.kind), "results": results, "failed": failed},
        )
        if failed:
            raise NotDelivered(f"job {record.job_id}: not delivered to {failed}")
        return DeadLetterOutcome("dead_lettered", record.job_id, results)

    def _notify_user(
        self,
        record: JobRecord,
        error: JobError,
        keys: dict[str, Any],
        deadline: Deadline | None,
    ) -> str | None:
        notify = record.request.get("notify")
        url = notify.get("callback_url") if isinstance(notify, dict) else None
        if not isinstance(url, str) or not url:
            return None
        notice = build_notice(
            record.job_id,
            error.kind,
            attempts=record.attempts,
            dead_lettered_at=record.finished_at,
        )
        try:
            delivery = self.callbacks.send(url, notice, deadline=deadline)
        except CallbackRefused as refused:
            self.logger.warning("user notice refused", extra={**keys, "reason": str(refused)})
            return f"refused: {refused}"
        if delivery.ok:
            return f"delivered {utc_now()}"
        if delivery.status is not None and 300 <= delivery.status < 400:
            return f"refused: callback answered HTTP {delivery.status} (redirects are not followed)"
        return f"failed: status {delivery.status}, {delivery.error}"

    def _remember(self, record: JobRecord, results: dict[str, str]) -> None:
        self.store.set_fields(record.job_id, notified_field(record, results))

    def _job_alert(self, record: JobRecord, error: JobError, analyzer: str, notice: str) -> Alert:
        redrive = self.redrive_command(record.job_id)
        return Alert(
            title=f"Job dead-lettered: {error.kind}",
            text=(
                f"Job {record.job_id} ({analyzer}) was dead-lettered: {_plain(error.message)}\n"
                f"Redrive: {redrive}"
            ),
            severity=Severity.CRITICAL,
            fields=(
                ("Job", record.job_id),
                ("Analyzer", analyzer),
                ("Error", f"{error.kind}: {_plain(error.message, 200)}"),
                ("Attempts", str(record.attempts)),
                ("Peak memory", _gib(error.peak_memory_bytes)),
                ("First submitted", record.created_at or "-"),
                ("Dead-lettered", record.finished_at or "-"),
                ("User notice", _plain(notice, 300)),
                ("Redrive", redrive),
            ),
            dedupe_key=f"dead-letter:{record.job_id}:{record.finished_at}",
            extra={"job_id": record.job_id, "error_kind": str(error.kind)},
        )

    # -- messages without a job ----------------------------------------------------------

    def _without_job(
        self, letter: DeadLetter, kind: str, job_id: str | None, deadline: Deadline | None
    ) -> DeadLetterOutcome:
        results = self.ledger.get(letter.message_id)
        title = "Unparseable dead letter" if job_id is None else "Dead letter for an unknown job"
        error = letter.attribute_error()
        reason = f"{error.kind}: {_plain(error.message, 200)}" if error else "-"
        preview = letter.preview()
        alert = Alert(
            title=title,
            text=(
                f"DLQ message {letter.message_id} has "
                + ("no job id" if job_id is None else f"job id {job_id} but no job record")
                + f". First bytes (escaped): {_plain(preview, 300)}"
            ),
            severity=Severity.WARNING,
            fields=(
                ("Message id", letter.message_id),
                ("Job", job_id or "-"),
                ("Receives", str(letter.receive_count)),
                ("Sent", _sent_at(letter)),
                ("Reason", reason),
                ("Body (first bytes, escaped)", _plain(preview, 300)),
            ),
            dedupe_key=f"dead-letter-message:{letter.message_id}",
            extra={"message_id": letter.message_id},
        )
        deliveries = self.alerts.send(alert, skip=list(results), deadline=deadline)
        failed = _tally(deliveries, results)
        if deliveries:
            self.ledger.put(letter.message_id, results)
        self.logger.warning(
            kind.replace("_", " ") + " dead letter",
            extra={"job_id": job_id, "message_id": letter.message_id, "results": results},
        )
        if failed:
            raise NotDelivered(f"message {letter.message_id}: not delivered to {failed}")
        return DeadLetterOutcome(kind, job_id, results)


def _tally(deliveries: Mapping[str, Delivery], results: dict[str, str]) -> dict[str, str]:
    """Record each channel that took the alert in ``results`` (never sent to again); return
    the ones that did not, with why."""
    failed = {}
    for channel, delivery in deliveries.items():
        if delivery.ok:
            results[channel] = f"delivered {utc_now()}"
        else:
            failed[channel] = f"status {delivery.status}, {delivery.error}"
    return failed
