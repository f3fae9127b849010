"""The unit tests' template stack is provisioned once and restored per test: no test sees another
test's writes, and the restored resources behave like freshly created ones."""

from __future__ import annotations

import boto3
from moto import mock_aws

from devstack.cfn import Stack
from spotline.jobstore import JobStore
from spotline.queue import JobQueue
from tests.moto_state import MotoState


def test_each_restore_is_a_fresh_copy_that_never_sees_an_earlier_tests_writes(
    _provisioned: tuple[Stack, MotoState],
) -> None:
    stack, state = _provisioned
    with mock_aws():
        state.restore()
        JobStore(boto3.client("dynamodb"), stack.ref("JobsTable")).create("j1", {"input": 1})
        JobQueue(boto3.client("sqs"), stack.ref("JobsQueue")).send_body("{}")
        boto3.client("s3").put_object(Bucket=stack.ref("DataBucket"), Key="k", Body=b"x")
    with mock_aws():
        state.restore()
        assert JobStore(boto3.client("dynamodb"), stack.ref("JobsTable")).get("j1") is None
        assert JobQueue(boto3.client("sqs"), stack.ref("JobsQueue")).approximate_counts() == (0, 0)
        assert boto3.client("s3").list_objects_v2(Bucket=stack.ref("DataBucket"))["KeyCount"] == 0


def test_restored_resources_keep_the_templates_settings_and_work(
    _provisioned: tuple[Stack, MotoState],
) -> None:
    stack, state = _provisioned
    with mock_aws():
        state.restore()
        sqs = boto3.client("sqs")
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.ref("JobsQueue"), AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
        )["Attributes"]
        assert attributes["VisibilityTimeout"] == str(stack.parameters["VisibilityTimeoutSeconds"])
        assert stack.attr("JobsDeadLetterQueue", "Arn") in attributes["RedrivePolicy"]
        queue = JobQueue(sqs, stack.ref("JobsQueue"))
        # Sending notifies the queue's (copied) Condition: a shared or held lock would raise.
        queue.send_body('{"job_id": "j2"}')
        (message,) = queue.receive(wait_s=1)
        assert message.body == '{"job_id": "j2"}'


def test_a_restore_leaves_services_it_did_not_capture_empty(
    _provisioned: tuple[Stack, MotoState],
) -> None:
    _, state = _provisioned
    with mock_aws():
        state.restore()
        assert boto3.client("secretsmanager").list_secrets()["SecretList"] == []
