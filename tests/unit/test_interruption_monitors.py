"""The metadata sources against the IMDS mock: spot notice, rebalance, GCP preemption, and the
one IMDSv2 client they share (tokens, absence, garbage)."""

from __future__ import annotations

import time

import pytest

from devstack.imds import (
    GCP_PREEMPTED_PATH,
    REBALANCE_PATH,
    SPOT_PATH,
    TOKEN_PATH,
    ImdsMock,
    imds_time,
)
from devstack.motoserver import free_port, wait_until
from gpu_worker.interruption import (
    ABSENT_RETRY_S,
    GcpPreemptedMonitor,
    ImdsClient,
    InterruptionAction,
    RebalanceMonitor,
    SpotNoticeMonitor,
    TerminationTagMonitor,
)
from spotline.instance_tags import TERMINATES_AT_TAG
from tests.unit.interruption_fixtures import RecordingLogger, imds, log, raw

__all__ = ["imds", "log"]  # fixtures


# -- the mock keeps IMDSv2's rules ------------------------------------------------------------


def test_mock_requires_a_token_and_refuses_bad_ttls(imds: ImdsMock) -> None:
    assert raw(imds, SPOT_PATH)[0] == 401
    assert raw(imds, TOKEN_PATH, method="PUT")[0] == 400
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "21601"}
    assert raw(imds, TOKEN_PATH, method="PUT", headers=ttl)[0] == 400
    status, token = raw(
        imds, TOKEN_PATH, method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    assert status == 200
    assert raw(imds, SPOT_PATH, headers={"X-aws-ec2-metadata-token": token.decode()})[0] == 404
    assert raw(imds, SPOT_PATH, headers={"X-aws-ec2-metadata-token": "forged"})[0] == 401


def test_mock_token_expires_after_its_ttl(imds: ImdsMock) -> None:
    _, token = raw(
        imds, TOKEN_PATH, method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "1"}
    )
    headers = {"X-aws-ec2-metadata-token": token.decode()}
    assert raw(imds, SPOT_PATH, headers=headers)[0] == 404
    wait_until(lambda: raw(imds, SPOT_PATH, headers=headers)[0] == 401, timeout=3)


def test_mock_gcp_needs_the_metadata_flavor_header(imds: ImdsMock) -> None:
    assert raw(imds, GCP_PREEMPTED_PATH)[0] == 403
    assert raw(imds, GCP_PREEMPTED_PATH, headers={"Metadata-Flavor": "Google"}) == (200, b"FALSE")


# -- IMDS monitors ------------------------------------------------------------------------------


def test_spot_notice_becomes_one_interruption_with_its_deadline(
    imds: ImdsMock, log: RecordingLogger
) -> None:
    monitor = SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2)
    assert monitor.check() is None
    visible_at = imds.schedule_notice("stop", deadline_s=120)
    event = monitor.check()
    assert event is not None
    assert event.source == "imds-spot" and event.action is InterruptionAction.STOP
    assert not event.advisory
    # IMDS times have whole seconds.
    assert event.deadline == pytest.approx(visible_at + 120, abs=1.0)
    assert monitor.client.tokens_fetched == 1, "one token serves every poll"


def test_rebalance_recommendation_is_advisory(imds: ImdsMock) -> None:
    monitor = RebalanceMonitor(ImdsClient(imds.url), poll_s=2)
    assert monitor.check() is None
    imds.recommend_rebalance()
    event = monitor.check()
    assert event is not None and event.action is InterruptionAction.REBALANCE and event.advisory
    assert event.deadline is None


def test_token_is_refreshed_before_it_expires(imds: ImdsMock) -> None:
    now = [1000.0]
    client = ImdsClient(imds.url, token_ttl_s=100, clock=lambda: now[0])
    monitor = SpotNoticeMonitor(client, poll_s=2)
    monitor.check()
    now[0] += 50
    monitor.check()
    assert client.tokens_fetched == 1
    now[0] += 35  # 85 of 100 s used: inside the refresh margin, before the expiry
    monitor.check()
    assert client.tokens_fetched == 2
    assert not any(key.endswith(" 401") for key in imds.stats()["counts"])


def test_an_expired_token_is_replaced_and_the_notice_still_seen(
    imds: ImdsMock, log: RecordingLogger
) -> None:
    client = ImdsClient(imds.url)
    monitor = SpotNoticeMonitor(client, poll_s=2)
    assert monitor.check() is None
    imds.expire_tokens()
    imds.schedule_notice()
    event = monitor.check()
    assert event is not None and event.action is InterruptionAction.TERMINATE
    counts = imds.stats()["counts"]
    assert counts[f"GET {SPOT_PATH} 401"] == 1
    assert client.tokens_fetched == 2
    assert log.messages("warning") == []


def test_absent_imds_is_reported_once_and_polled_rarely(log: RecordingLogger) -> None:
    client = ImdsClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    monitors = [SpotNoticeMonitor(client, poll_s=2), RebalanceMonitor(client, poll_s=2)]
    for _ in range(3):
        for monitor in monitors:
            assert monitor.check() is None
    assert len(log.records) == 1
    level, message, extra = log.records[0]
    assert level == "info" and "not found" in message and extra["monitor"] == "imds"
    assert all(m.interval_s == ABSENT_RETRY_S for m in monitors)


def test_imds_coming_back_is_noticed(imds: ImdsMock, log: RecordingLogger) -> None:
    port = int(imds.url.rsplit(":", 1)[1])
    client = ImdsClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    monitor = SpotNoticeMonitor(client, poll_s=2)
    assert monitor.check() is None
    client.endpoint = f"http://127.0.0.1:{port}"
    imds.schedule_notice()
    assert monitor.check() is not None
    assert monitor.interval_s == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"{not json"),
        (200, b"[1, 2, 3]"),
        (200, b'{"action": "explode", "time": "2026-01-01T00:00:00Z"}'),
        (200, b'{"time": "2026-01-01T00:00:00Z"}'),
        (500, b"internal error"),
        (200, b"\xff\xfe\x00binary"),
    ],
)
def test_garbage_answers_are_logged_once_and_ignored(
    imds: ImdsMock, log: RecordingLogger, status: int, body: bytes
) -> None:
    imds.serve_garbage(SPOT_PATH, status=status, body=body)
    monitor = SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2)
    for _ in range(3):
        assert monitor.check() is None
    assert log.messages("warning") == ["ignoring unexpected metadata answer"]
    assert monitor.interval_s == 2, "garbage is not absence"


def test_garbage_rebalance_and_token_answers_are_ignored(
    imds: ImdsMock, log: RecordingLogger
) -> None:
    imds.serve_garbage(REBALANCE_PATH, body=b'{"noticeTime": "yesterday"}')
    assert RebalanceMonitor(ImdsClient(imds.url), poll_s=2).check() is None
    imds.serve_garbage(TOKEN_PATH, status=500, body=b"oops")
    assert SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2).check() is None
    assert len(log.messages("warning")) == 2


def test_spot_notice_with_an_odd_time_still_counts_with_two_minutes(imds: ImdsMock) -> None:
    imds.serve_garbage(SPOT_PATH, body=b'{"action": "terminate", "time": "soon"}')
    event = SpotNoticeMonitor(ImdsClient(imds.url), poll_s=2).check()
    assert event is not None
    assert event.seconds_left() == pytest.approx(120, abs=2)


def test_gcp_preempted_flag(imds: ImdsMock) -> None:
    monitor = GcpPreemptedMonitor(imds.url, poll_s=1)
    assert monitor.check() is None
    imds.preempt_gcp()
    event = monitor.check()
    assert event is not None and event.action is InterruptionAction.TERMINATE
    assert event.seconds_left() == pytest.approx(30, abs=1)


# -- the spot-events function's tag: warnings EC2 sends only to EventBridge -----------------------


def test_termination_tag_becomes_a_notice_with_its_deadline(imds: ImdsMock) -> None:
    # An interruptible Capacity Reservation's warning reaches only EventBridge; the spot-events
    # function writes its termination time as a tag, which IMDS serves (InstanceMetadataTags).
    monitor = TerminationTagMonitor(ImdsClient(imds.url), poll_s=2)
    assert monitor.check() is None
    deadline = time.time() + 120
    imds.set_tag(TERMINATES_AT_TAG, imds_time(deadline))
    event = monitor.check()
    assert event is not None
    assert event.source == "imds-termination-tag"
    assert event.action is InterruptionAction.TERMINATE and not event.advisory
    assert event.deadline == pytest.approx(deadline, abs=1.0)


def test_termination_tag_from_an_earlier_life_is_not_a_notice(imds: ImdsMock) -> None:
    # A stopped-and-started instance keeps its tags: a time long past is history.
    monitor = TerminationTagMonitor(ImdsClient(imds.url), poll_s=2)
    imds.set_tag(TERMINATES_AT_TAG, imds_time(time.time() - 3600))
    assert monitor.check() is None


def test_garbage_termination_tag_is_logged_once_and_ignored(
    imds: ImdsMock, log: RecordingLogger
) -> None:
    monitor = TerminationTagMonitor(ImdsClient(imds.url), poll_s=2)
    imds.set_tag(TERMINATES_AT_TAG, "soon")
    assert monitor.check() is None
    assert monitor.check() is None
    assert log.messages("warning") == ["ignoring unexpected metadata answer"]
