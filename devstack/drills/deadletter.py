"""Dead letters are never silent: every dead-lettered job (this drill's and every other drill's)
produces exactly one alert per channel and, where it asked for one, one signed user notice.

The WebhookSink stands in for Slack, Discord and the user's callback; its URLs go into SSM and
Secrets Manager so the real handler reads them the real way; the DLQ router plays Lambda's SQS
event source.
"""

from __future__ import annotations

from devstack.deadletters import DeadLetterRouter, configure_notifications
from devstack.drills.base import Check, Drill, Expectation
from devstack.sink import Received, WebhookSink
from devstack.stack import Devstack
from spotline.contract import JobStatus
from spotline.jobstore import JobRecord, JobStore
from spotline.notified import CALLBACK, delivered_for
from spotline.standard_webhooks import generate_key_pair, verify

GARBAGE = "\x00not a job {{{ <!channel> "


def _mentions(received: list[Received], text: str) -> list[Received]:
    return [r for r in received if text in r.body.decode("utf-8", errors="replace")]


class DeadLetterDrill(Drill):
    name = "dead letters"

    def __init__(self) -> None:
        self.sink = WebhookSink()
        self.signing_key, self.public_key = generate_key_pair()
        self.router: DeadLetterRouter | None = None
        self.channels: list[str] = []
        self._checks: list[Check] = []

    def setup(self, dev: Devstack) -> None:
        self.sink.start()
        env = configure_notifications(dev, self.sink.url, self.signing_key)
        self.router = DeadLetterRouter(dev, handler_env=env).start()
        self.channels = [c.name for c in self.router.module.config.channels]

    def submit(self, dev: Devstack) -> list[Expectation]:
        callback = self.sink.url.replace("http://", "https://") + "/callback"
        missing = f"s3://{dev.bucket}/inputs/does-not-exist.json"
        expectations = []
        for label, url in (("missing input", callback), ("callback to 10.x", "https://10.9.8.7/")):
            request = {"analyzer": "echo", "input_uri": missing, "notify": {"callback_url": url}}
            status, body = dev.submit(request)
            self._checks.append(Check(f"submit {label}", status == 202, f"HTTP {status}"))
            if status == 202:
                expectations.append(
                    Expectation(body["job_id"], f"dead letter: {label}", JobStatus.DEAD_LETTERED)
                )
        # Not a job at all: the worker dead-letters it as it is; the alert shows its first bytes.
        dev.queue.send_body(GARBAGE)
        return expectations

    def _complete(self, record: JobRecord) -> bool:
        results = delivered_for(record)
        wanted = set(self.channels)
        if (record.request.get("notify") or {}).get("callback_url"):
            wanted.add(CALLBACK)
        return wanted <= results.keys()

    def done(self, dev: Devstack) -> bool:
        if dev.dlq.approximate_counts() != (0, 0):
            return False
        table = dev.require_stack.ref("JobsTable")
        if not all(
            self._complete(r) for r in JobStore(dev.client("dynamodb"), table).dead_lettered()
        ):
            return False
        return all(_mentions(self.sink.on(f"/{c}"), "Unparseable") for c in self.channels)

    def checks(self, dev: Devstack, records: dict[str, JobRecord]) -> list[Check]:
        checks = list(self._checks)
        alerts = {c: self.sink.on(f"/{c}") for c in self.channels}
        notices = self.sink.on("/callback")
        for record in records.values():
            if record.status != JobStatus.DEAD_LETTERED:
                continue
            short = record.job_id[:8]
            counts = {c: len(_mentions(alerts[c], record.job_id)) for c in self.channels}
            checks.append(
                Check(
                    f"{short} one alert per channel",
                    all(n == 1 for n in counts.values()) and bool(counts),
                    ", ".join(f"{c} {n}" for c, n in counts.items()),
                )
            )
            url = (record.request.get("notify") or {}).get("callback_url", "")
            if url.endswith("/callback"):
                mine = [n for n in notices if n.json().get("job_id") == record.job_id]
                signed = all(verify(self.public_key, n.headers, n.body) for n in mine)
                reason = mine[0].json().get("reason", "") if mine else ""
                checks.append(
                    Check(
                        f"{short} one signed user notice",
                        len(mine) == 1 and signed,
                        f"{len(mine)} notice(s), signature {'ok' if signed else 'BAD'}: {reason}",
                    )
                )
            elif url:
                said = delivered_for(record).get(CALLBACK, "")
                alerted = [r for c in self.channels for r in _mentions(alerts[c], record.job_id)]
                says_why = all("refused" in r.body.decode("utf-8") for r in alerted)
                checks.append(
                    Check(
                        f"{short} callback refused, alert says why",
                        said.startswith("refused") and says_why,
                        said[:80],
                    )
                )
        for channel in self.channels:
            garbage = _mentions(alerts[channel], "Unparseable")
            checks.append(
                Check(
                    f"garbage message: one {channel} alert",
                    len(garbage) == 1,
                    f"{len(garbage)} alert(s), body shown escaped",
                )
            )
        assert self.router is not None
        stats = self.router.stats
        checks.append(
            Check(
                "DLQ routed to the real handler",
                not stats.errors and stats.records > 0,
                f"{stats.invocations} invocations, {stats.records} records, "
                f"{stats.failed_records} retried"
                + (f"; {stats.errors[0]}" if stats.errors else ""),
            )
        )
        return checks

    def teardown(self, dev: Devstack) -> None:
        if self.router is not None:
            self.router.stop()
        self.sink.stop()
