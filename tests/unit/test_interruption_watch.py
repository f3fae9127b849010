"""The watch: one stream of one event, each (source, action) delivered once, a broken monitor
never stopping the others, and the after-release steps run once the worker let go."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devstack.imds import SPOT_PATH, ImdsMock
from devstack.motoserver import wait_until
from gpu_worker.interruption import (
    ImdsClient,
    Interruption,
    InterruptionAction,
    InterruptionWatch,
    RebalanceMonitor,
    SpotNoticeMonitor,
    signal_interruption,
)
from tests.unit.interruption_fixtures import RecordingLogger, imds, log

__all__ = ["imds", "log"]  # fixtures


class Scripted:
    def __init__(self, name: str, events: list[Interruption | Exception | None]) -> None:
        self.name = name
        self.interval_s = 0.01
        self.events = events

    def check(self) -> Interruption | None:
        item = self.events.pop(0) if len(self.events) > 1 else self.events[0]
        if isinstance(item, Exception):
            raise item
        return item


def test_watch_delivers_each_event_once_and_survives_a_broken_monitor(
    log: RecordingLogger,
) -> None:
    notice = Interruption("imds-spot", InterruptionAction.TERMINATE, time.time(), time.time() + 120)
    received: list[Interruption] = []
    watch = InterruptionWatch(
        [Scripted("broken", [RuntimeError("boom")]), Scripted("spot", [None, notice])],
        received.append,
    )
    for _ in range(4):
        watch.check_all()
    assert received == [notice]
    assert log.messages("exception") == ["interruption monitor failed"] * 4
    assert watch.emit(signal_interruption("SIGTERM")) is True
    assert watch.emit(signal_interruption("SIGTERM")) is False
    assert [e.source for e in received] == ["imds-spot", "signal"]


def test_watch_thread_polls_until_stopped(imds: ImdsMock) -> None:
    received: list[Interruption] = []
    watch = InterruptionWatch(
        [SpotNoticeMonitor(ImdsClient(imds.url), poll_s=0.05)], received.append
    ).start()
    try:
        imds.schedule_notice()
        wait_until(lambda: received, timeout=5, what="notice through the watch")
    finally:
        watch.stop()
    assert len(received) == 1


def test_one_timed_out_poll_does_not_blind_the_spot_monitor_while_imds_answers(
    imds: ImdsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a flaky e2e test on a loaded machine: one spot poll timed out, the rebalance
    poll right after was answered, and the spot monitor still waited the 60 s absent rhythm."""
    client = ImdsClient(imds.url)
    spot, rebalance = SpotNoticeMonitor(client, poll_s=0.2), RebalanceMonitor(client, poll_s=0.2)
    real_get = client.get
    timeouts = [SPOT_PATH]

    def get(path: str) -> Any:
        if path in timeouts:
            timeouts.remove(path)
            raise TimeoutError("timed out")
        return real_get(path)

    monkeypatch.setattr(client, "get", get)
    received: list[Interruption] = []
    watch = InterruptionWatch([spot, rebalance], received.append)
    due: dict[str, float] = {}
    watch.check_all(due=due)
    assert client.availability.available is True
    assert due[spot.name] - time.monotonic() <= 0.2

    imds.schedule_notice()
    watch.check_all(now=due[spot.name], due=due)
    assert [event.source for event in received] == [spot.name]


def test_after_release_runs_each_delivered_step_once_and_survives_a_failing_one(
    log: RecordingLogger,
) -> None:
    ran: list[str] = []

    def fail() -> None:
        raise RuntimeError("AccessDenied")

    watch = InterruptionWatch([], lambda event: None)
    now = time.time()
    watch.emit(Interruption("one", InterruptionAction.TERMINATE, now, after_release=fail))
    watch.emit(
        Interruption(
            "two", InterruptionAction.TERMINATE, now, after_release=lambda: ran.append("two")
        )
    )
    watch.emit(signal_interruption("SIGTERM"))  # no after-release step
    watch.after_release()
    watch.after_release()
    assert ran == ["two"]
    assert log.messages("exception") == ["interruption after-release step failed"]
