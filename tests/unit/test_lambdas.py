"""devstack runs every function in one process: a function's environment and its Lambda context
on the shared "spotline" logger exist only while that function loads or runs."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters

from dead_letter.callbacks import TEST_MODE_ENV
from devstack.cfn import Stack
from devstack.deadletters import store_secret
from devstack.lambdas import LambdaContext, http_event, load_event, load_handler_module
from devstack.sink import WebhookSink


def _get_job(enqueue: ModuleType, job_id: str) -> dict[str, Any]:
    event = http_event("GET", f"/jobs/{job_id}", path_parameters={"job_id": job_id})
    response: dict[str, Any] = enqueue.handler(
        event, LambdaContext(function_name="EnqueueFunction")
    )
    return response


def test_a_handlers_environment_exists_only_while_it_loads_and_runs(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = f"probe-{uuid.uuid4()}"
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "ERROR")  # the caller's own value comes back
    before = dict(os.environ)
    enqueue = load_handler_module(
        "enqueue.app",
        stack,
        "EnqueueFunction",
        {"SPOTLINE_PROBE": probe, "POWERTOOLS_LOG_LEVEL": "DEBUG"},
    )
    assert dict(os.environ) == before

    seen: dict[str, str | None] = {}
    real_job_store = enqueue.job_store

    def job_store() -> Any:  # called by the GET route, inside the invocation
        seen.update(probe=os.environ.get("SPOTLINE_PROBE"), table=os.environ.get("JOBS_TABLE"))
        return real_job_store()

    monkeypatch.setattr(enqueue, "job_store", job_store)
    assert _get_job(enqueue, str(uuid.uuid4()))["statusCode"] == 404
    assert seen == {"probe": probe, "table": stack.ref("JobsTable")}
    assert dict(os.environ) == before


@pytest.fixture
def dead_letter(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    with WebhookSink() as sink:
        names = stack.parameters
        store_secret(boto3.client, names["DeadLetterSlackWebhookSecret"], sink.url + "/slack")
        store_secret(boto3.client, names["DeadLetterDiscordWebhookSecret"], sink.url + "/discord")
        store_secret(boto3.client, names["CallbackSigningSecret"], "unit-test-signing-key")
        parameters.clear_caches()
        monkeypatch.setenv(TEST_MODE_ENV, "true")
        yield load_handler_module("dead_letter.app", stack, "DeadLetterFunction")
        parameters.clear_caches()


@pytest.fixture
def logged(dead_letter: ModuleType) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The lines the shared "spotline" logger writes, each formatted as it is written (with the
    keys of that moment)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(dead_letter.logger.registered_formatter)
    shared = logging.getLogger(dead_letter.logger.name)
    shared.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    shared.removeHandler(handler)


def test_one_functions_lambda_context_never_appears_on_anothers_log_lines(
    stack: Stack,
    dead_letter: ModuleType,
    logged: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    enqueue = load_handler_module("enqueue.app", stack, "EnqueueFunction")

    def record_handler(record: Any, **_: Any) -> None:  # deadlines: unused here
        # Another function runs while this one is mid-batch (in devstack: the API is called
        # while the dead-letter router works through a batch); then this one logs again.
        assert _get_job(enqueue, "no-such-job")["statusCode"] == 404
        dead_letter.logger.info("dead letter record done")

    monkeypatch.setattr(dead_letter, "record_handler", record_handler)
    dead_letter.handler(load_event("dead_letter_worker"), LambdaContext("DeadLetterFunction"))
    dead_letter.logger.info("between invocations")

    by_message = {line["message"]: line for line in logged()}
    assert by_message["dead letter record done"]["function_name"] == "DeadLetterFunction"
    assert "function_name" not in by_message["between invocations"]
