from __future__ import annotations

import itertools

import pytest

from spotline.contract import TRANSITIONS, ErrorKind, JobStatus
from spotline.jobstore import JobError, JobStore, TransitionRefused

REQUEST = {"analyzer": "echo", "input": {"x": 1.5}}
ERROR = JobError(ErrorKind.OOM, "too big", peak_memory_bytes=123, limit_bytes=100)


def put_in_status(store: JobStore, job_id: str, status: JobStatus) -> None:
    """Drive a new job to ``status`` through allowed transitions only."""
    store.create(job_id, REQUEST)
    if status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
        store.claim(job_id, "owner-1", "w1", expect_owner=None)
    if status == JobStatus.SUCCEEDED:
        store.complete_quietly(job_id, "owner-1", "s3://b/results/x.json")
    if status == JobStatus.DEAD_LETTERED:
        store.dead_letter(job_id, ERROR)


def test_create_is_queued_and_create_twice_returns_the_first(job_store: JobStore) -> None:
    record, created = job_store.create("j1", REQUEST)
    again, created_again = job_store.create("j1", {"analyzer": "echo", "input": 2})
    assert (record.status, created, created_again) == (JobStatus.QUEUED, True, False)
    assert again.request == REQUEST


@pytest.mark.parametrize(
    ("current", "target"), list(itertools.product(list(JobStatus), list(JobStatus)))
)
def test_every_transition_is_allowed_or_refused_by_the_table(
    job_store: JobStore, current: JobStatus, target: JobStatus
) -> None:
    job_id = f"job-{current}-{target}"
    put_in_status(job_store, job_id, current)
    allowed = target in TRANSITIONS[current]
    if allowed:
        record = job_store.transition(job_id, target)
        assert record.status == target
    else:
        with pytest.raises(TransitionRefused):
            job_store.transition(job_id, target)
        assert job_store.get(job_id).status == current


def test_succeeded_can_never_go_back_to_running(job_store: JobStore) -> None:
    put_in_status(job_store, "done", JobStatus.SUCCEEDED)
    with pytest.raises(TransitionRefused):
        job_store.claim("done", "owner-2", "w2", expect_owner="owner-1")
    with pytest.raises(TransitionRefused):
        job_store.transition("done", JobStatus.RUNNING)
    assert job_store.get("done").status == JobStatus.SUCCEEDED


def test_only_the_current_owner_records_the_outcome(job_store: JobStore) -> None:
    job_store.create("j", REQUEST)
    job_store.claim("j", "old", "w1", expect_owner=None)
    job_store.claim("j", "new", "w2", expect_owner="old")  # takeover of a presumed-dead holder
    with pytest.raises(TransitionRefused):
        job_store.complete_quietly("j", "old", "s3://b/r")
    job_store.complete_quietly("j", "new", "s3://b/r")
    record = job_store.get("j")
    assert (record.status, record.worker) == (JobStatus.SUCCEEDED, "w2")


def test_takeover_needs_the_token_that_was_read(job_store: JobStore) -> None:
    job_store.create("j", REQUEST)
    job_store.claim("j", "a", "w1", expect_owner=None)
    with pytest.raises(TransitionRefused):
        job_store.claim("j", "c", "w3", expect_owner="stale")


def test_release_counts_attempts_and_interruptions_apart(job_store: JobStore) -> None:
    job_store.create("j", REQUEST)
    job_store.claim("j", "a", "w1", expect_owner=None)
    record = job_store.release("j", "a", ERROR)
    assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 1, 0)
    assert record.last_error == ERROR
    job_store.claim("j", "b", "w1", expect_owner=None)
    record = job_store.release("j", "b", JobError(ErrorKind.INTERRUPTED, "spot"), interrupted=True)
    assert (record.attempts, record.interruptions) == (1, 1)


def test_dead_letter_twice_is_harmless_and_redrive_requeues(job_store: JobStore) -> None:
    job_store.create("j", REQUEST)
    job_store.dead_letter("j", ERROR)
    assert job_store.dead_letter("j", ERROR).status == JobStatus.DEAD_LETTERED
    record = job_store.redrive("j", reset_attempts=True)
    assert (record.status, record.attempts, record.sent) == (JobStatus.QUEUED, 0, False)


def test_public_view_hides_request_and_token(job_store: JobStore) -> None:
    job_store.create("j", REQUEST)
    public = job_store.claim("j", "secret-token", "w1", expect_owner=None).to_public()
    assert "secret-token" not in str(public) and "request" not in public


def test_a_job_claimed_ahead_shows_not_started_and_counts_no_attempt(job_store: JobStore) -> None:
    job_store.create("ahead", REQUEST)
    record, ran_before = job_store.claim_queued(
        "ahead", "w1/m1/aaaa", "w1", lease_s=60, message_id="m1", prepared=True
    )
    stored = job_store.get("ahead")
    assert stored is not None and stored == record
    assert stored.prepared and stored.started_at is None and not ran_before
    assert stored.attempt_ids == frozenset() and stored.attempts == 0
    assert stored.to_public()["prepared_at"] == stored.prepared_at is not None
    assert stored.to_public()["started_at"] is None


def test_a_job_claimed_ahead_given_back_counts_nothing_and_never_looks_started(
    job_store: JobStore,
) -> None:
    job_store.create("back", REQUEST)
    job_store.claim_queued("back", "w1/m1/aaaa", "w1", lease_s=60, prepared=True)
    job_store.give_back("back", "w1/m1/aaaa")
    record = job_store.get("back")
    assert record is not None
    assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 0)
    assert record.prepared_at is None and record.attempt_ids == frozenset()
    # The next claim knows the job never ran: no checkpoint to look for.
    _, ran_before = job_store.claim_queued("back", "w2/m1/bbbb", "w2", lease_s=60)
    assert not ran_before


def test_mark_started_counts_the_attempt_and_only_for_the_holder(job_store: JobStore) -> None:
    job_store.create("start", REQUEST)
    job_store.claim_queued("start", "w1/m1/aaaa", "w1", lease_s=60, prepared=True)
    with pytest.raises(TransitionRefused):
        job_store.mark_started("start", "w9/m1/zzzz")
    job_store.mark_started("start", "w1/m1/aaaa")
    record = job_store.get("start")
    assert record is not None and not record.prepared and record.started_at is not None
    assert record.attempt_ids == frozenset({"aaaa"})
    job_store.release("start", "w1/m1/aaaa", ERROR)
    _, ran_before = job_store.claim_queued("start", "w2/m2/bbbb", "w2", lease_s=60, prepared=True)
    assert ran_before, "it started once: it may have left a checkpoint"


def test_a_takeover_drops_the_old_holders_claim_ahead_mark(job_store: JobStore) -> None:
    job_store.create("over", REQUEST)
    job_store.claim_queued("over", "w1/m1/aaaa", "w1", lease_s=-1, prepared=True)
    taken = job_store.claim("over", "w2/m1/bbbb", "w2", expect_owner="w1/m1/aaaa", lease_s=-1)
    assert not taken.prepared and taken.started_at is not None
    assert taken.attempt_ids == frozenset({"bbbb"})
    ahead = job_store.claim(
        "over", "w3/m1/cccc", "w3", expect_owner="w2/m1/bbbb", lease_s=-1, prepared=True
    )
    assert ahead.prepared and ahead.attempt_ids == frozenset({"bbbb"})
