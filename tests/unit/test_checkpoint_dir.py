"""WORKER_CHECKPOINT_DIR: checkpoints as files, written atomically (temp file + rename)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpu_worker.checkpoint import FileCheckpointStore

JOB_ID = "3f1b6c1e-8a7d-4d5e-9f00-0123456789ab"


def test_json_and_bytes_round_trip_and_the_last_write_wins(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path / "efs" / "checkpoints")
    assert store.load(JOB_ID) is None
    store.save(JOB_ID, {"steps_done": 3, "ran": [0, 1, 2]})
    assert store.load(JOB_ID) == {"steps_done": 3, "ran": [0, 1, 2]}
    store.save(JOB_ID, b"\x00model-state\xff")
    assert store.load(JOB_ID) == b"\x00model-state\xff"
    store.save(JOB_ID, [1, 2])
    assert store.load(JOB_ID) == [1, 2]
    assert sorted(os.listdir(store.directory)) == [f"{JOB_ID}.ckpt"], "no temp file left"


def test_delete_is_idempotent(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path)
    store.save(JOB_ID, {"n": 1})
    store.delete(JOB_ID)
    store.delete(JOB_ID)
    assert store.load(JOB_ID) is None


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path)
    store.save(JOB_ID, {"steps_done": 5})
    with pytest.raises(TypeError):
        store.save(JOB_ID, {"not json": object()})
    assert store.load(JOB_ID) == {"steps_done": 5}
    assert os.listdir(tmp_path) == [f"{JOB_ID}.ckpt"]


@pytest.mark.parametrize("job_id", ["../escape", "a/b", ".hidden", ""])
def test_job_ids_that_are_not_file_names_are_refused(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(ValueError, match="checkpoint file"):
        FileCheckpointStore(tmp_path).save(job_id, {})
