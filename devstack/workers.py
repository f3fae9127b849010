"""Real ``python -m gpu_worker`` processes against devstack's stack."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from devstack.cfn import REPO_ROOT, Stack


def worker_env(stack: Stack, aws_env: dict[str, str], **overrides: str) -> dict[str, str]:
    """The worker's configuration, taken from the provisioned stack (as the template's
    Outputs name them), tuned for fast local runs."""
    env = {
        **os.environ,
        **aws_env,
        "WORKER_QUEUE_URL": stack.ref("JobsQueue"),
        "WORKER_DLQ_URL": stack.ref("JobsDeadLetterQueue"),
        "WORKER_TABLE_NAME": stack.ref("JobsTable"),
        "WORKER_BUCKET": stack.ref("DataBucket"),
        "WORKER_VISIBILITY_WINDOW_S": str(stack.parameters["VisibilityTimeoutSeconds"]),
        # The same policy as the stack's enqueue function (the launch template's user data).
        "WORKER_MAX_RUNTIME_S": str(stack.parameters["WorkerMaxRuntimeS"]),
        "WORKER_ENABLE_DRILLS": str(stack.parameters["EnableDrillAnalyzers"]),
        "WORKER_IMAGE": "devstack (this environment)",
        "WORKER_MAX_RECEIVE_COUNT": str(stack.parameters["MaxReceiveCount"]),
        "WORKER_WAIT_S": "1",
        "WORKER_BACKOFF_BASE_S": "1",
        "WORKER_BACKOFF_MAX_S": "4",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        # Several workers share this machine: each takes any free port unless told otherwise.
        "WORKER_HEALTH_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    python_path = [str(REPO_ROOT / "functions"), str(REPO_ROOT)]
    if os.environ.get("PYTHONPATH"):
        python_path.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env.update(overrides)
    return env


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, name: str = "worker") -> None:
        self.env = env
        self.log_path = log_path
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpu_worker"],
            env={**self.env, "WORKER_ID": self.env.get("WORKER_ID", self.name)},
            cwd=str(REPO_ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            os.kill(self.process.pid, signum)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group (the analysis child too)."""
        if self.process is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
