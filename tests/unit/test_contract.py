from __future__ import annotations

import json

import pytest

from spotline.contract import (
    TRANSITIONS,
    InvalidJob,
    JobMessage,
    JobStatus,
    analyzer_names,
    job_id_for_idempotency_key,
    job_id_from_body,
    parse_request,
    validate_request,
)


def paths_of(exc: pytest.ExceptionInfo[InvalidJob]) -> set[str]:
    return {v.path for v in exc.value.violations}


def test_valid_request_passes_unchanged() -> None:
    request = {"analyzer": "echo", "input": {"a": [1, 2.5, None]}, "params": {"k": "v"}}
    assert validate_request(request) == request


@pytest.mark.parametrize(
    ("request_body", "path"),
    [
        ({"input": 1}, "$"),  # missing analyzer
        ({"analyzer": 3, "input": 1}, "$.analyzer"),
        ({"analyzer": "nope", "input": 1}, "$.analyzer"),
        ({"analyzer": "echo"}, "$"),  # neither input nor input_uri
        ({"analyzer": "echo", "input": 1, "input_uri": "s3://bucket-a/k"}, "$"),
        (
            {"analyzer": "echo", "input": 1, "notify": {"callback_url": "http://x.io"}},
            "$.notify.callback_url",
        ),
        ({"analyzer": "echo", "input": 1, "max_runtime_s": "ten"}, "$.max_runtime_s"),
        ({"analyzer": "echo", "input": 1, "surprise": True}, "$"),
        ({"analyzer": "sleep", "input": 1, "params": {"seconds": -1}}, "$.params.seconds"),
    ],
)
def test_each_schema_violation_names_its_path(request_body: dict, path: str) -> None:
    with pytest.raises(InvalidJob) as exc:
        validate_request(request_body)
    assert path in paths_of(exc)


def test_every_failing_path_is_listed_at_once() -> None:
    with pytest.raises(InvalidJob) as exc:
        validate_request(
            {"analyzer": 7, "input": 1, "max_runtime_s": 0, "notify": {"callback_url": "ftp://x"}}
        )
    assert {"$.analyzer", "$.max_runtime_s", "$.notify.callback_url"} <= paths_of(exc)


@pytest.mark.parametrize("body", [b"\xff\xfe\x00garbage", "{not json", "", "[1, 2]", "null"])
def test_garbage_bodies_are_invalid_jobs(body: str | bytes) -> None:
    with pytest.raises(InvalidJob):
        parse_request(body)


def test_analyzer_enum_is_the_registry_of_names() -> None:
    assert {"echo", "sleep"} <= set(analyzer_names())


def test_status_machine_never_leaves_succeeded() -> None:
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()
    assert JobStatus.QUEUED not in TRANSITIONS[JobStatus.QUEUED]


def test_message_round_trip_and_malformed_bodies() -> None:
    message = JobMessage("6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f", {"analyzer": "echo", "input": 1})
    assert JobMessage.from_json(message.to_json()) == message
    assert job_id_from_body(message.to_json()) == message.job_id
    for body in ("nope", "[]", json.dumps({"job_id": "not-a-uuid"}), json.dumps({"x": 1})):
        with pytest.raises(InvalidJob):
            JobMessage.from_json(body)
        assert job_id_from_body(body) is None


def test_idempotency_key_maps_to_a_stable_job_id() -> None:
    assert job_id_for_idempotency_key("k1") == job_id_for_idempotency_key("k1")
    assert job_id_for_idempotency_key("k1") != job_id_for_idempotency_key("k2")
    # scoped to the caller: one key, two callers, two jobs
    assert job_id_for_idempotency_key("k1", "jwt:a") == job_id_for_idempotency_key("k1", "jwt:a")
    assert job_id_for_idempotency_key("k1", "jwt:a") != job_id_for_idempotency_key("k1", "jwt:b")
    assert job_id_for_idempotency_key("k1", "jwt:a") != job_id_for_idempotency_key("k1")
