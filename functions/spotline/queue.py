"""The SQS side of the contract: sending, receiving and settling job messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spotline.contract import JobMessage


class QueueError(RuntimeError):
    """An SQS call failed."""


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    attributes: dict[str, Any]
    message_attributes: dict[str, Any]

    @classmethod
    def from_sqs(cls, raw: dict[str, Any]) -> ReceivedMessage:
        attributes = raw.get("Attributes", {})
        return cls(
            message_id=raw["MessageId"],
            receipt_handle=raw["ReceiptHandle"],
            body=raw.get("Body", ""),
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
            attributes=attributes,
            message_attributes=raw.get("MessageAttributes", {}),
        )


def string_attributes(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    """SQS message attributes from plain values (numbers as Number, the rest as String)."""
    out: dict[str, dict[str, str]] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            out[key] = {"DataType": "String", "StringValue": str(value)[:1024] or "-"}
        else:
            out[key] = {"DataType": "Number", "StringValue": str(value)}
    return out


class JobQueue:
    """One SQS queue. Takes its client so tests pass moto's and production the real one."""

    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        self.url = url

    def send(self, message: JobMessage, *, delay_s: int = 0) -> str:
        return self.send_body(message.to_json(), delay_s=delay_s)

    def send_body(
        self, body: str, *, delay_s: int = 0, attributes: dict[str, Any] | None = None
    ) -> str:
        kwargs: dict[str, Any] = {"QueueUrl": self.url, "MessageBody": body}
        if delay_s:
            kwargs["DelaySeconds"] = min(max(int(delay_s), 0), 900)
        if attributes:
            kwargs["MessageAttributes"] = string_attributes(attributes)
        try:
            return str(self.client.send_message(**kwargs)["MessageId"])
        except (ClientError, BotoCoreError) as exc:  # throttled, refused or unreachable
            raise QueueError(f"send_message failed: {exc}") from exc

    def receive(
        self, *, max_messages: int = 1, wait_s: int = 20, visibility_s: int | None = None
    ) -> list[ReceivedMessage]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max(1, min(max_messages, 10)),
            "WaitTimeSeconds": wait_s,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
            "MessageAttributeNames": ["All"],
        }
        if visibility_s is not None:
            kwargs["VisibilityTimeout"] = visibility_s
        try:
            response = self.client.receive_message(**kwargs)
        except (ClientError, BotoCoreError) as exc:  # throttled, refused or unreachable
            raise QueueError(f"receive_message failed: {exc}") from exc
        return [ReceivedMessage.from_sqs(raw) for raw in response.get("Messages", [])]

    def delete(self, receipt_handle: str) -> None:
        try:
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt_handle)
        except (ClientError, BotoCoreError) as exc:  # throttled, refused or unreachable
            raise QueueError(f"delete_message failed: {exc}") from exc

    def delete_batch(self, receipt_handles: list[str]) -> list[str]:
        """Delete up to 10 messages in one call; returns the receipt handles that failed."""
        if len(receipt_handles) > 10:
            raise ValueError("DeleteMessageBatch takes at most 10 entries")
        if not receipt_handles:
            return []
        entries = [
            {"Id": str(index), "ReceiptHandle": handle}
            for index, handle in enumerate(receipt_handles)
        ]
        try:
            response = self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:  # throttled, refused or unreachable
            raise QueueError(f"delete_message_batch failed: {exc}") from exc
        return [receipt_handles[int(entry["Id"])] for entry in response.get("Failed", [])]

    def change_visibility(self, receipt_handle: str, visibility_s: int) -> None:
        try:
            self.client.change_message_visibility(
                QueueUrl=self.url,
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=max(0, min(int(visibility_s), 43200)),
            )
        except (ClientError, BotoCoreError) as exc:  # throttled, refused or unreachable
            raise QueueError(f"change_message_visibility failed: {exc}") from exc

    def approximate_counts(self) -> tuple[int, int]:
        """(visible, in flight) messages."""
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        return (
            int(attrs.get("ApproximateNumberOfMessages", 0)),
            int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )
