"""Unit fixtures: moto in-process (``mock_aws``), resources built from template.yaml."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.cfn import Stack, provision
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from pipeline.jobstore import JobStore
from pipeline.queue import JobQueue


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def stack(aws: None) -> Stack:
    return provision(boto3.Session(region_name="us-east-1"), stack_name="unit")


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
