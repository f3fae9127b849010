"""Claim: read the message, find its job, take it (or say why not) in one conditional write.

The common case costs one write and no read: a valid request whose job is ``QUEUED``. Every
other case reads the record and returns a verdict (gpu_worker/decisions.py, ``CLAIM_TABLE``):
a copy of a job under a live lease never runs it; a takeover happens only once the holder's
lease has run out.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from gpu_worker.attempt import Attempt
from gpu_worker.decisions import ClaimVerdict
from spotline.contract import InvalidJob, JobMessage, JobStatus, RequestPolicy, validate_request
from spotline.jobstore import JobRecord, JobStore, TransitionRefused

logger = Logger(service="spotline-worker", child=True)


@dataclass(frozen=True)
class Claim:
    verdict: ClaimVerdict
    reason: str = ""
    wait_s: int = 0  # HOLDERS_OWN: how long the holder's lease still runs


def new_token(worker_id: str, message_id: str) -> str:
    """An ownership token: ``worker/message/attempt`` (the last part names the attempt)."""
    return f"{worker_id}/{message_id}/{uuid.uuid4().hex[:12]}"


def _explain(exc: InvalidJob) -> str:
    details = "; ".join(f"{v.path}: {v.message}" for v in exc.violations)
    return f"{exc}: {details}" if details else str(exc)


class Claimer:
    def __init__(
        self, store: JobStore, policy: RequestPolicy, *, worker_id: str, lease_s: int
    ) -> None:
        self._store = store
        self._policy = policy
        self._worker_id = worker_id
        self._lease_s = lease_s

    def claim(self, attempt: Attempt, *, prepared: bool = False) -> Claim:
        """Fill ``attempt`` with what was found and say what to do with the message.
        ``prepared``: claimed ahead of its start (gpu_worker/preparer.py)."""
        message = attempt.message
        try:
            job_message = JobMessage.from_json(message.body)
        except InvalidJob as exc:
            return Claim(ClaimVerdict.UNREADABLE, str(exc))
        attempt.job_message = job_message
        token = new_token(self._worker_id, message.message_id)
        attempt.prepared = prepared
        if self._claim_if_queued(attempt, token):
            return Claim(ClaimVerdict.RUN)
        # Everything else (a takeover, a duplicate, a dead letter to finish, an invalid
        # request, no record) reads the record first and decides from it.
        record = self._store.get(job_message.job_id)
        if record is None:
            return Claim(ClaimVerdict.UNREADABLE, "no job record for this job_id")
        attempt.record = record
        if record.status == JobStatus.SUCCEEDED:
            return Claim(ClaimVerdict.SUCCEEDED, "duplicate delivery of a succeeded job")
        if record.status == JobStatus.DEAD_LETTERED:
            return Claim(ClaimVerdict.DEAD_LETTERED, "a previous holder died mid dead-lettering")
        if record.lease_live(time.time()):
            return self._under_lease(attempt, record)
        try:
            request = validate_request(job_message.request, self._policy)
        except InvalidJob as exc:
            return Claim(ClaimVerdict.INVALID, _explain(exc))
        try:
            claimed = self._store.claim(
                record.job_id,
                token,
                self._worker_id,
                expect_owner=record.owner_token,
                lease_s=self._lease_s,
                message_id=message.message_id,
                prepared=prepared,
            )
        except TransitionRefused as refused:
            current = refused.current
            if current is not None and current.status == JobStatus.SUCCEEDED:
                return Claim(ClaimVerdict.SUCCEEDED, "succeeded while we looked")
            logger.info(
                "job taken by another holder; leaving this copy",
                extra={"status": str(current.status) if current else None},
            )
            return Claim(ClaimVerdict.TAKEN, "another holder took the job")
        attempt.record, attempt.request, attempt.token = claimed, request, token
        attempt.ran_before = True
        return Claim(ClaimVerdict.RUN)

    def _claim_if_queued(self, attempt: Attempt, token: str) -> bool:
        """The common case in one conditional write, no read first."""
        assert attempt.job_message is not None
        try:
            request = validate_request(attempt.job_message.request, self._policy)
            record, ran_before = self._store.claim_queued(
                attempt.job_message.job_id,
                token,
                self._worker_id,
                lease_s=self._lease_s,
                message_id=attempt.message.message_id,
                prepared=attempt.prepared,
            )
        except (InvalidJob, TransitionRefused):
            return False
        attempt.record, attempt.request, attempt.token = record, request, token
        attempt.ran_before = ran_before
        return True

    @staticmethod
    def _under_lease(attempt: Attempt, record: JobRecord) -> Claim:
        """A copy of a job whose holder's lease is live: never run it. Exactly one message
        must stay able to recover the job if the holder dies: the holder's own."""
        if record.holder_message_id not in (None, attempt.message.message_id):
            # A duplicate (at-least-once delivery, a re-send): the holder's message recovers
            # the job if the holder dies, so this copy goes.
            return Claim(ClaimVerdict.DUPLICATE, "duplicate delivery under a live lease")
        # The holder's own message came back (its visibility extension failed, or clocks
        # differ): keep it, invisible until the lease ends; then it takes the job over.
        assert record.lease_expires_at is not None
        wait_s = max(1, int(record.lease_expires_at - time.time()) + 1)
        return Claim(ClaimVerdict.HOLDERS_OWN, "the holder's lease is live", wait_s)
