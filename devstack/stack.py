"""One local spotline: moto server, the template's resources, the real handlers, workers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from devstack.cfn import Stack, provision
from devstack.faults import FaultProxy
from devstack.lambdas import LambdaContext, http_event, load_event, load_handler_module
from devstack.motoserver import MotoServer
from devstack.workers import WorkerProcess, worker_env
from enqueue.callers import AccessPolicy, AuthMode
from gpu_worker.registry import build_catalog
from spotline.catalog import CATALOG_FILE_ENV
from spotline.contract import job_id_for_idempotency_key
from spotline.jobstore import JobRecord, JobStore
from spotline.queue import JobQueue

# devstack, its drills, the chaos run and the tests send the drill analyzers (memory_hog, crash,
# ...) through enqueue to real workers: a local stack accepts them unless told otherwise. A
# deployed stack keeps the template's default, off.
DEVSTACK_PARAMETERS = {"EnableDrillAnalyzers": "true"}


def write_local_catalog(folder: Path) -> Path:
    """The catalog of every analyzer installed in this environment, as a file the enqueue
    function reads (``ANALYZER_CATALOG_FILE``)."""
    catalog, _ = build_catalog("local environment")
    path = folder / "catalog.json"
    path.write_text(catalog.dumps(), encoding="utf-8")
    return path


class Devstack:
    def __init__(
        self,
        *,
        parameters: dict[str, Any] | None = None,
        workdir: Path | None = None,
        server: MotoServer | None = None,
        handler_env: dict[str, str] | None = None,
    ) -> None:
        self.handler_env = handler_env or {}
        self.parameters = {**DEVSTACK_PARAMETERS, **(parameters or {})}
        # SPOTLINE_DEVSTACK_WORKDIR: where worker logs go (tests read them after a demo run).
        named = os.environ.get("SPOTLINE_DEVSTACK_WORKDIR")
        self.workdir = workdir or (
            Path(named) if named else Path(tempfile.mkdtemp(prefix="spotline-devstack-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._own_server = server is None
        self.server = server or MotoServer()
        self.stack: Stack | None = None
        self.workers: list[WorkerProcess] = []
        self.proxies: list[FaultProxy] = []
        self._saved_env: dict[str, str | None] = {}
        self._enqueue: ModuleType | None = None
        self._sweeper: tuple[int, ModuleType] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, stack_name: str = "spotline-dev") -> Devstack:
        if self._own_server:
            self.server.start()
        self._set_env(self.server.env())
        if not os.environ.get(CATALOG_FILE_ENV):
            # The API checks jobs against this environment's analyzers (drills and the user's
            # own plug-ins included), as a deployed one does against its image's catalog.
            self._set_env({CATALOG_FILE_ENV: str(write_local_catalog(self.workdir))})
        session = boto3.Session(region_name="us-east-1")
        self.session = session
        self.stack = provision(session, stack_name=stack_name, parameters=self.parameters)
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout_s=15)
        self.workers.clear()
        for proxy in self.proxies:
            proxy.stop()
        self.proxies.clear()
        if self._own_server:
            self.server.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def __enter__(self) -> Devstack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _set_env(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    # -- AWS views -----------------------------------------------------------------------------

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.server.endpoint_url)

    @property
    def require_stack(self) -> Stack:
        assert self.stack is not None, "start() first"
        return self.stack

    @property
    def store(self) -> JobStore:
        return JobStore(self.client("dynamodb"), self.require_stack.ref("JobsTable"))

    @property
    def queue(self) -> JobQueue:
        return JobQueue(self.client("sqs"), self.require_stack.ref("JobsQueue"))

    @property
    def dlq(self) -> JobQueue:
        return JobQueue(self.client("sqs"), self.require_stack.ref("JobsDeadLetterQueue"))

    @property
    def bucket(self) -> str:
        return self.require_stack.ref("DataBucket")

    def job(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def read_result(self, uri: str) -> Any:
        key = uri.split(f"s3://{self.bucket}/", 1)[1]
        body = self.client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return json.loads(body)

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        return {"jobs": self.queue.approximate_counts(), "dlq": self.dlq.approximate_counts()}

    # -- the enqueue function ------------------------------------------------------------------

    @property
    def enqueue(self) -> ModuleType:
        if self._enqueue is None:
            self._enqueue = load_handler_module(
                "enqueue.app", self.require_stack, "EnqueueFunction", self.handler_env
            )
        return self._enqueue

    def call_api(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        path_parameters = None
        if method == "GET" and path.startswith("/jobs/"):
            path_parameters = {"job_id": path.removeprefix("/jobs/")}
        event = http_event(
            method, path, body=body, headers=headers, path_parameters=path_parameters
        )
        response = self.enqueue.handler(event, LambdaContext(function_name="EnqueueFunction"))
        return int(response["statusCode"]), json.loads(response.get("body") or "{}")

    @staticmethod
    def job_id_for(idempotency_key: str) -> str:
        """The job an Idempotency-Key names for devstack's caller (the sample events' IAM signer:
        keys are scoped to the caller)."""
        context = load_event("enqueue_submit")["requestContext"]
        caller = AccessPolicy(AuthMode.IAM).caller(context)
        return job_id_for_idempotency_key(idempotency_key, caller.principal)

    def submit(
        self, request: Any, *, idempotency_key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        return self.call_api("POST", "/jobs", body=request, headers=headers)

    # -- the stranded-job sweep ----------------------------------------------------------------

    def sweep(self, stranded_after_s: int = 0) -> dict[str, Any]:
        """Run the sweep function once, as its schedule would, treating jobs unsent for longer
        than ``stranded_after_s`` as stranded (the template's default waits 2 minutes)."""
        # A module is loaded once per process (a reload replaces it in place): one threshold
        # at a time.
        if self._sweeper is None or self._sweeper[0] != stranded_after_s:
            env = {**self.handler_env, "STRANDED_AFTER_S": str(stranded_after_s)}
            module = load_handler_module("sweep.app", self.require_stack, "SweepFunction", env)
            self._sweeper = (stranded_after_s, module)
        result: dict[str, Any] = self._sweeper[1].handler(
            load_event("sweep_scheduled"), LambdaContext(function_name="SweepFunction")
        )
        return result

    # -- workers -----------------------------------------------------------------------------

    def fault_proxy(self, *, seed: int | None = None) -> FaultProxy:
        """A started FaultProxy in front of this stack's moto server, stopped by stop(). A worker
        goes behind it with ``start_worker(AWS_ENDPOINT_URL=proxy.endpoint_url)``."""
        proxy = FaultProxy(self.server.endpoint_url, seed=seed).start()
        self.proxies.append(proxy)
        return proxy

    def start_worker(self, name: str | None = None, **env_overrides: str) -> WorkerProcess:
        name = name or f"worker-{len(self.workers) + 1}"
        env = worker_env(self.require_stack, self.server.env(), **env_overrides)
        worker = WorkerProcess(env, self.workdir / f"{name}.log", name=name).start()
        self.workers.append(worker)
        return worker
