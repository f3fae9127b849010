"""Settle: carry out a decision on the message in hand and its job, in an order that loses
nothing if the process dies between any two steps.

| decision            | steps                                                              |
|---------------------|--------------------------------------------------------------------|
| ACK                 | result object of this attempt -> SUCCEEDED (conditional) -> delete |
| RETRY               | QUEUED with attempts+1 -> release the message with backoff         |
| REQUEUE             | QUEUED with interruptions+1 -> fresh copy -> delete the old one    |
| DEAD_LETTER         | DEAD_LETTERED -> DLQ copy with the reason -> mark it sent -> delete |
| RELEASE (AWS fault) | give the job back uncounted -> release the message with backoff   |
| ESCALATE            | copy to the tier's queue -> QUEUED, tier history -> delete         |
|                     | (copy not sent: the table's own decision instead; escalation.py)   |

A Settler never calls back into the worker: the worker decides, the settler does.

Length note: ``Settler`` is about 300 lines because each row of the table above is one method
whose steps must be read in order beside the others (they share the guards: the ownership
token, the result key, the crash points the tests drive). Split by row, a reader would compare
five files to see that every path acknowledges last.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aws_lambda_powertools import Logger

from gpu_worker.attempt import Attempt
from gpu_worker.checkpoint import CheckpointStore, FileCheckpointStore, ResultStore
from gpu_worker.claim import Claim
from gpu_worker.decisions import CLAIM_TABLE, Action, Decision, decide_infra_fault
from gpu_worker.escalation import Escalator
from gpu_worker.faults import FaultTracker, describe, is_infra_fault
from gpu_worker.intake import Intake
from gpu_worker.metrics import WorkerMetrics
from gpu_worker.queues import dead_letters_of, home_of
from spotline.contract import ErrorKind, JobStatus, MessageAttribute, job_id_from_body
from spotline.jobstore import JobError, JobRecord, JobStore, TransitionRefused, attempt_id, utc_now
from spotline.queue import JobQueue, ReceivedMessage

logger = Logger(service="spotline-worker", child=True)

# Test-only fault injection: WORKER_TEST_CRASH_AT=<step> makes the process die at that step of
# dead-lettering (os._exit, as abrupt as a SIGKILL) so tests can prove nothing is lost there.
CRASH_EXIT_CODE = 70


def crash_point_from_env() -> Callable[[str], None]:
    crash_at = os.environ.get("WORKER_TEST_CRASH_AT", "")

    def crash_point(step: str) -> None:
        if crash_at and crash_at == step:
            logger.warning("test crash point reached", extra={"crash_point": step})
            os._exit(CRASH_EXIT_CODE)

    return crash_point


class Settler:
    def __init__(
        self,
        *,
        queue: JobQueue,
        dlq: JobQueue,
        store: JobStore,
        results: ResultStore,
        checkpoints: CheckpointStore | FileCheckpointStore,
        intake: Intake,
        faults: FaultTracker,
        metrics: WorkerMetrics,
        backoff_base_s: float,
        backoff_max_s: float,
        max_receive_count: int,
        escalator: Escalator | None = None,
    ) -> None:
        self.queue = queue
        self.escalator = escalator
        self.dlq = dlq
        self.store = store
        self.results = results
        self.checkpoints = checkpoints
        self.intake = intake
        self.faults = faults
        self.metrics = metrics
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_receive_count = max_receive_count
        self.crash_point = crash_point_from_env()

    # -- before an attempt ---------------------------------------------------------------------

    def claimed(self, claim: Claim, attempt: Attempt) -> None:
        """Settle a message the claim decided not to run (every verdict but RUN)."""
        action = CLAIM_TABLE[claim.verdict]
        message = attempt.message
        if action is Action.DELETE:
            logger.info("acknowledged without running", extra={"reason": claim.reason})
            self.queue.delete(message.receipt_handle)
        elif action is Action.FINISH_DEAD_LETTER:
            assert attempt.record is not None
            self.finish_dead_letter(message, attempt.record)
        elif action is Action.DEAD_LETTER:
            assert attempt.record is not None
            error = JobError(ErrorKind.INVALID_INPUT, claim.reason)
            self.dead_letter(message, attempt.record, error, None)
        elif action is Action.DEAD_LETTER_MESSAGE:
            self.dead_letter_message(message, claim.reason)
        elif action is Action.HOLD:
            logger.info(
                "job's holder still holds its lease; message kept", extra={"wait_s": claim.wait_s}
            )
            self.queue.change_visibility(message.receipt_handle, claim.wait_s)
        # LEAVE: another holder has the job; this copy is left alone.

    # -- after an attempt ----------------------------------------------------------------------

    def apply(
        self,
        decision: Decision,
        attempt: Attempt,
        error: JobError | None,
        *,
        output_json: str | None = None,
        checkpointed: bool = True,
    ) -> None:
        assert attempt.record is not None and attempt.token is not None
        message, record, token = attempt.message, attempt.record, attempt.token
        try:
            if decision.action not in (Action.ABANDON, Action.ACK):  # ACK: record_success
                attempt.wait_started(self.store)
            if decision.action is Action.ABANDON:
                # Another holder owns the job: nothing of ours is recorded, and our message
                # (if it is still the job's) finds the job under the new holder's lease.
                logger.warning("attempt abandoned: ownership lost")
            elif decision.action is Action.ACK:
                assert output_json is not None
                self._acknowledge(attempt, output_json, checkpointed)
            elif decision.action is Action.RETRY:
                assert error is not None
                self.store.release(record.job_id, token, error)
                self.queue.change_visibility(message.receipt_handle, int(decision.backoff_s))
            elif decision.action is Action.REQUEUE:
                assert error is not None
                self._requeue(attempt, error)
            elif decision.action is Action.ESCALATE:
                assert error is not None and decision.fallback is not None
                if self.escalator is None or not self.escalator.carry_out(
                    attempt, error, decision, self.queue
                ):
                    self.apply(decision.fallback, attempt, error, checkpointed=checkpointed)
            else:
                assert error is not None
                if error.kind == ErrorKind.INTERRUPTED:
                    error = JobError(ErrorKind.INTERRUPTED, decision.reason)
                self.dead_letter(message, record, error, token, ran=True)
        except TransitionRefused as refused:
            # We were presumed dead and someone else owns the job now: drop our outcome.
            logger.warning(
                "outcome refused: ownership lost",
                extra={"status": str(refused.current.status) if refused.current else None},
            )

    def _acknowledge(self, attempt: Attempt, output_json: str, checkpointed: bool) -> None:
        finisher = self.intake.finisher
        if finisher is None or not self.intake.backlog:
            # No backlog: record it now, and acknowledge at once.
            self.record_success(attempt, output_json, checkpointed, now=True)
            return

        def finish() -> None:
            try:
                self.record_success(attempt, output_json, checkpointed)
            except TransitionRefused:
                logger.warning("outcome refused: ownership lost", extra={"job_id": attempt.job_id})
            except Exception as exc:  # recorded later by the message's next copy
                if not is_infra_fault(exc):
                    raise
                self.release_for_fault(attempt, exc)

        # The next job starts while this one is recorded: the same steps and guards, later.
        assert attempt.record is not None
        finisher.submit(attempt.record.job_id, finish)

    def record_success(
        self, attempt: Attempt, output_json: str, checkpointed: bool, *, now: bool = False
    ) -> None:
        assert attempt.record is not None and attempt.token is not None
        record, token, message = attempt.record, attempt.token, attempt.message
        this_attempt = attempt_id(token)
        attempt.wait_started(self.store)  # the attempt id is on the record before its output
        try:
            uri = self.results.put(record.job_id, output_json, this_attempt)
        except Exception:
            # The write may have landed with its answer lost: the rerun writes its own object.
            self._discard_output(record.job_id, this_attempt)
            raise
        try:
            self.store.complete_quietly(record.job_id, token, uri)
        except TransitionRefused:
            # Presumed dead and replaced: our output is not the job's result. Remove it.
            self._discard_output(record.job_id, this_attempt)
            raise
        except Exception:
            # Did the completion land with its answer lost? Only the record can tell; while
            # it cannot be read, the object stays (an orphan beats a result that is missing).
            current = self._read_quietly(record.job_id)
            if current is None or current.result_uri != uri:
                if current is not None:
                    self._discard_output(record.job_id, this_attempt)
                raise
        # Earlier attempts killed between their result write and their completion left
        # objects no record names: this one is the result, those go.
        self._discard_earlier_outputs(record, this_attempt)
        self.intake.acknowledge(message, now=now)
        if checkpointed:
            try:
                self.checkpoints.delete(record.job_id)
            except Exception:
                logger.warning("checkpoint cleanup failed", exc_info=True)

    def _discard_earlier_outputs(self, record: JobRecord, this_attempt: str) -> None:
        for earlier in sorted(record.attempt_ids - {this_attempt}):
            self._discard_output(record.job_id, earlier)

    def _discard_output(self, job_id: str, this_attempt: str) -> None:
        try:
            self.results.discard(job_id, this_attempt)
        except Exception:  # an orphan under results/{job_id}, never named by the record
            logger.warning("could not remove an unrecorded attempt's output", exc_info=True)

    def _read_quietly(self, job_id: str) -> JobRecord | None:
        try:
            return self.store.get(job_id)
        except Exception:  # AWS failing still: the caller keeps what it cannot judge
            logger.warning("could not read the job record", exc_info=True)
            return None

    def _requeue(self, attempt: Attempt, error: JobError) -> None:
        """Interruption: a fresh copy restarts ApproximateReceiveCount, so preemptions never
        push a job toward the queue's maxReceiveCount redrive."""
        assert attempt.record is not None and attempt.token is not None
        assert attempt.job_message is not None
        updated = self.store.release(attempt.record.job_id, attempt.token, error, interrupted=True)
        home = home_of(self.queue, attempt.message.receipt_handle)
        home.send(attempt.job_message.with_interruptions(updated.interruptions))
        self.queue.delete(attempt.message.receipt_handle)

    # -- dead letters ----------------------------------------------------------------------------

    def dead_letter(
        self,
        message: ReceivedMessage,
        record: JobRecord,
        error: JobError,
        token: str | None,
        *,
        ran: bool = False,
    ) -> None:
        """Record first, then DLQ, then delete: a crash between any two steps loses nothing
        (the redelivered copy finds the job DEAD_LETTERED and finishes the remaining steps).

        ``ran``: this attempt ran and failed, so it counts (the third OOM says attempts=3).
        """
        if ran:
            assert token is not None
            # No earlier attempt's output is the result of a dead-lettered job.
            self._discard_earlier_outputs(record, attempt_id(token))
            try:
                record = self.store.transition(
                    record.job_id,
                    JobStatus.DEAD_LETTERED,
                    expect_owner=token,
                    set_values={"last_error": error.to_dict(), "finished_at": utc_now()},
                    remove=("owner_token",),
                    increment={"attempts": 1},
                )
            except TransitionRefused as refused:
                if refused.current is None or refused.current.status != JobStatus.DEAD_LETTERED:
                    raise
                record = refused.current
        else:
            record = self.store.dead_letter(record.job_id, error, expect_owner=token)
        self.crash_point("after_record")
        self.finish_dead_letter(message, record)

    def finish_dead_letter(self, message: ReceivedMessage, record: JobRecord) -> None:
        # Keyed per occurrence (the dead-lettering's finished_at, as the dead-letter function
        # keys its notices): a redriven job that fails again goes to the DLQ again.
        occurrence = record.finished_at or "-"
        sent_for = record.extra.get("dlq_sent_for")
        sent = sent_for == occurrence or (sent_for is None and record.extra.get("dlq_sent") is True)
        if not sent:
            error = record.last_error or JobError(ErrorKind.UNKNOWN, "dead-lettered")
            self._dead_letters(message).send_body(
                message.body,
                attributes={
                    MessageAttribute.JOB_ID: record.job_id,
                    MessageAttribute.ERROR_KIND: str(error.kind),
                    MessageAttribute.ERROR_MESSAGE: error.message[:512],
                    MessageAttribute.ATTEMPTS: record.attempts,
                    MessageAttribute.PEAK_MEMORY_BYTES: error.peak_memory_bytes,
                },
            )
            self.crash_point("after_dlq_send")
            self.store.set_fields(record.job_id, {"dlq_sent": True, "dlq_sent_for": occurrence})
            self.crash_point("after_dlq_marked")
        self.queue.delete(message.receipt_handle)
        logger.warning(
            "job dead-lettered",
            extra={"error_kind": str(record.last_error.kind) if record.last_error else None},
        )

    def _dead_letters(self, message: ReceivedMessage) -> JobQueue:
        """The DLQ of the queue the message came from (gpu_worker/queues.py)."""
        return dead_letters_of(self.queue, self.dlq, message.receipt_handle)

    def dead_letter_message(self, message: ReceivedMessage, reason: str) -> None:
        """A message that is not a job we know: to the DLQ as INVALID_INPUT, then delete."""
        self._dead_letters(message).send_body(
            message.body,
            attributes={
                MessageAttribute.JOB_ID: job_id_from_body(message.body),
                MessageAttribute.ERROR_KIND: str(ErrorKind.INVALID_INPUT),
                MessageAttribute.ERROR_MESSAGE: reason,
                MessageAttribute.ATTEMPTS: 0,
            },
        )
        self.queue.delete(message.receipt_handle)
        logger.warning("invalid message dead-lettered", extra={"reason": reason})

    # -- AWS faults ------------------------------------------------------------------------------

    def release_for_fault(self, attempt: Attempt, exc: BaseException) -> Decision:
        """An AWS fault (or one that settling the job met): release the message with backoff,
        give the job back if we hold it, count no attempt. Every step may fail again: the
        lease runs out and the message reappears on its own, so nothing here may raise."""
        consecutive = self.faults.fault(exc)
        decision = decide_infra_fault(
            consecutive, backoff_base_s=self.backoff_base_s, backoff_max_s=self.backoff_max_s
        )
        logger.warning(
            "AWS fault while handling the job; released, no attempt counted",
            extra={
                "action": str(decision.action),
                "error": describe(exc),
                "consecutive_faults": consecutive,
                "backoff_s": decision.backoff_s,
                "degraded": self.faults.degraded,
            },
        )
        self.metrics.record_infra_fault()
        message = attempt.message
        if attempt.claimed:
            assert attempt.record is not None and attempt.token is not None
            try:
                attempt.wait_started(self.store)  # given back started, it keeps its checkpoint
                self.store.give_back(attempt.record.job_id, attempt.token)
            except Exception:  # our lease runs out instead
                logger.warning("could not give the job back; its lease runs out", exc_info=True)
        if message.receive_count >= self.max_receive_count - 1:
            # One more receive and SQS's redrive would dead-letter the job for AWS's fault: a
            # fresh copy (receive count 0) replaces this one. A duplicate is harmless (lease).
            try:
                home_of(self.queue, message.receipt_handle).send_body(
                    message.body, delay_s=int(decision.backoff_s)
                )
                self.queue.delete(message.receipt_handle)
                return decision
            except Exception:  # fall back to releasing this copy
                logger.warning("could not re-send the message fresh", exc_info=True)
        try:
            self.queue.change_visibility(message.receipt_handle, int(decision.backoff_s))
        except Exception:  # it comes back after the window instead
            logger.warning("could not release the message", exc_info=True)
        return decision
