"""Escalation (gpu_worker/escalation.py): an OOM moves a job to the larger tier, a job preempted
too often to the on-demand lane; a misconfigured tier never loses the job."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from devstack.lambdas import LambdaContext, load_event
from gpu_worker.consumer import Worker
from gpu_worker.decisions import Action, Decision, decide
from gpu_worker.escalation import TierSettings, escalate
from gpu_worker.supervisor import AttemptOutcome
from spotline.contract import ErrorKind, JobMessage, JobStatus, new_job_id
from spotline.jobstore import JobError, JobStore
from spotline.queue import JobQueue
from spotline.tiers import LARGEST_TIER_NEED, ON_DEMAND_TIER, largest_tier_reason
from tests.unit.conftest import stack_workers

GIB = 1024**3
DEFAULT = TierSettings(
    tier="default",
    queue_url="https://q/default",
    larger_tier="large",
    larger_queue_url="https://q/large",
    on_demand_queue_url="https://q/lane",
    preemptions_before_on_demand=2,
)
LARGEST = TierSettings(tier="large", queue_url="https://q/large")
OOM = JobError(ErrorKind.OOM, "child over its memory limit", 11 * GIB, 11 * GIB)
INTERRUPTED = JobError(ErrorKind.INTERRUPTED, "spot notice")


def table(error: JobError, *, attempts: int = 0, interruptions: int = 0) -> Decision:
    return decide(
        error,
        permanent=False,
        attempts=attempts,
        interruptions=interruptions,
        max_attempts=3,
        max_interruptions=10,
        backoff_base_s=10,
        backoff_max_s=900,
    )


def run(
    decision: Decision,
    error: JobError,
    settings: TierSettings,
    *,
    interruptions: int = 0,
    permanent: bool = False,
) -> Any:
    return escalate(
        decision,
        error,
        permanent=permanent,
        interruptions=interruptions,
        limit_bytes=error.limit_bytes,
        settings=settings,
    )


# -- the decision ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [0, 2])  # a retry, and the attempt the cap dead-letters
def test_an_oom_with_a_larger_tier_goes_there_instead_of_again_here(attempts: int) -> None:
    verdict = run(table(OOM, attempts=attempts), OOM, DEFAULT)
    assert verdict.decision.action is Action.ESCALATE
    assert verdict.decision.queue_url == "https://q/large" and verdict.decision.tier == "large"
    assert "peak 11.0 GiB of 11.0" in verdict.decision.reason
    assert verdict.decision.fallback == table(OOM, attempts=attempts)
    assert verdict.error.tier == "default" and verdict.fallback_reason == ""


def test_at_the_largest_tier_the_usual_retries_apply() -> None:
    verdict = run(table(OOM), OOM, LARGEST)
    assert verdict.decision == table(OOM)
    assert verdict.error.message == OOM.message and verdict.error.tier == "large"


def test_the_largest_tiers_dead_letter_says_it_needs_more_memory() -> None:
    verdict = run(table(OOM, attempts=2), OOM, LARGEST)
    assert verdict.decision.action is Action.DEAD_LETTER
    assert verdict.error.message.startswith(
        "needs more memory than the largest tier (peak 11.0 GiB of 11.0)"
    )
    assert largest_tier_reason(verdict.error) == verdict.error.message


def test_a_one_pool_stack_escalates_nothing_and_says_nothing_of_tiers() -> None:
    verdict = run(table(OOM, attempts=2), OOM, TierSettings())
    assert verdict.decision == table(OOM, attempts=2) and verdict.error == OOM
    assert largest_tier_reason(verdict.error) is None


def test_a_permanent_oom_is_not_escalated() -> None:
    decision = Decision(Action.DEAD_LETTER, "OOM is permanent")
    assert run(decision, OOM, DEFAULT, permanent=True).decision == decision


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (
            TierSettings(tier="default", queue_url="https://q/d", larger_tier="large"),
            "no queue URL",
        ),
        (
            TierSettings(
                tier="default",
                queue_url="https://q/d",
                larger_tier="large",
                larger_queue_url="https://q/d",
            ),
            "this tier's own queue",
        ),
    ],
    ids=["no-url", "self"],
)
def test_a_misconfigured_tier_falls_back_to_the_ordinary_retry_with_a_reason(
    settings: TierSettings, reason: str
) -> None:
    verdict = run(table(OOM), OOM, settings)
    assert verdict.decision == table(OOM)  # the ordinary retry, as if there were no tiers
    assert reason in verdict.fallback_reason and "WORKER_ESCALATION_QUEUE_URL" in (
        verdict.fallback_reason
    )


def test_the_preemption_budget_sends_the_job_to_the_lane() -> None:
    first = run(table(INTERRUPTED), INTERRUPTED, DEFAULT, interruptions=0)
    assert first.decision.action is Action.REQUEUE  # one preemption: spot again
    second = run(table(INTERRUPTED, interruptions=1), INTERRUPTED, DEFAULT, interruptions=1)
    assert second.decision.action is Action.ESCALATE
    assert second.decision.tier == ON_DEMAND_TIER
    assert second.decision.queue_url == "https://q/lane"
    assert "preempted 2 times (budget 2)" in second.decision.reason


def test_the_interruption_cap_still_dead_letters() -> None:
    capped = decide(
        INTERRUPTED,
        permanent=False,
        attempts=0,
        interruptions=3,
        max_attempts=3,
        max_interruptions=3,
        backoff_base_s=10,
        backoff_max_s=900,
    )
    assert run(capped, INTERRUPTED, DEFAULT, interruptions=3).decision == capped


@pytest.mark.parametrize(
    "settings",
    [
        TierSettings(
            tier=ON_DEMAND_TIER, queue_url="https://q/lane", on_demand_queue_url="https://q/lane"
        ),
        TierSettings(
            tier="large", queue_url="https://q/large", on_demand_queue_url="https://q/lane"
        ),
        TierSettings(tier="default", queue_url="https://q/default"),
    ],
    ids=["on-the-lane", "large-tier", "no-lane"],
)
def test_a_preempted_job_stays_on_its_lane_or_tier(settings: TierSettings) -> None:
    decision = table(INTERRUPTED, interruptions=5)
    verdict = run(decision, INTERRUPTED, settings, interruptions=5)
    assert verdict.decision == decision and verdict.fallback_reason == ""


def test_a_lane_that_is_this_tiers_own_queue_falls_back_with_a_reason() -> None:
    settings = TierSettings(
        tier="default", queue_url="https://q/default", on_demand_queue_url="https://q/default"
    )
    decision = table(INTERRUPTED, interruptions=1)
    verdict = run(decision, INTERRUPTED, settings, interruptions=1)
    assert verdict.decision == decision
    assert "WORKER_ON_DEMAND_QUEUE_URL" in verdict.fallback_reason


# -- the worker carries it out ----------------------------------------------------------------


@pytest.fixture
def tier_queues(stack: Any) -> dict[str, JobQueue]:
    sqs = boto3.client("sqs")
    return {
        name: JobQueue(sqs, sqs.create_queue(QueueName=f"unit-{name}")["QueueUrl"])
        for name in ("large", "lane")
    }


@pytest.fixture
def tiered_worker(stack: Any, tier_queues: dict[str, JobQueue]) -> Iterator[Callable[..., Worker]]:
    with stack_workers(
        stack,
        worker_id="unit-tiers",
        wait_s=0,
        visibility_window_s=30,
        metrics_sink="off",
        tier="default",
        escalation_tier="large",
        escalation_queue_url=tier_queues["large"].url,
        on_demand_queue_url=tier_queues["lane"].url,
    ) as make:
        yield make


def ending(worker: Worker, error: JobError) -> None:
    """The analysis child ends the attempt with ``error`` (the memory guard's OOM verdict, a
    spot notice's interruption): the supervisor is the seam to the child process."""

    def attempt(*args: Any, **kwargs: Any) -> AttemptOutcome:
        return AttemptOutcome(False, error=error, duration_s=0.1)

    worker.supervisor.run = attempt  # type: ignore[method-assign]


def queue_job(job_store: JobStore, queue: JobQueue, interruptions: int = 0) -> str:
    job_id = new_job_id()
    request = {"analyzer": "echo", "input": {"x": 1}}
    job_store.create(job_id, request)
    if interruptions:
        job_store.set_fields(job_id, {"interruptions": interruptions})
    queue.send(JobMessage(job_id, request, interruptions))
    return job_id


def received(queue: JobQueue) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in queue.receive(max_messages=10, wait_s=0)]


def test_the_worker_sends_an_oom_job_to_the_larger_tier_and_records_the_move(
    tiered_worker: Callable[..., Worker],
    job_store: JobStore,
    queue: JobQueue,
    tier_queues: dict[str, JobQueue],
    enqueue: Any,
) -> None:
    worker = tiered_worker()
    job_id = queue_job(job_store, queue)
    ending(worker, OOM)

    worker.poll_once()

    (moved,) = received(tier_queues["large"])
    assert moved["job_id"] == job_id
    assert queue.approximate_counts() == (0, 0), "the default tier's copy is gone"
    record = job_store.get(job_id)
    assert record.status == JobStatus.QUEUED and record.attempts == 1
    assert record.last_error.kind == ErrorKind.OOM and record.last_error.tier == "default"
    (move,) = record.extra["tier_history"]
    assert move["from"] == "default" and move["to"] == "large" and move["attempt"] == 1
    assert move["peak_memory_bytes"] == 11 * GIB and move["error_kind"] == "OOM"
    # GET /jobs/{id} shows where the job went and why.
    get = copy.deepcopy(load_event("enqueue_get_job"))
    get["pathParameters"] = {"job_id": job_id}
    get["rawPath"] = get["requestContext"]["http"]["path"] = f"/jobs/{job_id}"
    body = json.loads(enqueue.handler(get, LambdaContext())["body"])
    assert body["tier"] == "large" and body["tier_history"][0]["to"] == "large"
    assert body["last_error"]["tier"] == "default"


def test_a_job_preempted_twice_moves_to_the_lane_with_its_count(
    tiered_worker: Callable[..., Worker],
    job_store: JobStore,
    queue: JobQueue,
    tier_queues: dict[str, JobQueue],
) -> None:
    worker = tiered_worker()
    job_id = queue_job(job_store, queue, interruptions=1)
    ending(worker, INTERRUPTED)

    worker.poll_once()

    (moved,) = received(tier_queues["lane"])
    assert moved["job_id"] == job_id and moved["interruptions"] == 2
    assert queue.approximate_counts() == (0, 0)
    record = job_store.get(job_id)
    assert record.status == JobStatus.QUEUED
    assert record.interruptions == 2 and record.attempts == 0  # preemptions are no attempts
    assert record.extra["tier"] == ON_DEMAND_TIER


def test_a_tier_missing_its_queue_url_retries_here_and_logs_why(
    tiered_worker: Callable[..., Worker],
    job_store: JobStore,
    queue: JobQueue,
    tier_queues: dict[str, JobQueue],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = tiered_worker(escalation_queue_url="")
    job_id = queue_job(job_store, queue)
    ending(worker, OOM)

    worker.poll_once()

    record = job_store.get(job_id)
    assert record.status == JobStatus.QUEUED and record.attempts == 1
    assert "tier_history" not in record.extra
    assert queue.approximate_counts() == (0, 1), "released with backoff on this tier"
    assert received(tier_queues["large"]) == []
    (skipped,) = [r for r in caplog.records if r.getMessage() == "escalation skipped"]
    assert "WORKER_ESCALATION_QUEUE_URL is empty" in skipped.reason


def test_a_tier_pointing_at_itself_retries_here_and_logs_why(
    tiered_worker: Callable[..., Worker],
    job_store: JobStore,
    queue: JobQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = tiered_worker(escalation_queue_url=queue.url)
    job_id = queue_job(job_store, queue)
    ending(worker, OOM)

    worker.poll_once()

    record = job_store.get(job_id)
    assert record.status == JobStatus.QUEUED and record.attempts == 1
    assert queue.approximate_counts() == (0, 1)
    assert any("this tier's own queue" in str(getattr(r, "reason", "")) for r in caplog.records)


def test_an_escalation_that_cannot_be_sent_is_the_ordinary_retry(
    tiered_worker: Callable[..., Worker],
    job_store: JobStore,
    queue: JobQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = "https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue"
    worker = tiered_worker(escalation_queue_url=gone)
    job_id = queue_job(job_store, queue)
    ending(worker, OOM)

    worker.poll_once()

    record = job_store.get(job_id)
    assert record.status == JobStatus.QUEUED and record.attempts == 1
    assert "tier_history" not in record.extra
    assert queue.approximate_counts() == (0, 1), "not lost: released on this tier"
    assert "escalation not sent: the ordinary path instead" in caplog.messages


def test_the_largest_tier_dead_letters_saying_it_needs_more_memory(
    tiered_worker: Callable[..., Worker], job_store: JobStore, queue: JobQueue, stack: Any
) -> None:
    worker = tiered_worker(tier="large", escalation_tier="", escalation_queue_url="")
    job_id = queue_job(job_store, queue)
    job_store.set_fields(job_id, {"attempts": 2})
    ending(worker, OOM)

    worker.poll_once()

    record = job_store.get(job_id)
    assert record.status == JobStatus.DEAD_LETTERED
    assert record.last_error.message.startswith(LARGEST_TIER_NEED + " (peak 11.0 GiB of 11.0)")
    dlq = JobQueue(boto3.client("sqs"), stack.ref("JobsDeadLetterQueue"))
    (letter,) = dlq.receive(max_messages=1, wait_s=0)
    attribute = letter.message_attributes["error_message"]["StringValue"]
    assert attribute.startswith(LARGEST_TIER_NEED)


# -- the settings ---------------------------------------------------------------------------


def test_the_tier_settings_come_from_the_environment(
    worker_settings: pytest.MonkeyPatch,
) -> None:
    from gpu_worker.config import WorkerConfig

    for name, value in {
        "WORKER_TIER": "default",
        "WORKER_ESCALATION_TIER": "large",
        "WORKER_ESCALATION_QUEUE_URL": "https://q/large",
        "WORKER_ON_DEMAND_QUEUE_URL": "https://q/lane",
        "WORKER_PREEMPTIONS_BEFORE_ON_DEMAND": "3",
    }.items():
        worker_settings.setenv(name, value)
    settings = TierSettings.from_config(WorkerConfig.from_env())
    assert settings == TierSettings("default", "q", "large", "https://q/large", "https://q/lane", 3)


def test_a_one_pool_worker_has_no_tier(worker_settings: pytest.MonkeyPatch) -> None:
    from gpu_worker.config import WorkerConfig

    assert TierSettings.from_config(WorkerConfig.from_env()) == TierSettings(queue_url="q")


def test_a_preemption_budget_below_one_stops_the_worker_with_its_name(
    worker_settings: pytest.MonkeyPatch,
) -> None:
    from gpu_worker.config import WorkerConfig
    from spotline.settings import MissingSetting

    worker_settings.setenv("WORKER_PREEMPTIONS_BEFORE_ON_DEMAND", "0")
    with pytest.raises(MissingSetting, match="WORKER_PREEMPTIONS_BEFORE_ON_DEMAND"):
        WorkerConfig.from_env()
