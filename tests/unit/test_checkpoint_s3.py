"""S3 checkpoints: JSON or raw bytes round-trip, and each records when its state was taken."""

from __future__ import annotations

import time

import boto3
import pytest

from gpu_worker.checkpoint import SAVED_AT_METADATA, CheckpointStore

BUCKET = "spotline-checkpoints-test"


@pytest.fixture
def store(aws: None) -> CheckpointStore:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    return CheckpointStore(s3, BUCKET)


def test_json_and_bytes_round_trip_and_a_missing_checkpoint_is_none(
    store: CheckpointStore,
) -> None:
    assert store.load("job-1") is None
    store.save("job-1", {"steps_done": 3, "ran": [0, 1, 2]})
    assert store.load("job-1") == {"steps_done": 3, "ran": [0, 1, 2]}
    store.save("job-1", b"\x00raw state")
    assert store.load("job-1") == b"\x00raw state"
    store.delete("job-1")
    assert store.load("job-1") is None


def test_saved_at_is_finer_than_s3s_one_second_last_modified(store: CheckpointStore) -> None:
    before = time.time()
    store.save("job-2", {"step": 1})
    after = time.time()
    head = boto3.client("s3", region_name="us-east-1").head_object(
        Bucket=BUCKET, Key=store.key("job-2")
    )
    saved_at = float(head["Metadata"][SAVED_AT_METADATA])
    assert before - 0.001 <= saved_at <= after + 0.001
    # LastModified alone is whole seconds: it could not bound a sub-second loss.
    assert head["LastModified"].timestamp() == int(head["LastModified"].timestamp())
