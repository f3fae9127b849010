"""The worker's story: receive -> claim -> supervise -> decide -> settle.

``Worker`` wires the parts and runs the loop. Each part is a module whose name says it:
``intake`` (the long poll, prefetch, acks), ``claim`` (a verdict on the message in hand),
``supervisor`` (the analysis child, watched), ``decisions`` (one table for claims and outcomes),
``settle`` (carrying a decision out, in crash-safe order), ``stop_policy`` (an interruption
becomes a drain or a stop with a grace) and ``faults`` (whose fault it is). Whatever happens
while one message is handled ends as an outcome of its job, never as an exit of the worker.

Length note: about 450 lines, nearly all of them ``Worker`` (see its note). The next split is
the start rule (``_start``, ``_start_prepared``, ``_decline``: stopping, draining, a notice worked
through), which both a received and a prepared message pass; it is kept here for now so that
the merge of the notice work and the preparer changes no behaviour.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from aws_lambda_powertools import Logger

from gpu_worker.analyzers import Job
from gpu_worker.attempt import Attempt, prepare
from gpu_worker.checkpoint import CheckpointStore, FileCheckpointStore, InputError, ResultStore
from gpu_worker.claim import Claimer
from gpu_worker.config import WorkerConfig
from gpu_worker.decisions import Action, ClaimVerdict, Decision, decide, decide_abandoned
from gpu_worker.escalation import Escalator, TierSettings, escalate
from gpu_worker.faults import FaultTracker, describe, is_infra_fault
from gpu_worker.health import HealthServer
from gpu_worker.heartbeat import Heartbeat
from gpu_worker.intake import Intake
from gpu_worker.interruption import Interruption, InterruptionWatch, monitors_for
from gpu_worker.preparer import Prepared
from gpu_worker.queues import worker_queues
from gpu_worker.registry import load_plugins
from gpu_worker.report import job_finished
from gpu_worker.services import WorkerServices
from gpu_worker.settle import CRASH_EXIT_CODE, Settler
from gpu_worker.stop_policy import EXIT_RESERVE_S, ShutdownRequested, StopControl
from gpu_worker.supervisor import AttemptOutcome, Supervisor
from gpu_worker.worker_state import WorkerState, capture
from spotline.catalog import Catalog
from spotline.contract import ErrorKind, InvalidJob, JobMessage, job_id_from_body
from spotline.jobstore import JobError, JobRecord, JobStore
from spotline.log_lines import JOB_STARTED
from spotline.queue import QueueError, ReceivedMessage

logger = Logger(service="spotline-worker")

__all__ = [
    "CRASH_EXIT_CODE",
    "EXIT_RESERVE_S",
    "Heartbeat",
    "ShutdownRequested",
    "Worker",
    "load_plugins",
]

OUTCOME_LABELS = {
    Action.ACK: "SUCCEEDED",
    Action.RETRY: "RETRIED",
    Action.DEAD_LETTER: "DEAD_LETTERED",
    Action.REQUEUE: "REQUEUED",
    Action.RELEASE: "RELEASED",
    Action.ABANDON: "ABANDONED",
    Action.ESCALATE: "ESCALATED",
}


class Worker:
    """The composition root and the loop.

    Length note: about 360 lines, a third of them ``__init__`` wiring the parts (queue, stores,
    supervisor, stop control, watch, services, intake, claimer, settler) in one place, where a
    newcomer reads what the worker is made of. The rules live in the parts; what stays here is
    the order of the story, which reads best unbroken.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        sqs: Any,
        dynamodb: Any,
        s3: Any,
        cloudwatch: Any = None,
        autoscaling: Any = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.config = config
        # The analyzers installed here (gpu_worker/registry.py): jobs are checked against them.
        self.catalog = catalog if catalog is not None else load_plugins(config)
        # Its own queue, then the one it covers (WORKER_COVER_QUEUE_URL): each message is
        # settled, re-sent and dead-lettered on the queue it came from (gpu_worker/queues.py).
        self.queue = worker_queues(sqs, config)
        self.dlq = self.queue.routes[0].dlq
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
        # The stop and drain switches; every interruption source and signal ends there.
        self.stops = StopControl(config, self.supervisor)
        self.stopping, self.draining = self.stops.stopping, self.stops.draining
        self.on_interruption = self.stops.on_interruption
        # Every source the settings ask for; ``autoscaling`` completes the ASG hook's action.
        self.watch = InterruptionWatch(
            monitors_for(config, autoscaling=autoscaling), self.stops.on_interruption
        )
        self.stops.emit = self.watch.emit
        self.jobs_handled = 0
        self._declined: set[str] = set()  # message ids given back under a notice
        # Memory guard, health and metrics: threads that read the worker as one value.
        self.started_at: float | None = None
        self.last_poll_at: float | None = None
        self.services = WorkerServices(config, self.supervisor, self.state, cloudwatch)
        self.memory_guard, self.metrics = self.services.memory_guard, self.services.metrics
        self.services.warn_declared_memory(self.catalog)
        # -- the parts of the story --
        # A job's boundaries, the same rules as enqueue's, against this worker's own analyzers.
        self.policy = dataclasses.replace(config.policy, catalog=self.catalog)
        self.faults = FaultTracker(config.degraded_after_faults)
        self.claimer = Claimer(
            self.store,
            self.policy,
            worker_id=config.worker_id,
            lease_s=config.visibility_window_s,
        )
        self.intake = Intake(
            self.queue,
            config,
            may_receive=self.stops.taking_jobs,
            claimer=self.claimer,
            store=self.store,
            prepare_job=self._prepare_job,
            job_in_hand_is_short=self._job_in_hand_is_short,
        )
        self.settle = Settler(
            queue=self.queue,
            dlq=self.dlq,
            store=self.store,
            results=self.results,
            checkpoints=self.checkpoints,
            intake=self.intake,
            faults=self.faults,
            metrics=self.metrics,
            backoff_base_s=config.backoff_base_s,
            backoff_max_s=config.backoff_max_s,
            max_receive_count=config.max_receive_count,
            escalator=Escalator(sqs, self.store),
        )

    # -- signals and interruptions (gpu_worker/stop_policy.py) ---------------------------------

    @property
    def interruption(self) -> Interruption | None:
        return self.stops.interruption

    def install_signal_handlers(self) -> None:
        self.stops.install_signal_handlers()

    def request_stop(self, reason: str, grace_s: float | None = None) -> None:
        self.stops.request_stop(reason, grace_s)

    # -- the loop ------------------------------------------------------------------------------

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
            self.stops.close()
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
        self.intake.start()

    def close_intake(self) -> None:
        self.intake.close()

    def poll_once(self) -> None:
        prepared = self.intake.take()
        if prepared is not None:
            self._start_prepared(prepared)
            return
        self.stops.receiving = True
        try:
            messages = self.intake.receive()
            self.last_poll_at = time.time()
        except QueueError as exc:
            self._loop_fault(exc)
            return
        finally:
            self.stops.receiving = False
        for message in messages:
            self._start(message)

    def _start(self, message: ReceivedMessage) -> None:
        """Handle a message, or give it back unstarted: stopping or draining, or (under a
        notice worked through) a job that would not end before the cutoff."""
        if not self.stops.taking_jobs():
            self.intake.release_unstarted(message)
            return
        if not self.stops.admits(self._runtime_limit_s(message)):
            self._decline(message)
            return
        self.handle(message)

    def _start_prepared(self, prepared: Prepared) -> None:
        """A job claimed ahead starts now, or goes back uncounted as ``_start`` would give its
        message back (gpu_worker/preparer.py)."""
        message = prepared.attempt.message
        if not self.stops.taking_jobs():
            self.intake.give_back(prepared)
        elif not self.stops.admits(self._runtime_limit_s(message)):
            self.intake.give_back(prepared, release=False)
            self._decline(message)
        else:
            self.handle(message, prepared=prepared)

    def _runtime_limit_s(self, message: ReceivedMessage) -> float:
        """The limit an attempt of this message would run under (0 for a message the claim
        settles without running anything: unreadable, or a request it will refuse)."""
        try:
            return float(self.policy.runtime_limit_s(JobMessage.from_json(message.body).request))
        except (InvalidJob, TypeError, ValueError):
            return 0.0

    def _decline(self, message: ReceivedMessage) -> None:
        """Released at once; a message this worker declined before comes back hidden until
        the deadline, so a lone noticed worker does not receive it over and over."""
        notice = self.stops.notice
        again = message.message_id in self._declined
        self._declined.add(message.message_id)
        hide_s = math.ceil(notice.deadline - time.time()) if again and notice is not None else 0
        logger.info(
            "job does not fit the notice's time left; given back unstarted",
            extra={"job_id": job_id_from_body(message.body), "visible_in_s": hide_s},
        )
        self.intake.decline(message, hide_s=hide_s, max_receive_count=self.config.max_receive_count)

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

    def start_services(self) -> None:
        """Health endpoint and metrics flusher: threads of the supervisor process."""
        self.started_at = time.time()
        self.services.start()

    @property
    def health(self) -> HealthServer | None:
        return self.services.health

    def state(self) -> WorkerState:
        """What the worker is doing now, as one value (health and the alive metric read it)."""
        return capture(
            self.config.worker_id,
            self.supervisor,
            self.memory_guard,
            self.faults,
            draining=not self.stops.taking_jobs(),
            started_at=self.started_at,
            last_poll_at=self.last_poll_at,
            jobs_handled=self.jobs_handled,
        )

    def stop_services(self) -> None:
        self.services.stop()

    # -- one message: claim -> supervise -> decide -> settle ----------------------------------

    def handle(
        self,
        message: ReceivedMessage,
        *,
        extended_at: float | None = None,
        prepared: Prepared | None = None,
    ) -> None:
        """One message, whatever it holds: everything that happens here ends as an outcome
        of its job (gpu_worker/faults.py), never as an exit of the worker. ``prepared``: the
        message was claimed and its job prepared ahead (gpu_worker/preparer.py)."""
        logger.append_keys(job_id=job_id_from_body(message.body), message_id=message.message_id)
        attempt = (
            prepared.attempt if prepared is not None else Attempt(message, extended_at=extended_at)
        )
        try:
            claim = prepared.verdict() if prepared is not None else self.claimer.claim(attempt)
            if claim.verdict is ClaimVerdict.RUN:
                self._attempt(attempt, prepared)
            else:
                self.settle.claimed(claim, attempt)
        except Exception as exc:  # noqa: BLE001 - the per-job boundary
            self._contain(attempt, exc)
        else:
            self.faults.ok()
        finally:
            self.jobs_handled += 1
            logger.remove_keys(["job_id", "message_id", "attempt", "analyzer"])

    def _contain(self, attempt: Attempt, exc: Exception) -> None:
        """Whatever escaped the handling of one message becomes an outcome of that job."""
        if is_infra_fault(exc):
            self.settle.release_for_fault(attempt, exc)
            return
        logger.exception("unexpected error while handling the job", extra={"error": describe(exc)})
        error = JobError(ErrorKind.UNKNOWN, f"worker error: {describe(exc)}")
        try:
            if not attempt.claimed:
                # Nothing claimed yet: the message itself is what the worker cannot handle.
                self.settle.dead_letter_message(attempt.message, error.message)
                return
            assert attempt.record is not None
            decision = self._decide(AttemptOutcome(False, error=error), attempt.record)
            self.settle.apply(decision, attempt, error)
        except Exception as again:  # noqa: BLE001 - settling failed too: release, never die
            self.settle.release_for_fault(attempt, again)

    def _prepare_job(self, attempt: Attempt) -> tuple[Job, Any]:
        """The job as the analyzer sees it (its input loaded) and its restored state."""
        assert attempt.request is not None
        analyzer = attempt.request["analyzer"]
        limit = self.catalog.input_limit(analyzer, self.config.max_input_bytes)
        return prepare(attempt, self.results, self.checkpoints, limit)

    def _job_in_hand_is_short(self) -> bool:
        """No job in the child, or one not yet past WORKER_PREFETCH_MAX_JOB_S."""
        running = self.supervisor.running()
        runtime_s = running.runtime_s if running is not None else None
        return runtime_s is None or runtime_s <= self.config.prefetch_max_job_s

    def _attempt(self, attempt: Attempt, prepared: Prepared | None = None) -> None:
        assert attempt.record is not None and attempt.request is not None
        assert attempt.token is not None
        record, request, message = attempt.record, attempt.request, attempt.message
        logger.append_keys(attempt=record.attempts + 1, analyzer=request["analyzer"])
        logger.info(
            JOB_STARTED,
            extra={"receive_count": message.receive_count, "prepared": prepared is not None},
        )
        try:
            job, restored = prepared.ready() if prepared is not None else self._prepare_job(attempt)
        except InputError as exc:
            error = JobError(ErrorKind.INVALID_INPUT, str(exc))
            self.settle.dead_letter(message, record, error, attempt.token)
            return
        heartbeat = Heartbeat(
            self.queue,
            message.receipt_handle,
            self.config.visibility_window_s,
            attempt.extended_at,
            store=self.store,
            job_id=record.job_id,
            token=attempt.token,
        )
        outcome = self.supervisor.run(
            job,
            restored,
            # Every attempt has a limit: the stack's cap, which a request may only lower.
            max_runtime_s=self.policy.runtime_limit_s(request),
            on_tick=heartbeat.tick,
            # A job claimed ahead counts from now: its start mark, off the critical path.
            on_start=(lambda: self.intake.mark_started(prepared)) if prepared else None,
        )
        peak_bytes = self.memory_guard.peak_bytes
        if outcome.error is not None and outcome.error.peak_memory_bytes is None and peak_bytes:
            # Every failure carries the peak the guard saw (OOM verdicts already do).
            error = dataclasses.replace(outcome.error, peak_memory_bytes=peak_bytes)
            outcome = dataclasses.replace(outcome, error=error)
        verdict = escalate(
            self._decide(outcome, record),
            outcome.error,
            permanent=outcome.permanent,
            interruptions=record.interruptions,
            limit_bytes=self.memory_guard.limit_bytes,
            settings=TierSettings.from_config(self.config),  # where an OOM or preemption goes
        )
        decision, outcome = verdict.decision, dataclasses.replace(outcome, error=verdict.error)
        job_finished(
            decision,
            outcome,
            heartbeats=heartbeat.extensions,
            max_attempts=self.config.max_attempts,
            peak_bytes=peak_bytes,
            limit_bytes=self.memory_guard.limit_bytes,
        )
        self.intake.short_jobs = outcome.duration_s <= self.config.prefetch_max_job_s
        error = outcome.error
        if decision.stops_intake:
            # Stopping: nothing of ours may be receiving when the fresh copy goes out.
            self.close_intake()
            if error is not None and self.interruption is not None:
                error = JobError(error.kind, f"{self.interruption.describe()}: {error.message}")
        self.settle.apply(
            decision,
            attempt,
            error,
            output_json=outcome.output_json,
            checkpointed=attempt.ran_before or outcome.checkpoints > 0,
        )
        self.metrics.record_job(
            OUTCOME_LABELS[decision.action],
            error_kind=str(outcome.error.kind) if outcome.error else None,
            duration_s=outcome.duration_s,
            peak_memory_pct=100.0 * peak_bytes / self.memory_guard.limit_bytes,
        )

    def _decide(self, outcome: AttemptOutcome, record: JobRecord) -> Decision:
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
