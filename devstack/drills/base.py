"""What a drill is: jobs with expected outcomes, optional faults while they run, checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spotline.contract import JobStatus
from spotline.jobstore import JobRecord

if TYPE_CHECKING:
    from devstack.stack import Devstack


@dataclass
class Expectation:
    job_id: str
    label: str
    status: JobStatus
    # Returns a problem description, or None when the finished job is as it should be.
    check: Callable[[Devstack, JobRecord], str | None] | None = None


@dataclass
class Check:
    label: str
    ok: bool
    detail: str = ""


class Drill:
    """Base drill: override what you need. Methods are called in this order by the demo."""

    name = "drill"

    def worker_env(self) -> dict[str, str]:
        """Settings this drill needs on the demo's workers."""
        return {}

    def setup(self, dev: Devstack) -> None:
        """Start what the drill needs (sinks, routers, extra workers) before jobs are sent."""

    def submit(self, dev: Devstack) -> list[Expectation]:
        return []

    def tick(self, dev: Devstack, elapsed_s: float) -> None:
        """Called about four times a second while jobs run: inject faults here."""

    def done(self, dev: Devstack) -> bool:
        """False while the drill still has work of its own (beyond its jobs) to finish."""
        return True

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        return []

    def teardown(self, dev: Devstack) -> None:
        """Stop what setup started (also called on Ctrl-C)."""
