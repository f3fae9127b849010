"""``python -m devstack run --analyzer NAME --input JSON``: your analyzer, end to end, here.

The whole pipeline on this machine (moto server as AWS, the template's resources, the real
enqueue handler, one real worker process) with the analyzers installed in this environment
(``pip install -e path/to/your/package``): it submits one job through the API, waits for the
worker's verdict and prints the job's record and result. Exit 0 when the job succeeded.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from devstack.stack import Devstack
from spotline.contract import TERMINAL_STATUSES, JobStatus

QUIET_HANDLERS = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


def run(
    analyzer: str,
    job_input: Any,
    params: dict[str, Any] | None = None,
    *,
    timeout_s: float = 300.0,
    worker_env: dict[str, str] | None = None,
) -> int:
    request: dict[str, Any] = {"analyzer": analyzer, "input": job_input}
    if params:
        request["params"] = params
    with Devstack(handler_env=QUIET_HANDLERS) as dev:
        worker = dev.start_worker("local", **(worker_env or {}))
        status, body = dev.submit(request)
        if status != 202:
            print(f"the API refused the job ({status}):", file=sys.stderr)
            print(json.dumps(body, indent=2), file=sys.stderr)
            return 1
        job_id = body["job_id"]
        print(f"submitted job {job_id} ({analyzer}); worker log: {worker.log_path}")
        deadline = time.monotonic() + timeout_s
        record = dev.job(job_id)
        while record is None or record.status not in TERMINAL_STATUSES:
            if time.monotonic() > deadline:
                print(f"no verdict in {timeout_s:g}s; last status {record and record.status}")
                return 1
            if not worker.alive():
                print(f"the worker exited; see {worker.log_path}", file=sys.stderr)
                return 1
            time.sleep(0.2)
            record = dev.job(job_id)
        print(f"status: {record.status}  attempts: {record.attempts}")
        if record.status is JobStatus.SUCCEEDED and record.result_uri:
            print(f"result ({record.result_uri}):")
            print(json.dumps(dev.read_result(record.result_uri), indent=2))
            return 0
        if record.last_error is not None:
            print(f"error: {record.last_error.kind}: {record.last_error.message}")
        return 1
