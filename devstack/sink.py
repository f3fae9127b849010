"""A local webhook sink on 127.0.0.1 standing in for Slack, Discord and users' callbacks.

It records every request and answers each path with a scripted list of statuses (the last one
repeats), so tests and drills can make a channel fail, recover, or rate-limit.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookSink:
    def __init__(self) -> None:
        self.script: dict[str, list[int]] = {}
        self.received: list[Received] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = sink._next_status(self.path)
                with sink._lock:
                    sink.received.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _next_status(self, path: str) -> int:
        with self._lock:
            statuses = self.script.get(path)
            if not statuses:
                return 200
            return statuses.pop(0) if len(statuses) > 1 else statuses[0]

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
