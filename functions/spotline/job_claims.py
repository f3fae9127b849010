"""Ownership of a job (DESIGN.md "Ownership"): the claim that moves it into RUNNING under a
token and a lease, the takeover of a holder presumed dead (only once its lease ran out), the
holder renewing its lease, and giving the job back uncounted."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spotline.contract import JobStatus
from spotline.job_record import (
    ATTEMPT_IDS,
    HOLDER_MESSAGE_ID,
    LEASE_EXPIRES_AT,
    PREPARED_AT,
    RUNNING_ON,
    JobRecord,
    JobStoreError,
    TransitionRefused,
    attempt_id,
    record_from_item,
    running_on,
    to_dynamo,
    utc_now,
)
from spotline.job_writes import JobWrites
from spotline.once import is_conditional_failure


def _lease(lease_s: float | None, message_id: str | None) -> dict[str, Any]:
    """The lease fields a claim sets (none without ``lease_s``: an unleased claim)."""
    if lease_s is None:
        return {}
    values: dict[str, Any] = {LEASE_EXPIRES_AT: round(time.time() + lease_s, 3)}
    if message_id:
        values[HOLDER_MESSAGE_ID] = message_id
    return values


def _start(owner: str, prepared: bool, now: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What a claim sets about the start: a claim made ahead (``prepared``) is marked
    ``prepared_at`` and counts nothing yet (its attempt id comes with ``mark_started``); any
    other claim starts the job now. Returns (values to set, attempt ids to add)."""
    if prepared:
        return {PREPARED_AT: now}, None
    return {"started_at": now}, {ATTEMPT_IDS: {attempt_id(owner)}}


class JobClaims(JobWrites):
    """Takes, keeps and gives back a job's ownership, each a conditional write on its token."""

    def claim(
        self,
        job_id: str,
        owner: str,
        worker: str,
        expect_owner: str | None,
        *,
        lease_s: float | None = None,
        message_id: str | None = None,
        prepared: bool = False,
    ) -> JobRecord:
        """Take a QUEUED job, or take over a RUNNING one whose holder is presumed dead.

        ``expect_owner`` is the token read just before: the takeover succeeds only if nobody
        else took the job in between, and only once the holder's lease has run out (a job
        under a live lease is never taken over). ``lease_s`` starts the new holder's lease.
        ``prepared``: claimed ahead of its start (``mark_started`` starts it).
        """
        now = utc_now()
        started, ids = _start(owner, prepared, now)
        values: dict[str, Any] = {"owner_token": owner, "worker": worker, **started}
        values[RUNNING_ON] = running_on(worker)
        values.update(_lease(lease_s, message_id))
        current = self.get(job_id)
        if current is None:
            raise TransitionRefused(job_id, JobStatus.RUNNING, None)
        if current.status == JobStatus.QUEUED:
            names = {"#status": "status"}
            return self._update(
                job_id,
                set_values={"status": str(JobStatus.RUNNING), **values},
                condition="#status = :queued",
                names=names,
                values={":queued": str(JobStatus.QUEUED)},
                target=JobStatus.RUNNING,
                increment=ids,
            )
        if current.status == JobStatus.RUNNING:
            return self._take_over(
                job_id,
                expect_owner if expect_owner is not None else current.owner_token,
                values,
                ids,
            )
        raise TransitionRefused(job_id, JobStatus.RUNNING, current)

    def _take_over(
        self,
        job_id: str,
        old_owner: str | None,
        values: dict[str, Any],
        ids: dict[str, Any] | None,
    ) -> JobRecord:
        """RUNNING -> RUNNING under a new token: one conditional write on the old token and on
        the lease having run out (or never set, by a holder from before leases)."""
        names = {"#status": "status", "#owner": "owner_token", "#lease": LEASE_EXPIRES_AT}
        condition = (
            "#status = :running AND #owner = :owner"
            " AND (attribute_not_exists(#lease) OR #lease < :now)"
        )
        if old_owner is None:
            condition = (
                "#status = :running AND attribute_not_exists(#owner)"
                " AND (attribute_not_exists(#lease) OR #lease < :now)"
            )
        condition_values: dict[str, Any] = {
            ":running": str(JobStatus.RUNNING),
            ":now": round(time.time(), 3),
        }
        if old_owner is not None:
            condition_values[":owner"] = old_owner
        return self._update(
            job_id,
            set_values=values,
            condition=condition,
            names=names,
            values=condition_values,
            target=JobStatus.RUNNING,
            increment=ids,
            # The old holder's claim-ahead mark is not ours (a prepared takeover sets its own).
            remove=() if PREPARED_AT in values else (PREPARED_AT,),
        )

    def renew_lease(self, job_id: str, owner: str, lease_s: float) -> None:
        """The holder extends its lease (with its message's visibility). TransitionRefused:
        the job is no longer ours (taken over after our lease ran out, or finished)."""
        names = {"#status": "status", "#owner": "owner_token"}
        self._update_quietly(
            job_id,
            set_values=_lease(lease_s, None),
            condition="#status = :running AND #owner = :owner",
            names=names,
            values={":running": str(JobStatus.RUNNING), ":owner": owner},
            target=JobStatus.RUNNING,
        )

    def give_back(self, job_id: str, owner: str) -> None:
        """RUNNING -> QUEUED without counting anything: the attempt never ran or was cut short
        by an AWS fault that is not the job's (DESIGN.md: infrastructure faults are never the
        job's attempt)."""
        self.transition_quietly(
            job_id,
            JobStatus.QUEUED,
            expect_owner=owner,
            set_values={},
            remove=("owner_token",),
        )

    def mark_started(self, job_id: str, owner: str) -> None:
        """A job claimed ahead (``prepared``) starts now: its attempt id is added (from here
        on it counts) and ``prepared_at`` goes. TransitionRefused: the job is no longer ours."""
        names = {"#status": "status", "#owner": "owner_token"}
        self._update_quietly(
            job_id,
            set_values={"started_at": utc_now()},
            remove=(PREPARED_AT,),
            increment={ATTEMPT_IDS: {attempt_id(owner)}},
            condition="#status = :running AND #owner = :owner",
            names=names,
            values={":running": str(JobStatus.RUNNING), ":owner": owner},
            target=JobStatus.RUNNING,
        )

    def claim_queued(
        self,
        job_id: str,
        owner: str,
        worker: str,
        *,
        lease_s: float | None = None,
        message_id: str | None = None,
        prepared: bool = False,
    ) -> tuple[JobRecord, bool]:
        """QUEUED -> RUNNING in one conditional write, without a read first (a worker's
        common case). Returns the claimed record and whether the job had started before (so
        it may have left a checkpoint). TransitionRefused for any other status, or none.
        ``prepared``: claimed ahead of its start (``mark_started`` starts it)."""
        now = utc_now()
        started, ids = _start(owner, prepared, now)
        values: dict[str, Any] = {"owner_token": owner, "worker": worker, **started}
        values["updated_at"] = now
        values[RUNNING_ON] = running_on(worker)
        values.update(_lease(lease_s, message_id))
        names = {"#status": "status", **{f"#s{i}": key for i, key in enumerate(values)}}
        expression = "SET #status = :running, " + ", ".join(
            f"#s{i} = :s{i}" for i in range(len(values))
        )
        attribute_values: dict[str, Any] = {
            ":running": {"S": str(JobStatus.RUNNING)},
            ":queued": {"S": str(JobStatus.QUEUED)},
            **{f":s{i}": to_dynamo(value) for i, value in enumerate(values.values())},
        }
        if ids is not None:
            expression += " ADD #ids :ids"
            names["#ids"] = ATTEMPT_IDS
            attribute_values[":ids"] = {"SS": [attempt_id(owner)]}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression=expression,
                ConditionExpression="#status = :queued",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=attribute_values,
                # The old item: what the job was (attempts, started before?) plus what we set.
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if is_conditional_failure(exc):
                raise TransitionRefused(job_id, JobStatus.RUNNING, None) from exc
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        except BotoCoreError as exc:  # the network, not the status machine
            raise JobStoreError(f"update_item failed for job {job_id}: {exc}") from exc
        old = record_from_item(response["Attributes"])
        record = replace(
            old,
            status=JobStatus.RUNNING,
            owner_token=owner,
            worker=worker,
            started_at=old.started_at if prepared else now,
            prepared_at=now if prepared else None,
            updated_at=now,
            lease_expires_at=values.get(LEASE_EXPIRES_AT),
            holder_message_id=values.get(HOLDER_MESSAGE_ID),
            extra=(
                {**old.extra, ATTEMPT_IDS: {*old.attempt_ids, *ids[ATTEMPT_IDS]}}
                if ids
                else old.extra
            ),
        )
        return record, old.started_at is not None
