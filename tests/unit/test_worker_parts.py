"""The worker's parts through their public faces: the claim's verdicts, the stop policy."""

from __future__ import annotations

import time

import pytest

from gpu_worker.attempt import Attempt
from gpu_worker.claim import Claimer
from gpu_worker.decisions import CLAIM_TABLE, Action, ClaimVerdict
from gpu_worker.interruption import Interruption, InterruptionAction
from gpu_worker.stop_policy import EXIT_RESERVE_S, react
from spotline.contract import ErrorKind, JobMessage, RequestPolicy, new_job_id
from spotline.jobstore import JobError, JobStore
from spotline.queue import JobQueue

ECHO = {"analyzer": "echo", "input": 1}


@pytest.fixture
def claimer(job_store: JobStore) -> Claimer:
    return Claimer(job_store, RequestPolicy(bucket="b"), worker_id="w", lease_s=60)


def received(queue: JobQueue, body: str) -> Attempt:
    queue.send_body(body)
    (message,) = queue.receive(wait_s=0, visibility_s=30)
    return Attempt(message)


def stored(job_store: JobStore, request: dict[str, object] = ECHO) -> str:
    job_id = new_job_id()
    job_store.create(job_id, request)
    return job_id


def test_every_verdict_but_run_has_its_row_in_the_table() -> None:
    assert set(CLAIM_TABLE) == set(ClaimVerdict) - {ClaimVerdict.RUN}


def test_a_queued_job_is_claimed_with_a_lease_in_one_write(
    claimer: Claimer, job_store: JobStore, queue: JobQueue
) -> None:
    job_id = stored(job_store)
    attempt = received(queue, JobMessage(job_id, ECHO).to_json())
    assert claimer.claim(attempt).verdict is ClaimVerdict.RUN
    assert attempt.claimed and not attempt.ran_before
    record = job_store.get(job_id)
    assert record.owner_token == attempt.token and record.lease_live(time.time())
    assert record.holder_message_id == attempt.message.message_id


@pytest.mark.parametrize(
    ("arrange", "verdict"),
    [
        ("not json", ClaimVerdict.UNREADABLE),
        ("no record", ClaimVerdict.UNREADABLE),
        ("succeeded", ClaimVerdict.SUCCEEDED),
        ("dead-lettered", ClaimVerdict.DEAD_LETTERED),
        ("drill refused", ClaimVerdict.INVALID),
        ("under another's lease", ClaimVerdict.DUPLICATE),
    ],
)
def test_what_the_claim_says_of_each_kind_of_message(
    claimer: Claimer, job_store: JobStore, queue: JobQueue, arrange: str, verdict: ClaimVerdict
) -> None:
    request: dict[str, object] = (
        {"analyzer": "crash", "input": None} if "drill" in arrange else ECHO
    )
    job_id = new_job_id() if arrange == "no record" else stored(job_store, request)
    if arrange == "succeeded":
        job_store.claim_queued(job_id, "o/m/a", "o")
        job_store.complete_quietly(job_id, "o/m/a", "s3://b/results/x")
    elif arrange == "dead-lettered":
        job_store.dead_letter(job_id, JobError(ErrorKind.ANALYZER_ERROR, "boom"))
    elif arrange == "under another's lease":
        job_store.claim_queued(job_id, "o/m/a", "o", lease_s=60, message_id="other-message")
    body = "{not json" if arrange == "not json" else JobMessage(job_id, request).to_json()
    attempt = received(queue, body)

    claim = claimer.claim(attempt)

    assert claim.verdict is verdict, claim.reason
    assert not attempt.claimed
    assert CLAIM_TABLE[verdict] in Action


def test_a_lease_that_ran_out_is_taken_over_and_resumes(
    claimer: Claimer, job_store: JobStore, queue: JobQueue
) -> None:
    job_id = stored(job_store)
    job_store.claim_queued(job_id, "dead/m/a", "dead", lease_s=60, message_id="m")
    job_store.set_fields(job_id, {"lease_expires_at": time.time() - 1})
    attempt = received(queue, JobMessage(job_id, ECHO).to_json())
    assert claimer.claim(attempt).verdict is ClaimVerdict.RUN
    assert attempt.ran_before and job_store.get(job_id).owner_token == attempt.token


def notice(seconds_left: float | None, action: InterruptionAction) -> Interruption:
    deadline = None if seconds_left is None else time.time() + seconds_left
    return Interruption(source="test", action=action, noticed_at=time.time(), deadline=deadline)


def test_a_rebalance_drains_and_a_notice_stops_inside_its_deadline() -> None:
    rebalance = react(
        notice(None, InterruptionAction.REBALANCE), rebalance_action="drain", checkpoint_grace_s=20
    )
    assert rebalance.drain
    stop = react(
        notice(12, InterruptionAction.TERMINATE), rebalance_action="drain", checkpoint_grace_s=20
    )
    assert not stop.drain and stop.grace_s <= 12 - EXIT_RESERVE_S + 0.1
    signal = react(
        notice(None, InterruptionAction.TERMINATE), rebalance_action="drain", checkpoint_grace_s=20
    )
    assert signal.grace_s == 20
    kept = react(
        notice(None, InterruptionAction.REBALANCE), rebalance_action="keep", checkpoint_grace_s=20
    )
    assert kept.keep and not kept.drain and kept.notice is None
