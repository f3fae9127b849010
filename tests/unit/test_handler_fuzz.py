"""Hostile input for every handler: random and truncated versions of its own files in events/.

Each mutated event must be logged and ignored, reported as a batch item failure (SQS), or
answered with an HTTP 4xx (enqueue): never an unhandled exception. The environment is built so
that the deliberate raises for Lambda's retry (a standby still stopping, a channel that did not
take an alarm) cannot happen: every webhook answers 200, the standby is stopped, not stopping.
So no exception at all is allowed from any handler here.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devstack.cfn import Stack, provision
from devstack.deadletters import configure_notifications
from devstack.drills.alarms import fanout_env
from devstack.lambdas import EVENTS_DIR, LambdaContext, load_event, load_handler_module
from devstack.sink import WebhookSink
from spot_events.fleet import ROLE_TAG, STACK_TAG
from spotline.contract import ErrorKind
from spotline.jobstore import JobError, JobStore
from spotline.queue import JobQueue
from spotline.standard_webhooks import generate_key_pair
from spotline.webhooks import WebhookClient

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
AMI_ID = "ami-12c6146b"  # one of moto's built-in images
WORKER_JOB = "6f0c2a8e-3b1d-4c7a-9e55-0d2b8f1a4c19"  # events/dead_letter_worker.json
REDRIVE_JOB = "a3d5f7b9-1c2e-4f60-8a7b-9c0d1e2f3a4b"  # events/dead_letter_redrive.json


# events/env.json (and a user's env.local.json) is sam local's --env-vars file, not an event.
EVENT_NAMES = sorted(p.stem for p in EVENTS_DIR.glob("*.json") if not p.name.startswith("env."))


def events_for(*prefixes: str) -> list[str]:
    return [n for n in EVENT_NAMES if n.startswith(prefixes)]


ENQUEUE_EVENTS = events_for("enqueue_")
DEAD_LETTER_EVENTS = events_for("dead_letter_")
SPOT_EVENTS = events_for("spot_", "instance_state_", "reconcile", "stop_standby")
ALARM_EVENTS = events_for("alarm_")
SWEEP_EVENTS = events_for("sweep_")


def test_every_event_file_is_fuzzed_by_one_handler() -> None:
    fuzzed = ENQUEUE_EVENTS + DEAD_LETTER_EVENTS + SPOT_EVENTS + ALARM_EVENTS + SWEEP_EVENTS
    assert sorted(fuzzed) == EVENT_NAMES
    assert all([ENQUEUE_EVENTS, DEAD_LETTER_EVENTS, SPOT_EVENTS, ALARM_EVENTS, SWEEP_EVENTS])


# -- the mutations ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
hostile_text = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["", " ", "null", "{", "[]", "\x00", "i-", "2026-13-45T99:99:99Z", "💥" * 5]),
)
Path = tuple[Any, ...]


def _paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every node below the root, at any depth (dict keys and list indices)."""
    if isinstance(value, dict | list):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))


def _embedded_json(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip()[:1] in ("{", "[")


def _set(event: Any, path: Path, value: Any) -> None:
    parent = event
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value


def _delete(event: Any, path: Path) -> None:
    parent = event
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]


def _get(event: Any, path: Path) -> Any:
    for key in path:
        event = event[key]
    return event


@st.composite
def hostile_events(draw: st.DrawFn, names: list[str]) -> Any:
    """A sample event, then one to four mutations at random depths; or the whole event's JSON
    text truncated (a string payload); or nothing at all."""
    shape = draw(st.sampled_from(["mutated"] * 6 + ["truncated", "empty"]))
    event = copy.deepcopy(load_event(draw(st.sampled_from(names))))
    if shape == "empty":
        return draw(st.sampled_from([None, {}, [], "", 0, {"Records": []}, {"Records": None}]))
    if shape == "truncated":
        text = json.dumps(event)
        return text[: draw(st.integers(0, len(text) - 1))]
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(event))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        current = _get(event, path)
        operation = draw(st.sampled_from(["delete", "retype", "string", "truncate_embedded"]))
        if operation == "delete":
            _delete(event, path)
        elif operation == "retype":
            _set(event, path, draw(json_values))
        elif operation == "string" or not _embedded_json(current):
            _set(event, path, draw(hostile_text))
        else:  # an SQS body or an SNS Message holding JSON: cut it short
            _set(event, path, current[: draw(st.integers(0, max(0, len(current) - 1)))])
    return event


def _describe(event: Any) -> str:
    return json.dumps(event, default=repr)[:2000]


# -- enqueue: an HTTP API behind API Gateway -------------------------------------------------


def _without(name: str, *path: str) -> dict[str, Any]:
    event = copy.deepcopy(load_event(name))
    parent = _get(event, path[:-1])
    del parent[path[-1]]
    return event


def _with(name: str, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    event = copy.deepcopy(load_event(name))
    _set(event, path, value)
    return event


@FUZZ
@given(event=hostile_events(ENQUEUE_EVENTS))
# What the fuzzing found once, kept as fixed examples: the resolver read these unguarded.
@example(event="")
@example(event=_without("enqueue_submit", "requestContext", "stage"))
@example(event=_with("enqueue_get_job", ("rawPath",), None))
@example(event=_without("enqueue_submit", "requestContext", "domainName"))
def test_enqueue_answers_every_hostile_event_with_2xx_or_4xx(
    enqueue: ModuleType, queue: JobQueue, event: Any
) -> None:
    response = enqueue.handler(event, LambdaContext(function_name="EnqueueFunction"))
    sent = _drain(queue)
    # 2xx: a mutation can leave a valid request (a changed header, a reordered field).
    assert 200 <= response["statusCode"] < 500, (response, _describe(event))
    assert response["statusCode"] in (200, 202, 400, 401, 404, 405, 409, 413), response
    # 202 sends one message, or none when an Idempotency-Key names a job already queued.
    assert len(sent) <= (1 if response["statusCode"] == 202 else 0), response


def _drain(queue: JobQueue) -> list[str]:
    bodies = []
    while batch := queue.receive(max_messages=10, wait_s=0):
        for message in batch:
            bodies.append(message.body)
            queue.delete(message.receipt_handle)
    return bodies


# -- dead_letter: the DLQ's SQS event source -------------------------------------------------


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:  # answers 200 to everything
        yield server


class _Clients:
    def client(self, service: str) -> Any:
        return boto3.client(service, region_name="us-east-1")

    def __init__(self, stack: Stack) -> None:
        self.require_stack = stack


@pytest.fixture
def dead_letter(stack: Stack, job_store: JobStore, sink: WebhookSink) -> Iterator[ModuleType]:
    env = configure_notifications(_Clients(stack), sink.url, generate_key_pair()[0])  # type: ignore[arg-type]
    parameters.clear_caches()
    module = load_handler_module("dead_letter.app", stack, "DeadLetterFunction", env)
    service = module.service()
    service.alerts.client = WebhookClient(max_attempts=1, backoff_s=0)
    # The jobs the sample events name exist (one dead-lettered by the worker, one crashed), so
    # the mutations reach the job paths, not only "unknown job".
    callback = sink.url.replace("http://", "https://") + "/callback"
    request = {"analyzer": "echo", "input": 1, "notify": {"callback_url": callback}}
    job_store.create(WORKER_JOB, request)
    job_store.claim(WORKER_JOB, "token", "worker-a", expect_owner=None)
    job_store.dead_letter(WORKER_JOB, JobError(ErrorKind.OOM, "too big"), expect_owner="token")
    job_store.create(REDRIVE_JOB, {"analyzer": "echo", "input": 1})
    job_store.claim(REDRIVE_JOB, "token", "worker-a", expect_owner=None)
    yield module
    parameters.clear_caches()


@FUZZ
@given(event=hostile_events(DEAD_LETTER_EVENTS))
# Found once: the batch processor raised on these instead of reporting anything.
@example(event="")
@example(event={})
@example(event={"Records": [None]})
@example(event=_without("dead_letter_worker", "Records", 0, "messageId"))
def test_dead_letter_reports_hostile_records_as_handled_or_batch_failures(
    dead_letter: ModuleType, event: Any
) -> None:
    response = dead_letter.handler(event, LambdaContext(function_name="DeadLetterFunction"))
    failures = response["batchItemFailures"]
    records = event.get("Records") if isinstance(event, dict) else None
    listed = records if isinstance(records, list) else []
    ids = [r.get("messageId") for r in listed if isinstance(r, dict)]
    # Every webhook answers 200: a record can only fail for what it is, and then it is named.
    assert all(f["itemIdentifier"] in ids for f in failures), (failures, _describe(event))


# -- spot_events: EventBridge rules, the stop schedule, the reconcile rule --------------------


@pytest.fixture
def fleet_stack(aws: None) -> Stack:
    return provision(
        boto3.Session(region_name="us-east-1"),
        stack_name="fuzz",
        parameters={"DeployWorkers": "true"},
    )


@pytest.fixture
def spot_events(fleet_stack: Stack, sink: WebhookSink) -> ModuleType:
    ec2 = boto3.client("ec2", region_name="us-east-1")

    def launch(role: str, **kwargs: Any) -> str:
        tags = [{"Key": STACK_TAG, "Value": fleet_stack.name}, {"Key": ROLE_TAG, "Value": role}]
        return str(
            ec2.run_instances(
                ImageId=AMI_ID,
                MinCount=1,
                MaxCount=1,
                InstanceType="g4dn.xlarge",
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                **kwargs,
            )["Instances"][0]["InstanceId"]
        )

    launch("worker", InstanceMarketOptions={"MarketType": "spot"})
    standby = launch("standby")
    ec2.stop_instances(InstanceIds=[standby])  # stopped, never `stopping` (see the docstring)
    boto3.client("ssm").put_parameter(
        Name="/spotline/alerts/webhook",
        Value=f"{sink.url}/spot",
        Type="SecureString",
        Overwrite=True,
    )
    parameters.clear_caches()
    return load_handler_module(
        "spot_events.app",
        fleet_stack,
        "SpotEventsFunction",
        {
            "ALERT_CHANNELS": "webhook",
            "WEBHOOK_WEBHOOK_SECRET": "ssm:/spotline/alerts/webhook",
            "STANDBY_START_WAIT_S": "0",
            "POWERTOOLS_METRICS_DISABLED": "true",
        },
    )


def _our_worker(event: Any) -> Any:
    """Point a sample EC2 event at this stack's spot worker, so mutations reach the controller."""
    if isinstance(event, dict) and isinstance(event.get("detail"), dict):
        ec2 = boto3.client("ec2", region_name="us-east-1")
        reservations = ec2.describe_instances(
            Filters=[{"Name": f"tag:{ROLE_TAG}", "Values": ["worker"]}]
        )["Reservations"]
        if "instance-id" in event["detail"]:
            event["detail"]["instance-id"] = reservations[0]["Instances"][0]["InstanceId"]
    return event


@FUZZ
@given(event=hostile_events(SPOT_EVENTS), retarget=st.booleans())
# Found once: a detail-type that is not text raised TypeError instead of MalformedEvent.
@example(event=_with("spot_interruption_warning", ("detail-type",), ["x"]), retarget=True)
@example(event=_with("spot_interruption_warning", ("detail-type",), None), retarget=False)
def test_spot_events_ignores_hostile_events_without_raising(
    caplog: pytest.LogCaptureFixture, spot_events: ModuleType, event: Any, retarget: bool
) -> None:
    if retarget:
        event = _our_worker(event)
    caplog.clear()
    outcome = spot_events.handler(event, LambdaContext(function_name="SpotEventsFunction"))
    assert isinstance(outcome, dict) and outcome.get("action"), (outcome, _describe(event))
    logged = [record.getMessage() for record in caplog.records]
    # Every invocation says what it did; an ignored one says why.
    assert {"malformed event ignored", "spot event handled", "no standby instance"} & set(logged)


# -- alarm_fanout: SNS notifications and EventBridge alarm state changes ---------------------


@pytest.fixture
def alarm_fanout(stack: Stack, sink: WebhookSink) -> ModuleType:
    parameters.clear_caches()
    env = {**fanout_env(sink.url, _Clients(stack)), "POWERTOOLS_METRICS_DISABLED": "true"}  # type: ignore[arg-type]
    module = load_handler_module("alarm_fanout.app", stack, "AlarmFanoutFunction", env)
    module.fanout().busy_wait_s = 0  # a claim left busy is reported, not waited on
    return module


@FUZZ
@given(event=hostile_events(ALARM_EVENTS))
def test_alarm_fanout_forwards_or_delivers_every_hostile_event(
    alarm_fanout: ModuleType, sink: WebhookSink, event: Any
) -> None:
    # FanoutIncomplete (a channel did not take the alarm) cannot happen: the sink answers 200.
    result = alarm_fanout.handler(event, LambdaContext(function_name="AlarmFanoutFunction"))
    assert result["notices"] >= 1 or event in ({"Records": []},), (result, _describe(event))


# -- sweep: the stranded-job schedule --------------------------------------------------------


@pytest.fixture
def sweep(stack: Stack, job_store: JobStore) -> ModuleType:
    # Every job counts as stranded at once, so each invocation has one to send.
    env = {"STRANDED_AFTER_S": "0", "POWERTOOLS_METRICS_DISABLED": "true"}
    return load_handler_module("sweep.app", stack, "SweepFunction", env)


@FUZZ
@given(event=hostile_events(SWEEP_EVENTS))
def test_sweep_sends_stranded_jobs_whatever_the_event(
    sweep: ModuleType, job_store: JobStore, queue: JobQueue, event: Any
) -> None:
    job_id = str(uuid.uuid4())
    job_store.create(job_id, {"analyzer": "echo", "input": 1})
    # The schedule's event says nothing the sweep needs: every shape of it sends the job.
    result = sweep.handler(event, LambdaContext(function_name="SweepFunction"))
    assert result["sent"] == [job_id] and result["failed"] == {}, _describe(event)
    assert [json.loads(body)["job_id"] for body in _drain(queue)] == [job_id]
