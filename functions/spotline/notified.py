"""What the dead-letter function delivered for a job's dead-lettering, kept in the job record's
``notified`` field: written by the dead_letter function, read by the operator CLI (``dlq list``),
devstack's drills and the tests. One shape, one place."""

from __future__ import annotations

from typing import Any

from spotline.jobstore import JobRecord

NOTIFIED = "notified"
CALLBACK = "callback"  # the user notice's entry in the delivery map, beside the alert channels


def notified_field(record: JobRecord, results: dict[str, str]) -> dict[str, Any]:
    """The field to store: each channel's (and the user notice's) result for this
    dead-lettering, which the job's ``finished_at`` names."""
    return {NOTIFIED: {"dead_lettered_at": record.finished_at, "results": dict(results)}}


def delivered_for(record: JobRecord) -> dict[str, str]:
    """Results already recorded for this dead-lettering (an earlier one, before a redrive,
    does not count: the job's ``finished_at`` names the dead-lettering)."""
    notified = record.extra.get(NOTIFIED)
    if not isinstance(notified, dict) or notified.get("dead_lettered_at") != record.finished_at:
        return {}
    results = notified.get("results")
    return {str(k): str(v) for k, v in results.items()} if isinstance(results, dict) else {}
