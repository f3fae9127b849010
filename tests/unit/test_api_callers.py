"""A multi-user API: under JWT each caller's Idempotency-Key is theirs, a job is shown only to
its submitter (404 to anyone else) or an operator; under IAM the account sees every job.
Events are the HTTP API (payload 2.0) samples in events/, the JWT ones in the claims shape of
``sam local generate-event apigateway http-api-proxy``."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from devstack.cfn import Stack, load_template
from devstack.lambdas import LambdaContext, load_event, load_handler_module
from enqueue.callers import AccessPolicy, AuthMode, Caller, Unidentified
from spotline.contract import job_id_for_idempotency_key
from spotline.jobstore import JobRecord, JobStore
from spotline.queue import JobQueue

OPERATOR_SCOPE = "spotline/operator"
ALICE, BOB = "alice-sub", "bob-sub"
REQUEST = {"analyzer": "echo", "input": {"text": "hello"}}


@pytest.fixture
def jwt_api(stack: Stack) -> Iterator[ModuleType]:
    """The enqueue handler of a stack deployed with ApiAuth=JWT."""
    env = {"API_AUTH": "JWT", "API_OPERATOR_SCOPE": OPERATOR_SCOPE}
    yield load_handler_module("enqueue.app", stack, "EnqueueFunction", env)


def call(api: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = api.handler(event, LambdaContext())
    return response["statusCode"], json.loads(response["body"])


def jwt_event(name: str, sub: str | None, **claims: str) -> dict[str, Any]:
    event = copy.deepcopy(load_event(name))
    jwt = event["requestContext"]["authorizer"]["jwt"]
    if sub is None:
        del jwt["claims"]["sub"]
    else:
        jwt["claims"]["sub"] = sub
    jwt["claims"].update(claims)
    return event


def submit(api: ModuleType, sub: str | None, request: Any = REQUEST, key: str = "order-42") -> Any:
    event = jwt_event("enqueue_submit_jwt", sub)
    event["headers"]["idempotency-key"] = key
    event["body"] = json.dumps(request)
    return call(api, event)


def get(api: ModuleType, job_id: str, sub: str | None, **claims: str) -> Any:
    event = jwt_event("enqueue_get_job_jwt", sub, **claims)
    event["pathParameters"] = {"job_id": job_id}
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/jobs/{job_id}"
    return call(api, event)


def drain(queue: JobQueue) -> list[str]:
    return [json.loads(m.body)["job_id"] for m in queue.receive(max_messages=10, wait_s=0)]


# -- JWT ---------------------------------------------------------------------------------------


def test_the_same_key_from_two_users_is_two_jobs(
    jwt_api: ModuleType, job_store: JobStore, queue: JobQueue
) -> None:
    alice = submit(jwt_api, ALICE)
    bob = submit(jwt_api, BOB, {"analyzer": "echo", "input": {"text": "other"}})  # no 409
    again = submit(jwt_api, ALICE)

    assert alice[0] == bob[0] == again[0] == 202
    assert alice[1]["job_id"] != bob[1]["job_id"]
    assert again[1]["job_id"] == alice[1]["job_id"]  # idempotent for its own caller
    assert sorted(drain(queue)) == sorted([alice[1]["job_id"], bob[1]["job_id"]])
    assert alice[1]["job_id"] == job_id_for_idempotency_key("order-42", f"jwt:{ALICE}")
    record = job_store.get(alice[1]["job_id"])
    assert isinstance(record, JobRecord) and record.submitter == f"jwt:{ALICE}"


def test_a_job_is_shown_to_its_submitter_and_404_to_anyone_else(jwt_api: ModuleType) -> None:
    _, submitted = submit(jwt_api, ALICE)
    job_id = submitted["job_id"]

    mine = get(jwt_api, job_id, ALICE)
    theirs = get(jwt_api, job_id, BOB)
    unknown = get(jwt_api, "00000000-0000-4000-8000-000000000000", BOB)

    assert mine[0] == 200 and mine[1]["job_id"] == job_id
    assert mine[1]["submitter"] == f"jwt:{ALICE}"
    assert theirs[0] == unknown[0] == 404
    assert theirs[1] == {"message": f"no job {job_id!r}"}  # as if it did not exist


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": f"spotline/jobs {OPERATOR_SCOPE}"},
        {"scp": f"[spotline/jobs {OPERATOR_SCOPE}]"},
        {"cognito:groups": f"[admins {OPERATOR_SCOPE}]"},
        {"groups": OPERATOR_SCOPE},
    ],
)
def test_an_operator_sees_every_job(jwt_api: ModuleType, claims: dict[str, str]) -> None:
    _, submitted = submit(jwt_api, ALICE)

    status, body = get(jwt_api, submitted["job_id"], BOB, **claims)

    assert status == 200 and body["submitter"] == f"jwt:{ALICE}"


def test_the_route_scopes_list_counts_too(jwt_api: ModuleType) -> None:
    _, submitted = submit(jwt_api, ALICE)
    event = jwt_event("enqueue_get_job_jwt", BOB)
    event["requestContext"]["authorizer"]["jwt"]["scopes"] = [OPERATOR_SCOPE]
    event["pathParameters"] = {"job_id": submitted["job_id"]}
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/jobs/{submitted['job_id']}"

    assert call(jwt_api, event)[0] == 200


def test_a_scope_that_merely_contains_the_operators_is_not_it(jwt_api: ModuleType) -> None:
    _, submitted = submit(jwt_api, ALICE)

    status, _ = get(jwt_api, submitted["job_id"], BOB, scope=f"{OPERATOR_SCOPE}-readonly")

    assert status == 404


def test_a_token_without_a_subject_is_401_and_nothing_is_stored(
    jwt_api: ModuleType, queue: JobQueue
) -> None:
    status, body = submit(jwt_api, None)

    assert status == 401 and "sub" in body["message"]
    assert drain(queue) == []
    assert get(jwt_api, "00000000-0000-4000-8000-000000000000", None)[0] == 401


def test_an_iam_event_on_a_jwt_stack_is_401(jwt_api: ModuleType) -> None:
    assert call(jwt_api, load_event("enqueue_submit"))[0] == 401


# -- IAM (the default): account-wide ------------------------------------------------------------


def iam_event(name: str, user_arn: str | None) -> dict[str, Any]:
    event = copy.deepcopy(load_event(name))
    if user_arn is None:
        del event["requestContext"]["authorizer"]
    else:
        event["requestContext"]["authorizer"]["iam"]["userArn"] = user_arn
    return event


def test_under_iam_any_caller_sees_any_job(enqueue: ModuleType) -> None:
    submitted = call(enqueue, iam_event("enqueue_submit", "arn:aws:iam::123456789012:user/a"))[1]
    event = iam_event("enqueue_get_job", "arn:aws:iam::123456789012:user/b")
    event["pathParameters"] = {"job_id": submitted["job_id"]}
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/jobs/{submitted['job_id']}"

    status, body = call(enqueue, event)

    assert status == 200
    assert body["submitter"] == "iam:arn:aws:iam::123456789012:user/a"


def test_under_iam_keys_are_scoped_to_the_principal_and_a_role_keeps_them_across_sessions(
    enqueue: ModuleType,
) -> None:
    role = "arn:aws:sts::123456789012:assumed-role/Submitter"
    first = call(enqueue, iam_event("enqueue_submit", f"{role}/session-1"))[1]
    next_session = call(enqueue, iam_event("enqueue_submit", f"{role}/session-2"))[1]
    other_user = call(enqueue, iam_event("enqueue_submit", "arn:aws:iam::123456789012:user/x"))[1]

    assert first["job_id"] == next_session["job_id"]
    assert other_user["job_id"] != first["job_id"]


def test_under_iam_an_event_without_a_signer_is_401(enqueue: ModuleType, queue: JobQueue) -> None:
    status, _ = call(enqueue, iam_event("enqueue_submit", None))

    assert status == 401 and drain(queue) == []


# -- the policy itself ---------------------------------------------------------------------------


def test_the_template_passes_the_auth_mode_and_operator_scope() -> None:
    template = load_template()
    variables = template["Resources"]["EnqueueFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["API_AUTH"] == {"Ref": "ApiAuth"}
    assert variables["API_OPERATOR_SCOPE"] == {"Ref": "ApiOperatorScope"}
    assert template["Parameters"]["ApiOperatorScope"]["Default"] == OPERATOR_SCOPE


def test_a_bad_auth_mode_fails_at_import_naming_it() -> None:
    with pytest.raises(ValueError, match="API_AUTH"):
        AccessPolicy.from_env({"API_AUTH": "COOKIE"})
    assert AccessPolicy.from_env({}).mode is AuthMode.IAM


def test_without_an_operator_scope_nobody_is_an_operator() -> None:
    policy = AccessPolicy(AuthMode.JWT, operator_scope="")
    context = {"authorizer": {"jwt": {"claims": {"sub": "s", "scope": ""}, "scopes": [""]}}}

    assert policy.caller(context) == Caller("jwt:s", operator=False)


@pytest.mark.parametrize(
    "context",
    [None, "text", {"authorizer": []}, {"authorizer": {"jwt": {"claims": ["sub"]}}}],
)
def test_a_malformed_request_context_is_unidentified_not_a_crash(context: Any) -> None:
    with pytest.raises(Unidentified):
        AccessPolicy(AuthMode.JWT, OPERATOR_SCOPE).caller(context)
    with pytest.raises(Unidentified):
        AccessPolicy(AuthMode.IAM).caller(context)
