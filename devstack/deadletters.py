"""Lambda's SQS event source for the DLQ, on this machine: DLQ messages -> the real handler.

As AWS does it: receive a batch (with system and message attributes), wait up to the batching
window for a fuller batch, build the event records in AWS's shape (``sam local generate-event
sqs receive-message``), invoke the handler, delete only the records not reported in
``batchItemFailures`` and leave the failed ones to come back after their visibility timeout.
A handler that raises fails the whole batch, as an invocation error does on AWS. The one
liberty taken: the visibility timeout is seconds, not the template's minutes, so a retry is seen
within a demo.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from aws_lambda_powertools.utilities import parameters

from dead_letter.callbacks import TEST_MODE_ENV
from devstack.lambdas import LambdaContext, load_handler_module
from devstack.stack import Devstack
from spotline.standard_webhooks import NoticeSigner

FUNCTION = "DeadLetterFunction"
QUEUE = "JobsDeadLetterQueue"


def event_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS event record from a ReceiveMessage result, as Lambda builds it."""
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


@dataclass
class RouterStats:
    invocations: int = 0
    records: int = 0
    failed_records: int = 0
    errors: list[str] = field(default_factory=list)


class DeadLetterRouter:
    """Polls the stack's DLQ in a background thread and invokes ``dead_letter.app.handler``."""

    def __init__(
        self,
        dev: Devstack,
        *,
        handler_env: dict[str, str] | None = None,
        batch_size: int | None = None,
        window_s: float | None = None,
        visibility_s: int = 2,
    ) -> None:
        stack = dev.require_stack
        self.dev = dev
        self.queue_url = stack.ref(QUEUE)
        self.queue_arn = stack.attr(QUEUE, "Arn")
        self.region = stack.region
        self.batch_size = int(batch_size or stack.parameters["DeadLetterBatchSize"])
        window = stack.parameters["DeadLetterBatchWindowSeconds"] if window_s is None else window_s
        self.window_s = min(float(window), 1.0)  # the demo is short: never gather for long
        self.visibility_s = visibility_s
        self.handler_env = {**dev.handler_env, **(handler_env or {})}
        self.stats = RouterStats()
        self._sqs = dev.client("sqs")
        self._module: ModuleType | None = None
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlq-router", daemon=True)

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            self._module = load_handler_module(
                "dead_letter.app", self.dev.require_stack, FUNCTION, self.handler_env
            )
        return self._module

    def start(self) -> DeadLetterRouter:
        # A fresh container: no webhook URL cached from an earlier stack on the same server.
        parameters.clear_caches()
        _ = self.module  # import (cold start) before the thread, so config errors surface here
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def __enter__(self) -> DeadLetterRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def idle(self) -> bool:
        """True after a poll found nothing to do."""
        return self._idle.is_set()

    def _receive(self, max_messages: int, wait_s: int) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=self.visibility_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def poll_once(self, wait_s: int = 1) -> int:
        """One batch: receive, invoke, settle. Returns the number of records handled."""
        batch = self._receive(self.batch_size, wait_s)
        if not batch:
            self._idle.set()
            return 0
        self._idle.clear()
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.batch_size and time.monotonic() < deadline:
            more = self._receive(self.batch_size - len(batch), 0)
            if not more:
                break
            batch.extend(more)
        self.invoke(batch)
        return len(batch)

    def invoke(self, batch: list[dict[str, Any]]) -> set[str]:
        """Invoke the handler with ``batch``; delete what succeeded; return the failed ids."""
        event = {"Records": [event_record(m, self.queue_arn, self.region) for m in batch]}
        self.stats.invocations += 1
        self.stats.records += len(batch)
        ids = {m["MessageId"] for m in batch}
        try:
            response = self.module.handler(event, LambdaContext(function_name=FUNCTION))
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        except Exception as exc:  # noqa: BLE001 - an invocation error fails the whole batch
            self.stats.errors.append(f"{type(exc).__name__}: {exc}")
            failed = ids
        self.stats.failed_records += len(failed & ids)
        done = [m for m in batch if m["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]}
                    for index, m in enumerate(done)
                ],
            )
        return failed & ids

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - keep routing; the drill reports errors
                self.stats.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.5)


def store_secret(client_for: Callable[[str], Any], reference: str, value: str) -> None:
    """Put ``value`` where a reference (``ssm:/path`` or ``secretsmanager:name``) points."""
    source, _, name = reference.partition(":")
    if source == "ssm":
        client_for("ssm").put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
        return
    if source != "secretsmanager":
        raise ValueError(f"not a secret reference: {reference!r}")
    secrets = client_for("secretsmanager")
    try:
        secrets.create_secret(Name=name, SecretString=value)
    except secrets.exceptions.ResourceExistsException:
        secrets.put_secret_value(SecretId=name, SecretString=value)


def configure_notifications(
    dev: Devstack, sink_url: str, signing_key: str, client_for: Callable[[str], Any] | None = None
) -> dict[str, str]:
    """Put the sink's URLs and the notice signing key (a ``whsk_`` secret key) where the
    template's parameters say the function reads them (SSM SecureString / Secrets Manager), and
    return the handler environment that lets callbacks reach the local sink, with the key's
    public half as the stack's NoticePublicKey (a deploy requires one)."""
    parameters_ = dev.require_stack.parameters
    client_for = client_for or dev.client
    store_secret(client_for, parameters_["DeadLetterSlackWebhookSecret"], sink_url + "/slack")
    store_secret(client_for, parameters_["DeadLetterDiscordWebhookSecret"], sink_url + "/discord")
    store_secret(client_for, parameters_["NoticeSigningKeySecret"], signing_key)
    public_key = NoticeSigner.from_secret(signing_key).public_key
    return {TEST_MODE_ENV: "true", "NOTICE_PUBLIC_KEY": public_key}
