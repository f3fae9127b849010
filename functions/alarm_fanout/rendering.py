"""One alert per notice, rendered for chat (Slack blocks and Discord embeds come from
:mod:`spotline.alerts`) and for email."""

from __future__ import annotations

from datetime import UTC, datetime

from alarm_fanout.alarm_shapes import RAW_EXCERPT_CHARS, AlarmNotice, AlarmState, Unreadable
from alarm_fanout.child_notices import CHILD_NOTICE_SEVERITY, KIND_MEANING, ChildFellOver
from alarm_fanout.delivery_memory import FlapDecision
from spotline.alerts import Alert, Severity

# -- rendering -------------------------------------------------------------------------------


def alert_severity(notice: AlarmNotice, severity_tag: str | None) -> Severity:
    """Colour by state: resolved is green; ALARM is red unless the alarm is tagged lower."""
    if notice.resolved:
        return Severity.RESOLVED
    if notice.new_state == AlarmState.INSUFFICIENT_DATA:
        return Severity.INFO
    tag = (severity_tag or "").lower()
    if tag in (Severity.WARNING, Severity.INFO):
        return Severity(tag)
    return Severity.CRITICAL


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def notice_alert(
    notice: AlarmNotice, *, severity_tag: str | None = None, flapping: FlapDecision | None = None
) -> Alert:
    """The alert for one transition (or the flapping summary that stands for several)."""
    arrow = f"{notice.old_state} → {notice.new_state}"
    if flapping is not None and flapping.kind == FlapDecision.SUMMARY:
        title = f"Flapping: {notice.name}"
        text = (
            f"{flapping.changes} state changes in the last {flapping.window_s // 60} min; now "
            f"{notice.new_state}. Further changes are held back until it has been quiet for "
            f"{flapping.window_s // 60} min; a change into ALARM is always posted."
        )
    else:
        title = (
            f"Resolved: {notice.name}" if notice.resolved else f"{notice.new_state}: {notice.name}"
        )
        text = notice.reason
        first = _first_line(notice.description)
        if first and not notice.resolved:
            text = f"{first}\n{notice.reason}".strip()
    fields = [("State", arrow)]
    if notice.metric:
        fields.append(("Metric", notice.metric))
    if notice.threshold:
        fields.append(("Threshold", notice.threshold))
    fields += [
        ("Region", notice.region or "-"),
        ("Account", notice.account or "-"),
        ("Time", notice.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    if severity_tag:
        fields.append(("Severity", severity_tag))
    return Alert(
        title=title,
        text=text or "(no reason given)",
        severity=alert_severity(notice, severity_tag),
        fields=tuple(fields),
        link=notice.console_link,
        dedupe_key=notice.transition_key,
        extra={
            "alarm": {
                "name": notice.name,
                "old_state": notice.old_state,
                "new_state": notice.new_state,
                "resolved": notice.resolved,
                "reason": notice.reason,
                "metric": notice.metric,
                "threshold": notice.threshold,
                "region": notice.region,
                "account": notice.account,
                "time": notice.time.astimezone(UTC).isoformat(timespec="milliseconds"),
                "arn": notice.arn,
                "composite": notice.composite,
                "flapping": flapping is not None and flapping.kind == FlapDecision.SUMMARY,
            }
        },
    )


def _code_span(text: str) -> str:
    """``text`` as one inline code span in Slack's and Discord's markdown."""
    return "`" + text.replace("`", "'") + "`"


def child_alert(
    notice: ChildFellOver, *, suppressed: int = 0, suppressed_since: datetime | None = None
) -> Alert:
    """The notice "Analysis child fell over: OOM on job ID: analyzer, attempt N of M, next:
    retrying in S s", what it means, its peak memory and error text, with the instance, the time
    and a link to the line in the worker's log stream. ``suppressed`` notices like it were held
    back by the flood control since ``suppressed_since``: the notice says so."""
    kind, job = notice.error_kind, notice.job_id
    where = [notice.analyzer or "analyzer unknown"]
    if notice.attempt is not None:
        where.append(f"attempt {notice.attempt_text}")
    where.append(f"next: {notice.next_step}")
    lines = [", ".join(where)]
    meaning = KIND_MEANING.get(kind, "")
    ran = f"after {notice.duration_s:g} s" if notice.duration_s is not None else ""
    memory = f"peak memory {notice.memory_text}" if notice.memory_text else ""
    detail = "; ".join(part for part in (meaning, ran, memory, notice.reason) if part)
    if detail:
        lines.append(detail)
    if notice.error_message:
        lines.append(_code_span(notice.error_message))
    if suppressed:
        since = (
            f" since {suppressed_since.astimezone(UTC).strftime('%H:%M')} UTC"
            if suppressed_since is not None
            else ""
        )
        lines.append(f"… and {suppressed} more like this were suppressed{since}")
    fields = [
        ("Job", job),
        ("Failure", kind),
        ("Analyzer", notice.analyzer or "-"),
        ("Attempt", notice.attempt_text),
        ("Next", notice.next_step),
        ("Instance", notice.instance or "-"),
        ("Time", notice.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Region", notice.region or "-"),
        ("Account", notice.account or "-"),
    ]
    if notice.memory_text:
        fields.append(("Peak memory", notice.memory_text))  # Slack shows 10 fields at most
    return Alert(
        title=f"Analysis child fell over: {kind} on job {job}",
        text="\n".join(lines),
        severity=CHILD_NOTICE_SEVERITY,
        fields=tuple(fields),
        link=notice.console_link,
        dedupe_key=notice.transition_key,
        extra={
            "child_fell_over": {
                "name": notice.name,
                "job_id": job,
                "error_kind": kind,
                "analyzer": notice.analyzer,
                "attempt": notice.attempt,
                "max_attempts": notice.max_attempts,
                "action": notice.action,
                "next": notice.next_step,
                "reason": notice.reason,
                "duration_s": notice.duration_s,
                "backoff_s": notice.backoff_s,
                "peak_memory_bytes": notice.peak_memory_bytes,
                "memory_limit_bytes": notice.memory_limit_bytes,
                "error_message": notice.error_message,
                "instance": notice.instance,
                "log_group": notice.log_group,
                "log_event_id": notice.event_id,
                "time": notice.time.astimezone(UTC).isoformat(timespec="milliseconds"),
                "region": notice.region,
                "account": notice.account,
                "suppressed_before": suppressed,
                "suppressed_since": (
                    suppressed_since.astimezone(UTC).isoformat(timespec="seconds")
                    if suppressed_since is not None
                    else None
                ),
            }
        },
    )


def unreadable_alert(message: Unreadable) -> Alert:
    excerpt = message.raw[:RAW_EXCERPT_CHARS]
    if len(message.raw) > RAW_EXCERPT_CHARS:
        excerpt += " …"
    return Alert(
        title="Unreadable alarm notification",
        text="```" + excerpt.replace("```", "'''") + "```",
        severity=Severity.WARNING,
        fields=(("Problem", message.problem), ("Message id", message.ref or "-")),
        dedupe_key=message.transition_key,
        extra={"raw": excerpt},
    )


def render_email(alert: Alert) -> tuple[str, str]:
    """Subject (SNS: ASCII, one line, at most 100 characters) and plain-text body."""
    subject = alert.title.replace("→", "->").encode("ascii", "replace").decode("ascii")
    subject = " ".join(subject.split())[:100]
    lines = [alert.title, "", alert.text, ""]
    lines += [f"{name}: {value}" for name, value in alert.fields]
    if alert.link:
        lines += ["", alert.link]
    return subject, "\n".join(lines)
