"""Which channels an alarm goes to: by the alarm's name and its severity tag."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spotline.settings import MissingSetting

# -- routing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    channels: tuple[str, ...]
    prefix: str | None = None
    severity: str | None = None

    def matches(self, alarm_name: str, severity: str | None) -> bool:
        if self.prefix is not None and not alarm_name.startswith(self.prefix):
            return False
        return self.severity is None or self.severity == (severity or "").lower()


@dataclass(frozen=True)
class Routing:
    """Which channels get an alarm: every matching route's channels, else the default ones."""

    routes: tuple[Route, ...]
    default_channels: tuple[str, ...]

    def channels_for(self, alarm_name: str, severity: str | None) -> tuple[str, ...]:
        chosen: list[str] = []
        for route in self.routes:
            if route.matches(alarm_name, severity):
                chosen.extend(c for c in route.channels if c not in chosen)
        return tuple(chosen) or self.default_channels

    @property
    def fallback_channel(self) -> tuple[str, ...]:
        """Where unreadable messages go: the first default channel."""
        return self.default_channels[:1]

    @classmethod
    def parse(cls, routes: str, defaults: str, known: Iterable[str]) -> Routing:
        """``routes``: ``severity:critical=slack,email; prefix:spotline-prod-=discord``.

        A route names ``prefix:VALUE`` or ``severity:VALUE`` (or both, joined with ``&``) and the
        channels it sends to. Unknown channels fail here, at cold start, not on the first alarm.
        """
        known = tuple(known)
        parsed: list[Route] = []
        for text in (r.strip() for r in routes.split(";")):
            if not text:
                continue
            condition, sep, channel_text = text.rpartition("=")
            channels = tuple(c.strip().lower() for c in channel_text.split(",") if c.strip())
            if not sep or not condition or not channels:
                raise MissingSetting(f"ALARM_ROUTES: route {text!r} must be MATCH=channel,...")
            criteria: dict[str, str] = {}
            for part in condition.split("&"):
                kind, colon, value = part.strip().partition(":")
                if kind not in ("prefix", "severity") or not colon or not value:
                    raise MissingSetting(
                        f"ALARM_ROUTES: {part.strip()!r} must be prefix:VALUE or severity:VALUE"
                    )
                criteria[kind] = value if kind == "prefix" else value.lower()
            parsed.append(Route(channels, criteria.get("prefix"), criteria.get("severity")))
        default_channels = tuple(c.strip().lower() for c in defaults.split(",") if c.strip())
        default_channels = default_channels or known
        for channel in [c for r in parsed for c in r.channels] + list(default_channels):
            if channel not in known:
                raise MissingSetting(
                    f"alarm routing names channel {channel!r}, configured: {', '.join(known)}"
                )
        return cls(tuple(parsed), default_channels)
