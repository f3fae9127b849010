"""The one factory: which sources a worker's settings turn on, and the one IMDS endpoint
setting that every IMDS source (the ASG hook included) honours."""

from __future__ import annotations

import dataclasses

import boto3
import pytest

from gpu_worker.config import WorkerConfig
from gpu_worker.interruption import ImdsClient, LifecycleMonitor, monitors_for
from tests.unit.interruption_fixtures import RecordingLogger, log

__all__ = ["log"]  # fixtures

REQUIRED = ("WORKER_QUEUE_URL", "WORKER_DLQ_URL", "WORKER_TABLE_NAME", "WORKER_BUCKET")


def settings(**values: object) -> WorkerConfig:
    return WorkerConfig(
        queue_url="q", dlq_url="d", table_name="t", bucket="b", worker_id="unit", **values
    )


def test_monitors_from_settings_turn_sources_on_and_off() -> None:
    assert (
        monitors_for(
            settings(imds_endpoint="", imds_poll_s=2, imds_token_ttl_s=60, gcp_metadata_endpoint="")
        )
        == []
    )
    names = [
        m.name
        for m in monitors_for(
            settings(
                imds_endpoint="http://x",
                imds_poll_s=2,
                imds_token_ttl_s=60,
                gcp_metadata_endpoint="http://y",
            )
        )
    ]
    assert names == ["imds-spot", "imds-rebalance", "imds-termination-tag", "gcp-preempted"]


def test_the_hook_is_one_more_imds_source_on_the_same_client() -> None:
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    monitors = monitors_for(
        settings(imds_endpoint="http://x", lifecycle_hook="drain", asg_name="workers"),
        autoscaling=autoscaling,
    )
    assert [m.name for m in monitors] == [
        "imds-spot",
        "imds-rebalance",
        "imds-termination-tag",
        "asg-lifecycle",
    ]
    clients = {id(m.client) for m in monitors}  # type: ignore[attr-defined]
    assert len(clients) == 1, "one IMDSv2 client (one token) for every IMDS source"
    (lifecycle,) = [m for m in monitors if isinstance(m, LifecycleMonitor)]
    assert (lifecycle.action.hook_name, lifecycle.action.group_name) == ("drain", "workers")
    assert lifecycle.action.autoscaling is autoscaling


def test_imds_off_turns_off_every_imds_source_the_hook_included(log: RecordingLogger) -> None:
    monitors = monitors_for(
        settings(imds_endpoint="", lifecycle_hook="drain"),
        autoscaling=boto3.client("autoscaling", region_name="us-east-1"),
    )
    assert monitors == []
    assert log.messages("warning") == [
        "lifecycle hook not watched: IMDS is off (WORKER_IMDS_ENDPOINT)"
    ]


def test_a_hook_without_an_autoscaling_client_is_a_wiring_error() -> None:
    with pytest.raises(ValueError, match="autoscaling"):
        monitors_for(settings(imds_endpoint="http://x", lifecycle_hook="drain"))


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in REQUIRED:
        monkeypatch.setenv(name, "x")
    for name in ("WORKER_IMDS_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_imds_endpoint_falls_back_to_botocores_variable(environ: pytest.MonkeyPatch) -> None:
    assert WorkerConfig.from_env().imds_endpoint == "http://169.254.169.254"
    environ.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://[fd00:ec2::254]/")
    config = WorkerConfig.from_env()
    assert config.imds_endpoint == "http://[fd00:ec2::254]/"
    (client,) = {m.client for m in monitors_for(config)}  # type: ignore[attr-defined]
    assert isinstance(client, ImdsClient) and client.endpoint == "http://[fd00:ec2::254]"
    environ.setenv("WORKER_IMDS_ENDPOINT", "http://127.0.0.1:9")
    assert WorkerConfig.from_env().imds_endpoint == "http://127.0.0.1:9"
    environ.setenv("WORKER_IMDS_ENDPOINT", "off")
    assert WorkerConfig.from_env().imds_endpoint == ""


def test_hook_settings_come_from_the_environment(environ: pytest.MonkeyPatch) -> None:
    assert dataclasses.astuple(WorkerConfig.from_env())  # the hook is optional
    environ.setenv("WORKER_LIFECYCLE_HOOK", "drain")
    environ.setenv("WORKER_ASG_NAME", "stack-workers")
    environ.setenv("WORKER_INSTANCE_ID", "i-0abc")
    config = WorkerConfig.from_env()
    assert (config.lifecycle_hook, config.asg_name, config.instance_id) == (
        "drain",
        "stack-workers",
        "i-0abc",
    )
