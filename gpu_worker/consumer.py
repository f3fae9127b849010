"""The worker's story: receive a job message -> supervise its analysis -> decide its fate."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid
from types import FrameType
from typing import Any

from aws_lambda_powertools import Logger

from gpu_worker.analyzers import Job
from gpu_worker.checkpoint import CheckpointStore, FileCheckpointStore, InputError, ResultStore
from gpu_worker.child import first_line
from gpu_worker.config import WorkerConfig
from gpu_worker.decisions import (
    Action,
    Decision,
    decide,
    decide_abandoned,
    decide_infra_fault,
)
from gpu_worker.faults import FaultTracker, describe, is_infra_fault
from gpu_worker.health import HealthServer, start_health_server, worker_snapshot
from gpu_worker.interruption import (
    Interruption,
    InterruptionWatch,
    monitors_for,
    signal_interruption,
)
from gpu_worker.memory import MemoryGuard, container_memory, job_limit_bytes
from gpu_worker.metrics import WorkerMetrics, metric_dimensions, sink_for
from gpu_worker.prefetch import Acker, Finisher, Prefetcher
from gpu_worker.supervisor import Outcome, Supervisor
from pipeline.contract import (
    ErrorKind,
    InvalidJob,
    JobMessage,
    JobStatus,
    MessageAttribute,
    job_id_from_body,
    validate_request,
)
from pipeline.jobstore import (
    JobError,
    JobRecord,
    JobStore,
    TransitionRefused,
    attempt_id,
    utc_now,
)
from pipeline.queue import JobQueue, QueueError, ReceivedMessage

logger = Logger(service="spotline-worker")

OUTCOME_LABELS = {
    Action.ACK: "SUCCEEDED",
    Action.RETRY: "RETRIED",
    Action.DEAD_LETTER: "DEAD_LETTERED",
    Action.REQUEUE: "REQUEUED",
    Action.RELEASE: "RELEASED",
    Action.ABANDON: "ABANDONED",
}
# Test-only fault injection: WORKER_TEST_CRASH_AT=<step> makes the process die at that step of
# dead-lettering (os._exit, as abrupt as a SIGKILL) so tests can prove nothing is lost there.
CRASH_EXIT_CODE = 70


# Time kept back from a notice's deadline for releasing the job and exiting after the grace.
EXIT_RESERVE_S = 5.0
# Sent by the interruption watch to the main thread to cut an idle long poll short.
WAKE_SIGNAL = signal.SIGUSR1
# Succeeded jobs recorded side by side (result to S3, then SUCCEEDED): one job's two calls stay
# in order, two jobs' calls overlap, so recording keeps up with a fast analysis.
FINISHER_THREADS = 2


class ShutdownRequested(BaseException):
    """Raised by the signal handler to cut an idle long poll short (BaseException: botocore
    must not treat it as a retryable connection error)."""


class Heartbeat:
    """Keeps a received message invisible while its job runs, and the job's lease with it:
    extends both every third of the window. Returns an error once the job is no longer ours."""

    def __init__(
        self,
        queue: JobQueue,
        receipt_handle: str,
        window_s: int,
        extended_at: float | None = None,
        *,
        store: JobStore | None = None,
        job_id: str = "",
        token: str = "",
    ) -> None:
        self._queue = queue
        self._receipt = receipt_handle
        self._window_s = window_s
        self._store = store
        self._job_id = job_id
        self._token = token
        # A prefetched message was last extended while it was held, not when its job began.
        self._last = time.monotonic() if extended_at is None else extended_at
        self.extensions = 0

    def tick(self) -> JobError | None:
        if time.monotonic() - self._last < self._window_s / 3:
            return None
        self._last = time.monotonic()
        try:
            self._queue.change_visibility(self._receipt, self._window_s)
            self.extensions += 1
        except QueueError:
            # The next tick tries again; if the receipt is gone, the job's outcome write will
            # be refused by the ownership check, so nothing is recorded twice.
            logger.warning("visibility extension failed", exc_info=True)
        if self._store is None:
            return None
        try:
            self._store.renew_lease(self._job_id, self._token, self._window_s)
        except TransitionRefused as refused:
            current = refused.current
            logger.warning(
                "lease lost: the job is no longer ours; stopping its analysis",
                extra={"status": str(current.status) if current else None},
            )
            return JobError(ErrorKind.INTERRUPTED, "ownership lost: the job was taken over")
        except Exception:  # AWS failing: the next tick tries again
            logger.warning("lease renewal failed", exc_info=True)
        return None


@dataclasses.dataclass
class Handling:
    """What the worker knows about the message in hand, for whatever ends its handling."""

    message: ReceivedMessage
    job_message: JobMessage | None = None
    record: JobRecord | None = None
    token: str | None = None

    @property
    def attempt_id(self) -> str:
        return (self.token or "").rsplit("/", 1)[-1]


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        sqs: Any,
        dynamodb: Any,
        s3: Any,
        cloudwatch: Any = None,
        autoscaling: Any = None,
    ) -> None:
        self.config = config
        self.queue = JobQueue(sqs, config.queue_url)
        self.dlq = JobQueue(sqs, config.dlq_url)
        self.store = JobStore(dynamodb, config.table_name)
        self.results = ResultStore(s3, config.bucket)
        self.checkpoints: CheckpointStore | FileCheckpointStore = (
            FileCheckpointStore(config.checkpoint_dir)
            if config.checkpoint_dir
            else CheckpointStore(s3, config.bucket)
        )
        self.supervisor = Supervisor(
            on_checkpoint=self.checkpoints.save,
            on_artifact=self.results.put_artifact,
            tick_s=config.tick_s,
            preload=config.preload_names,
            preload_timeout_s=config.preload_timeout_s,
        )
        self.stopping = threading.Event()
        self.draining = threading.Event()  # take no new job (rebalance recommendation)
        # Throughput on a backlog (gpu_worker/prefetch.py); None with WORKER_PREFETCH=0.
        self.prefetch: Prefetcher | None = None
        self.finisher: Finisher | None = None
        self.acker: Acker | None = None
        # Prefetch only while jobs are short (WORKER_PREFETCH_MAX_JOB_S): behind a long job a
        # held message would wait the whole job while another GPU may sit idle, and the
        # receive it saves is a negligible part of a long job anyway.
        self._short_jobs = False
        self.interruption: Interruption | None = None
        # Every source the settings ask for; ``autoscaling`` completes the ASG hook's action.
        self.watch = InterruptionWatch(
            monitors_for(config, autoscaling=autoscaling), self.on_interruption
        )
        self._wake_installed = False
        self._signals = 0
        self._receiving = False
        self.jobs_handled = 0
        # -- poison jobs: the child's memory guard, health and metrics --
        self.container = container_memory()
        self.memory_guard = MemoryGuard(
            job_limit_bytes(config.job_memory_limit, self.container.limit_bytes),
            sample_s=config.memory_sample_s,
        )
        self.supervisor.watchers.append(self.memory_guard)
        self.metrics = WorkerMetrics(
            sink_for(config.metrics_sink, lambda: cloudwatch),
            namespace=config.metrics_namespace,
            dimensions=metric_dimensions(config.metrics_dimensions, config.metrics_service),
            interval_s=config.metrics_interval_s,
            alive=lambda: worker_snapshot(self, stale_poll_s=self._stale_poll_s)["ok"],
            container_memory_pct=lambda: container_memory().used_pct,
            child_restarts=lambda: self.supervisor.restarts,
        )
        self.health: HealthServer | None = None
        self.started_at: float | None = None
        self.last_poll_at: float | None = None
        self._stale_poll_s = max(90.0, 3.0 * (config.wait_s + 10))
        self._crash_at = os.environ.get("WORKER_TEST_CRASH_AT", "")
        # A job's boundaries (the same rules as the enqueue function) and AWS faults seen.
        self.policy = config.policy
        self.faults = FaultTracker(config.degraded_after_faults)
        self.handling: Handling | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(WAKE_SIGNAL, self._on_wake)
        self._wake_installed = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self._signals += 1
        if self._signals > 1:
            # rq's rule: the second signal means now. The job is released as interrupted.
            logger.warning("second signal: stopping the analysis at once", extra={"signal": name})
            self.supervisor.request_stop(grace_s=0)
        else:
            self.watch.emit(signal_interruption(name))
        if self._receiving:
            raise ShutdownRequested

    def _on_wake(self, signum: int, frame: FrameType | None) -> None:
        if self._receiving and (self.stopping.is_set() or self.draining.is_set()):
            raise ShutdownRequested

    def _wake_main_thread(self) -> None:
        """Cut the main thread's idle long poll short (it may wait up to 20 s otherwise)."""
        main = threading.main_thread()
        if self._wake_installed and self._receiving and threading.current_thread() is not main:
            assert main.ident is not None
            signal.pthread_kill(main.ident, WAKE_SIGNAL)

    def on_interruption(self, event: Interruption) -> None:
        """The one consumer of every interruption source (called on the watch thread, or in
        the signal handler). A rebalance recommendation only drains, unless configured to
        checkpoint; anything else stops receiving and asks the running analyzer to checkpoint
        within the grace, which the notice's deadline may shorten."""
        seconds_left = event.seconds_left()
        logger.warning(
            "interruption",
            extra={
                "source": event.source,
                "action": str(event.action),
                "detail": event.detail,
                "seconds_left": round(seconds_left, 1) if seconds_left is not None else None,
            },
        )
        if event.advisory and self.config.rebalance_action == "drain":
            self.draining.set()
            self._wake_main_thread()
            return
        if self.interruption is None:
            self.interruption = event
        grace_s = self.config.checkpoint_grace_s
        if seconds_left is not None:
            grace_s = max(0.0, min(grace_s, seconds_left - EXIT_RESERVE_S))
        self.request_stop(event.describe(), grace_s=grace_s)
        self._wake_main_thread()

    def request_stop(self, reason: str, grace_s: float | None = None) -> None:
        if not self.stopping.is_set():
            logger.info("stopping", extra={"reason": reason})
        self.stopping.set()
        self.supervisor.request_stop(self.config.checkpoint_grace_s if grace_s is None else grace_s)

    def run(self) -> None:
        logger.info("worker starting", extra={"config": self.config.describe()})
        self.start_services()
        self.supervisor.ensure_child()
        self.watch.start()
        self.start_intake()
        try:
            while not self.stopping.is_set():
                if self.draining.is_set():
                    # Drained: no new jobs; wait for the notice (or a signal) that ends us.
                    self.close_intake()  # a drained worker holds no prefetched message either
                    self.stopping.wait(1.0)
                    continue
                try:
                    self.poll_once()
                except ShutdownRequested:
                    continue
                except Exception as exc:  # noqa: BLE001 - outside any one job: AWS, never a job
                    self._loop_fault(exc)
        finally:
            self.watch.stop()
            self.close_intake()
            self.supervisor.close()
            self.watch.after_release()  # e.g. complete the ASG lifecycle action
            self.stop_services()
            logger.info(
                "worker stopped",
                extra={
                    "jobs_handled": self.jobs_handled,
                    "interruption": self.interruption.describe() if self.interruption else None,
                },
            )

    def start_intake(self) -> None:
        """The prefetcher, finisher and acker threads (WORKER_PREFETCH > 0)."""
        if not self.config.prefetch or self.prefetch is not None:
            return
        self.prefetch = Prefetcher(
            self.queue,
            capacity=self.config.prefetch,
            visibility_window_s=self.config.visibility_window_s,
            may_receive=lambda: not (self.stopping.is_set() or self.draining.is_set()),
            may_refill=lambda: self._short_jobs,
        ).start()
        # As many finished jobs may wait to be recorded as messages may wait to be run.
        self.finisher = Finisher(depth=self.config.prefetch, threads=FINISHER_THREADS).start()
        self.acker = Acker(self.queue, max_delay_s=self.config.ack_delay_s).start()

    def close_intake(self) -> None:
        """Stopping or draining: held messages go back at once, succeeded jobs are recorded,
        pending acks are sent. Later outcomes take the synchronous path."""
        prefetch, finisher, acker = self.prefetch, self.finisher, self.acker
        self.prefetch, self.finisher, self.acker = None, None, None
        if prefetch is not None:
            prefetch.close()
        if finisher is not None:
            finisher.close()
        if acker is not None:
            acker.close()

    def poll_once(self) -> None:
        taken = self.prefetch.take() if self.prefetch is not None else None
        if taken is not None:
            message, extended_at = taken
            if self.stopping.is_set() or self.draining.is_set():
                self._release_unstarted(message)
                return
            self.handle(message, extended_at=extended_at)
            return
        # Idle: the long poll. With prefetch it asks for more: if it gets all it asked for,
        # there is a backlog, and the prefetcher keeps the next job at hand.
        if self.acker is not None:
            self.acker.flush()  # a burst ended: its last acks need not wait for a batch
        prefetching = self.prefetch is not None and self._short_jobs
        wanted = 1 + (self.config.prefetch if prefetching else 0)
        self._receiving = True
        try:
            messages = self.queue.receive(
                max_messages=wanted,
                wait_s=self.config.wait_s,
                visibility_s=self.config.visibility_window_s,
            )
            self.last_poll_at = time.time()
        except QueueError as exc:
            self._loop_fault(exc)
            return
        finally:
            self._receiving = False
        if self.prefetch is not None and prefetching and messages:
            self.prefetch.offer(messages[1:], backlog=len(messages) >= wanted)
            messages = messages[:1]
        for message in messages:
            if self.stopping.is_set() or self.draining.is_set():
                # Received but not started: give it back at once, not after a window.
                self._release_unstarted(message)
                continue
            self.handle(message)

    def _loop_fault(self, exc: Exception) -> None:
        """A failure between jobs (the long poll, a batched ack): back off and poll again. The
        worker never exits for it; persistent faults show in health and the InfraFaults alarm."""
        consecutive = self.faults.fault(exc)
        self.metrics.record_infra_fault()
        wait_s = min(30.0, 2.0 * consecutive)
        logger.warning(
            "worker loop fault; backing off",
            extra={"error": describe(exc), "consecutive_faults": consecutive, "wait_s": wait_s},
        )
        self.stopping.wait(wait_s)

    def _release_unstarted(self, message: ReceivedMessage) -> None:
        try:
            self.queue.change_visibility(message.receipt_handle, 0)
        except QueueError:
            logger.warning("could not release unstarted message", exc_info=True)

    def start_services(self) -> None:
        """Health endpoint and metrics flusher: threads of the supervisor process."""
        self.started_at = time.time()
        logger.info(
            "memory limits",
            extra={
                "container_limit_bytes": self.container.limit_bytes,
                "container_limit_source": self.container.source,
                "job_limit_bytes": self.memory_guard.limit_bytes,
            },
        )
        if self.memory_guard.limit_bytes >= self.container.limit_bytes:
            # The child would meet the container's OOM killer first: F1 all over again.
            logger.warning("job memory limit is not below the container limit")
        self.health = start_health_server(
            self.config.health_host,
            self.config.health_port,
            lambda: worker_snapshot(self, stale_poll_s=self._stale_poll_s),
        )
        self.metrics.start()

    def stop_services(self) -> None:
        if self.health is not None:
            self.health.stop()
            self.health = None
        self.memory_guard.close()
        self.metrics.close()

    # -- one message -------------------------------------------------------------------------

    def handle(self, message: ReceivedMessage, *, extended_at: float | None = None) -> None:
        """One message, whatever it holds: everything that happens here ends as an outcome
        of its job (gpu_worker/faults.py), never as an exit of the worker."""
        job_id = job_id_from_body(message.body)
        logger.append_keys(job_id=job_id, message_id=message.message_id)
        self.handling = Handling(message)
        try:
            self._handle(message, extended_at)
        except Exception as exc:  # noqa: BLE001 - the per-job boundary
            self._contain(self.handling, exc)
        else:
            self.faults.ok()
        finally:
            self.handling = None
            self.jobs_handled += 1
            logger.remove_keys(["job_id", "message_id", "attempt", "analyzer"])

    def _contain(self, handling: Handling, exc: Exception) -> None:
        """Whatever escaped the handling of one message becomes an outcome of that job."""
        if is_infra_fault(exc):
            self._release_for_fault(handling, exc)
            return
        logger.exception("unexpected error while handling the job", extra={"error": describe(exc)})
        error = JobError(ErrorKind.UNKNOWN, f"worker error: {describe(exc)}")
        try:
            if handling.record is None or handling.token is None or handling.job_message is None:
                # Nothing claimed yet: the message itself is what the worker cannot handle.
                self._dead_letter_unknown(handling.message, error.message)
                return
            attempt = Outcome(False, error=error)
            decision = self._decide(attempt, handling.record)
            self.apply(
                decision,
                attempt,
                handling.message,
                handling.record,
                handling.token,
                handling.job_message,
            )
        except Exception as again:  # noqa: BLE001 - settling failed too: release, never die
            self._release_for_fault(handling, again)

    def _release_for_fault(self, handling: Handling, exc: BaseException) -> None:
        """An AWS fault (or one that settling the job met): release the message with backoff,
        give the job back if we hold it, count no attempt. Every step may fail again: the
        lease runs out and the message reappears on its own, so nothing here may raise."""
        consecutive = self.faults.fault(exc)
        decision = decide_infra_fault(
            consecutive,
            backoff_base_s=self.config.backoff_base_s,
            backoff_max_s=self.config.backoff_max_s,
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
        message = handling.message
        if handling.record is not None and handling.token is not None:
            try:
                self.store.give_back(handling.record.job_id, handling.token)
            except Exception:  # our lease runs out instead
                logger.warning("could not give the job back; its lease runs out", exc_info=True)
        if message.receive_count >= self.config.max_receive_count - 1:
            # One more receive and SQS's redrive would dead-letter the job for AWS's fault: a
            # fresh copy (receive count 0) replaces this one. A duplicate is harmless (lease).
            try:
                self.queue.send_body(message.body, delay_s=int(decision.backoff_s))
                self.queue.delete(message.receipt_handle)
                return
            except Exception:  # fall back to releasing this copy
                logger.warning("could not re-send the message fresh", exc_info=True)
        try:
            self.queue.change_visibility(message.receipt_handle, int(decision.backoff_s))
        except Exception:  # it comes back after the window instead
            logger.warning("could not release the message", exc_info=True)

    def _handle(self, message: ReceivedMessage, extended_at: float | None = None) -> None:
        handling = self.handling or Handling(message)
        try:
            job_message = JobMessage.from_json(message.body)
        except InvalidJob as exc:
            self._dead_letter_unknown(message, str(exc))
            return
        handling.job_message = job_message
        token = f"{self.config.worker_id}/{message.message_id}/{uuid.uuid4().hex[:12]}"
        claimed = self._claim_if_queued(job_message, token, message)
        if claimed is not None:
            request, record, ran_before = claimed
            handling.record, handling.token = record, token
            self._start(message, record, request, token, job_message, ran_before, extended_at)
            return
        # Everything else (a takeover, a duplicate, a dead letter to finish, an invalid
        # request, no record) reads the record first and decides from it.
        record = self.store.get(job_message.job_id)
        if record is None:
            self._dead_letter_unknown(message, "no job record for this job_id")
            return
        if record.status == JobStatus.SUCCEEDED:
            logger.info("duplicate delivery of a succeeded job; acknowledged")
            self.queue.delete(message.receipt_handle)
            return
        if record.status == JobStatus.DEAD_LETTERED:
            # A previous holder died between dead-lettering steps: finish them.
            self._finish_dead_letter(message, record)
            return
        if record.lease_live(time.time()):
            self._leave_to_holder(message, record)
            return
        try:
            request = validate_request(job_message.request, self.policy)
        except InvalidJob as exc:
            details = "; ".join(f"{v.path}: {v.message}" for v in exc.violations)
            self._dead_letter(
                message, record, JobError(ErrorKind.INVALID_INPUT, f"{exc}: {details}"), None
            )
            return
        try:
            record = self.store.claim(
                record.job_id,
                token,
                self.config.worker_id,
                expect_owner=record.owner_token,
                lease_s=self.config.visibility_window_s,
                message_id=message.message_id,
            )
            handling.record, handling.token = record, token
        except TransitionRefused as refused:
            current = refused.current
            if current is not None and current.status == JobStatus.SUCCEEDED:
                self.queue.delete(message.receipt_handle)
            logger.info(
                "job taken by another holder; leaving this copy",
                extra={"status": str(current.status) if current else None},
            )
            return
        self._start(message, record, request, token, job_message, True, extended_at)

    def _leave_to_holder(self, message: ReceivedMessage, record: JobRecord) -> None:
        """A copy of a job whose holder's lease is live: never run it. Exactly one message
        must stay able to recover the job if the holder dies: the holder's own."""
        if record.holder_message_id is not None and record.holder_message_id != message.message_id:
            # A duplicate (at-least-once delivery, a re-send): the holder's message recovers
            # the job if the holder dies, so this copy goes.
            logger.info("duplicate delivery under a live lease; deleted")
            self.queue.delete(message.receipt_handle)
            return
        # The holder's own message came back (its visibility extension failed, or clocks
        # differ): keep it, invisible until the lease ends; then it takes the job over.
        assert record.lease_expires_at is not None
        wait_s = max(1, int(record.lease_expires_at - time.time()) + 1)
        logger.info("job's holder still holds its lease; message kept", extra={"wait_s": wait_s})
        self.queue.change_visibility(message.receipt_handle, wait_s)

    def _claim_if_queued(
        self, job_message: JobMessage, token: str, message: ReceivedMessage
    ) -> tuple[dict[str, Any], JobRecord, bool] | None:
        """The common case in one conditional write, no read first: a valid request whose
        job is QUEUED. None sends every other case down the path that reads the record."""
        try:
            request = validate_request(job_message.request, self.policy)
            record, ran_before = self.store.claim_queued(
                job_message.job_id,
                token,
                self.config.worker_id,
                lease_s=self.config.visibility_window_s,
                message_id=message.message_id,
            )
        except (InvalidJob, TransitionRefused):
            return None
        return request, record, ran_before

    def _start(
        self,
        message: ReceivedMessage,
        record: JobRecord,
        request: dict[str, Any],
        token: str,
        job_message: JobMessage,
        ran_before: bool,
        extended_at: float | None,
    ) -> None:
        attempt = record.attempts + 1
        logger.append_keys(attempt=attempt, analyzer=request["analyzer"])
        logger.info("job started", extra={"receive_count": message.receive_count})
        self._run(message, record, request, token, job_message, ran_before, extended_at)

    def _run(
        self,
        message: ReceivedMessage,
        record: JobRecord,
        request: dict[str, Any],
        token: str,
        job_message: JobMessage,
        ran_before: bool = True,
        extended_at: float | None = None,
    ) -> None:
        try:
            job_input = request.get("input")
            if "input_uri" in request:
                job_input = self.results.load_input(
                    request["input_uri"], self.config.max_input_bytes
                )
            # Only a job that started before can have left a checkpoint: skip the GET (a 404).
            restored = self.checkpoints.load(record.job_id) if ran_before else None
        except InputError as exc:
            self._dead_letter(message, record, JobError(ErrorKind.INVALID_INPUT, str(exc)), token)
            return
        job = Job(
            job_id=record.job_id,
            analyzer=request["analyzer"],
            input=job_input,
            params=request.get("params") or {},
            attempt=record.attempts + 1,
            interruptions=record.interruptions,
        )
        heartbeat = Heartbeat(
            self.queue,
            message.receipt_handle,
            self.config.visibility_window_s,
            extended_at,
            store=self.store,
            job_id=record.job_id,
            token=token,
        )
        outcome = self.supervisor.run(
            job,
            restored,
            # Every attempt has a limit: the stack's cap, which a request may only lower.
            max_runtime_s=self.policy.runtime_limit_s(request),
            on_tick=heartbeat.tick,
        )
        peak_bytes = self.memory_guard.peak_bytes
        if outcome.error is not None and outcome.error.peak_memory_bytes is None and peak_bytes:
            # Every failure carries the peak the guard saw (OOM verdicts already do).
            error = dataclasses.replace(outcome.error, peak_memory_bytes=peak_bytes)
            outcome = dataclasses.replace(outcome, error=error)
        decision = self._decide(outcome, record)
        # The child-fell-over chat notice (pipeline/alarms.py) reads this line. An error's text
        # can quote the job's input (an analyzer's "ValueError: could not convert string to
        # float: '<input>'", a traceback's frames): the log gets its first line only, the
        # exception type and the start of its message, at most 300 characters. The job record
        # keeps the fuller message.
        error = outcome.error
        error_line = first_line(error.message) if error else ""
        logger.info(
            "job finished",
            extra={
                "action": str(decision.action),
                "reason": decision.reason,
                "duration_s": round(outcome.duration_s, 3),
                "error_kind": str(error.kind) if error else None,
                "heartbeats": heartbeat.extensions,
                "max_attempts": self.config.max_attempts,
                "backoff_s": decision.backoff_s if decision.action is Action.RETRY else None,
                "peak_memory_bytes": (error.peak_memory_bytes if error else None)
                or peak_bytes
                or None,
                "memory_limit_bytes": (error.limit_bytes if error else None)
                or self.memory_guard.limit_bytes,
                "error_message": error_line or None,
            },
        )
        checkpointed = ran_before or outcome.checkpoints > 0
        self._short_jobs = outcome.duration_s <= self.config.prefetch_max_job_s
        self.apply(decision, outcome, message, record, token, job_message, checkpointed)
        self.metrics.record_job(
            OUTCOME_LABELS[decision.action],
            error_kind=str(outcome.error.kind) if outcome.error else None,
            duration_s=outcome.duration_s,
            peak_memory_pct=100.0 * peak_bytes / self.memory_guard.limit_bytes,
        )

    # -- decisions ---------------------------------------------------------------------------

    def _decide(self, outcome: Outcome, record: JobRecord) -> Decision:
        if outcome.abandoned:
            return decide_abandoned()
        return decide(
            outcome.error,
            permanent=outcome.permanent,
            attempts=record.attempts,
            interruptions=record.interruptions,
            max_attempts=self.config.max_attempts,
            max_interruptions=self.config.max_interruptions,
            backoff_base_s=self.config.backoff_base_s,
            backoff_max_s=self.config.backoff_max_s,
        )

    def apply(
        self,
        decision: Decision,
        outcome: Outcome,
        message: ReceivedMessage,
        record: JobRecord,
        token: str,
        job_message: JobMessage,
        checkpointed: bool = True,
    ) -> None:
        try:
            if decision.action is Action.ABANDON:
                # Another holder owns the job: nothing of ours is recorded, and our message
                # (if it is still the job's) finds the job under the new holder's lease.
                logger.warning("attempt abandoned: ownership lost")
            elif decision.action is Action.ACK:
                self._acknowledge(message, record, token, outcome, checkpointed)
            elif decision.action is Action.RETRY:
                assert outcome.error is not None
                self.store.release(record.job_id, token, outcome.error)
                self.queue.change_visibility(message.receipt_handle, int(decision.backoff_s))
            elif decision.action is Action.REQUEUE:
                assert outcome.error is not None
                # Stopping: nothing of ours may be receiving when the fresh copy goes out.
                self.close_intake()
                self._requeue(message, record, token, outcome.error, job_message)
            else:
                assert outcome.error is not None
                error = outcome.error
                if error.kind == ErrorKind.INTERRUPTED:
                    error = JobError(ErrorKind.INTERRUPTED, decision.reason)
                self._dead_letter(message, record, error, token, ran=True)
        except TransitionRefused as refused:
            # We were presumed dead and someone else owns the job now: drop our outcome.
            logger.warning(
                "outcome refused: ownership lost",
                extra={"status": str(refused.current.status) if refused.current else None},
            )

    def _acknowledge(
        self,
        message: ReceivedMessage,
        record: JobRecord,
        token: str,
        outcome: Outcome,
        checkpointed: bool = True,
    ) -> None:
        assert outcome.output_json is not None
        output_json = outcome.output_json
        prefetch, finisher = self.prefetch, self.finisher
        if prefetch is None or finisher is None or not prefetch.backlog:
            # No backlog: record it now, and acknowledge at once.
            self._record_success(message, record, token, output_json, checkpointed, now=True)
            return

        def finish() -> None:
            try:
                self._record_success(message, record, token, output_json, checkpointed)
            except TransitionRefused:
                logger.warning("outcome refused: ownership lost", extra={"job_id": record.job_id})
            except Exception as exc:  # recorded later by the message's next copy
                handling = Handling(message, None, record, token)
                if is_infra_fault(exc):
                    self._release_for_fault(handling, exc)
                else:
                    raise

        # The next job starts while this one is recorded: the same steps and guards, later.
        finisher.submit(record.job_id, finish)

    def _record_success(
        self,
        message: ReceivedMessage,
        record: JobRecord,
        token: str,
        output_json: str,
        checkpointed: bool,
        *,
        now: bool = False,
    ) -> None:
        this_attempt = attempt_id(token)
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
        for earlier in sorted(record.attempt_ids - {this_attempt}):
            self._discard_output(record.job_id, earlier)
        acker = self.acker
        if acker is not None:
            acker.ack(message.receipt_handle, now=now)  # SUCCEEDED is durable: it may wait
        else:
            self.queue.delete(message.receipt_handle)
        if checkpointed:
            try:
                self.checkpoints.delete(record.job_id)
            except Exception:
                logger.warning("checkpoint cleanup failed", exc_info=True)

    def _discard_output(self, job_id: str, attempt_id: str) -> None:
        try:
            self.results.discard(job_id, attempt_id)
        except Exception:  # an orphan under results/{job_id}, never named by the record
            logger.warning("could not remove an unrecorded attempt's output", exc_info=True)

    def _read_quietly(self, job_id: str) -> JobRecord | None:
        try:
            return self.store.get(job_id)
        except Exception:  # AWS failing still: the caller keeps what it cannot judge
            logger.warning("could not read the job record", exc_info=True)
            return None

    def _requeue(
        self,
        message: ReceivedMessage,
        record: JobRecord,
        token: str,
        error: JobError,
        job_message: JobMessage,
    ) -> None:
        """Interruption: a fresh copy restarts ApproximateReceiveCount, so preemptions never
        push a job toward the queue's maxReceiveCount redrive."""
        if self.interruption is not None:
            error = JobError(error.kind, f"{self.interruption.describe()}: {error.message}")
        updated = self.store.release(record.job_id, token, error, interrupted=True)
        self.queue.send(job_message.with_interruptions(updated.interruptions))
        self.queue.delete(message.receipt_handle)

    def _dead_letter(
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
            for earlier in sorted(record.attempt_ids - {attempt_id(token)}):
                self._discard_output(record.job_id, earlier)  # no attempt's output is a result
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
        self._crash_point("after_record")
        self._finish_dead_letter(message, record)

    def _crash_point(self, step: str) -> None:
        if self._crash_at == step:
            logger.warning("test crash point reached", extra={"crash_point": step})
            os._exit(CRASH_EXIT_CODE)

    def _finish_dead_letter(self, message: ReceivedMessage, record: JobRecord) -> None:
        # Keyed per occurrence (the dead-lettering's finished_at, as the dead-letter function
        # keys its notices): a redriven job that fails again goes to the DLQ again.
        occurrence = record.finished_at or "-"
        sent_for = record.extra.get("dlq_sent_for")
        sent = sent_for == occurrence or (sent_for is None and record.extra.get("dlq_sent") is True)
        if not sent:
            error = record.last_error or JobError(ErrorKind.UNKNOWN, "dead-lettered")
            self.dlq.send_body(
                message.body,
                attributes={
                    MessageAttribute.JOB_ID: record.job_id,
                    MessageAttribute.ERROR_KIND: str(error.kind),
                    MessageAttribute.ERROR_MESSAGE: error.message[:512],
                    MessageAttribute.ATTEMPTS: record.attempts,
                    MessageAttribute.PEAK_MEMORY_BYTES: error.peak_memory_bytes,
                },
            )
            self._crash_point("after_dlq_send")
            self.store.set_fields(record.job_id, {"dlq_sent": True, "dlq_sent_for": occurrence})
            self._crash_point("after_dlq_marked")
        self.queue.delete(message.receipt_handle)
        logger.warning(
            "job dead-lettered",
            extra={"error_kind": str(record.last_error.kind) if record.last_error else None},
        )

    def _dead_letter_unknown(self, message: ReceivedMessage, reason: str) -> None:
        """A message that is not a job we know: to the DLQ as INVALID_INPUT, then delete."""
        job_id = job_id_from_body(message.body)
        self.dlq.send_body(
            message.body,
            attributes={
                MessageAttribute.JOB_ID: job_id,
                MessageAttribute.ERROR_KIND: str(ErrorKind.INVALID_INPUT),
                MessageAttribute.ERROR_MESSAGE: reason,
                MessageAttribute.ATTEMPTS: 0,
            },
        )
        self.queue.delete(message.receipt_handle)
        logger.warning("invalid message dead-lettered", extra={"reason": reason})
