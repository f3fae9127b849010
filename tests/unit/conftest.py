"""Unit fixtures: moto in-process (``mock_aws``), resources built from template.yaml."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.cfn import Stack, provision
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from spotline.jobstore import JobStore
from spotline.queue import JobQueue
from tests.moto_state import MotoState


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture(scope="session")
def _provisioned() -> tuple[Stack, MotoState]:
    """template.yaml provisioned once per session (see tests/moto_state.py)."""
    with mock_aws():
        stack = provision(boto3.Session(region_name="us-east-1"), stack_name="unit")
        return stack, MotoState.capture()


@pytest.fixture
def stack(aws: None, _provisioned: tuple[Stack, MotoState]) -> Stack:
    """Every resource of template.yaml in this test's own moto, as provisioning made them."""
    provisioned, state = _provisioned
    state.restore()
    return copy.deepcopy(provisioned)


@pytest.fixture
def job_store(stack: Stack) -> JobStore:
    return JobStore(boto3.client("dynamodb"), stack.ref("JobsTable"))


@pytest.fixture
def queue(stack: Stack) -> JobQueue:
    return JobQueue(boto3.client("sqs"), stack.ref("JobsQueue"))


@pytest.fixture
def enqueue(stack: Stack) -> ModuleType:
    """The real enqueue handler module, configured from the template for this stack."""
    return load_handler_module("enqueue.app", stack, "EnqueueFunction")


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture
def event() -> Any:
    return load_event


@pytest.fixture
def worker_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The four settings a worker cannot start without, so ``WorkerConfig.from_env()`` works;
    returns ``monkeypatch`` for the setting under test."""
    for name, value in {
        "WORKER_QUEUE_URL": "q",
        "WORKER_DLQ_URL": "d",
        "WORKER_TABLE_NAME": "t",
        "WORKER_BUCKET": "b",
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def stack_worker_config(stack: Stack, **settings: Any) -> Any:
    """A WorkerConfig for the provisioned stack's queue, DLQ, table and bucket, plus
    ``settings`` (worker_id, wait_s, metrics_sink, ... as each test needs). The drill
    analyzers are on, as in devstack: the tests drill with them."""
    from gpu_worker.config import WorkerConfig

    return WorkerConfig(
        **{
            "queue_url": stack.ref("JobsQueue"),
            "dlq_url": stack.ref("JobsDeadLetterQueue"),
            "table_name": stack.ref("JobsTable"),
            "bucket": stack.ref("DataBucket"),
            "enable_drills": True,
            **settings,
        }
    )


@contextlib.contextmanager
def stack_workers(stack: Stack, **defaults: Any) -> Iterator[Callable[..., Any]]:
    """Makes in-process Workers on the provisioned stack (``defaults``, then each call's own
    settings, over ``stack_worker_config``); closes every one's analysis child on exit."""
    from gpu_worker.consumer import Worker

    made: list[Worker] = []

    def make(**settings: Any) -> Worker:
        config = stack_worker_config(stack, **{**defaults, **settings})
        worker = Worker(
            config,
            sqs=boto3.client("sqs"),
            dynamodb=boto3.client("dynamodb"),
            s3=boto3.client("s3"),
        )
        made.append(worker)
        return worker

    try:
        yield make
    finally:
        for worker in made:
            worker.supervisor.close()


def emitted_metrics(output: str) -> list[dict[str, Any]]:
    """The EMF metric blobs Powertools printed (one per invocation), without their metadata."""
    blobs = [json.loads(line) for line in output.splitlines() if line.startswith('{"_aws"')]
    return [{k: v for k, v in b.items() if k not in ("_aws", "service")} for b in blobs]


class FailingClient:
    """A boto3 client whose ``method`` raises ``error``; every other call goes through."""

    def __init__(self, client: Any, method: str, error: Exception) -> None:
        self._client, self._method, self._error = client, method, error

    def __getattr__(self, name: str) -> Any:
        if name == self._method:

            def fail(**kwargs: Any) -> Any:
                raise self._error

            return fail
        return getattr(self._client, name)
