"""A proxy in front of moto server that makes chosen AWS calls fail the way AWS fails them.

A real ``python -m gpu_worker`` takes its endpoint from ``AWS_ENDPOINT_URL``; pointed here, every
request is forwarded to moto server unchanged, except those that match an active rule: those get
a throttle, a 500 or 503 in the service's own wire format (so botocore classifies and retries
them as it would AWS's), a connection reset, or a delay. Rules are armed with ``inject()``:

    with FaultProxy(server.endpoint_url) as proxy:
        proxy.inject("s3", "PutObject", fault="503", key_contains="checkpoints/", times=2)
        devstack.start_worker(AWS_ENDPOINT_URL=proxy.endpoint_url)

Faults: ``"500"``, ``"503"``, ``"throttle"``, ``"reset"`` and ``"slow:<seconds>"``.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import json
import random
import re
import socket
import struct
import sys
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ANY = "*"
# Names a client may use for the proxy itself; anything before them in a Host header is an S3
# bucket addressed virtual-host style.
_LOCAL_NAMES = ("127.0.0.1", "localhost")
# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection; Expect too, since the proxy has
# already answered the client's 100-continue and holds the whole body.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_TARGET_PREFIXES = {"AmazonSQS": "sqs", "DynamoDB_20120810": "dynamodb"}


class Protocol(enum.StrEnum):
    JSON = "json"  # X-Amz-Target: SQS and DynamoDB in today's botocore
    QUERY = "query"  # Action=... form bodies: SQS in botocore before 1.31.64
    REST_XML = "rest-xml"  # S3
    OTHER = "other"  # rpc-v2-cbor (CloudWatch) and whatever else passes through


@dataclass(frozen=True)
class AwsRequest:
    """What the rules see of one request."""

    service: str
    operation: str
    protocol: Protocol
    key: str = ""  # the S3 object key; empty elsewhere
    body: bytes = b""

    def contains(self, text: str) -> bool:
        if self.service == "s3":
            return text in self.key
        return text.encode() in self.body


class FaultKind(enum.StrEnum):
    ERROR_500 = "500"
    ERROR_503 = "503"
    THROTTLE = "throttle"
    RESET = "reset"
    SLOW = "slow"


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    delay_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        name, _, argument = text.partition(":")
        try:
            kind = FaultKind(name)
        except ValueError:
            raise ValueError(
                f"unknown fault {text!r}: 500, 503, throttle, reset, slow:<s>"
            ) from None
        if kind is FaultKind.SLOW:
            delay_s = float(argument)
            if delay_s < 0:
                raise ValueError(f"negative delay in {text!r}")
            return cls(kind, delay_s)
        if argument:
            raise ValueError(f"fault {name!r} takes no argument: {text!r}")
        return cls(kind)


@dataclass
class FaultRule:
    """One armed fault. ``remaining`` counts down (None: until cleared); ``fired`` counts up.
    Both change under the proxy's lock."""

    service: str
    operation: str
    fault: Fault
    remaining: int | None = 1
    probability: float = 1.0
    key_contains: str | None = None
    fired: int = 0

    def matches(self, request: AwsRequest) -> bool:
        return (
            self.service in (ANY, request.service)
            and self.operation in (ANY, request.operation)
            and (self.key_contains is None or request.contains(self.key_contains))
        )

    @property
    def spent(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


# -- what a request is -------------------------------------------------------------------------


def classify(method: str, target: str, headers: Message, body: bytes) -> AwsRequest:
    """Service and operation of a request as botocore sends it; unknown parts are ``""``."""
    path, _, query = target.partition("?")
    amz_target = headers.get("X-Amz-Target", "")
    scope = _CREDENTIAL_SCOPE.search(headers.get("Authorization", ""))
    service = scope.group(1) if scope else ""
    if amz_target:
        prefix, _, operation = amz_target.partition(".")
        return AwsRequest(
            service or _TARGET_PREFIXES.get(prefix, ""), operation, Protocol.JSON, body=body
        )
    content_type = headers.get("Content-Type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        form = parse_qs(body.decode("utf-8", "replace")) | parse_qs(query)
        if "Action" in form:
            return AwsRequest(service, form["Action"][0], Protocol.QUERY, body=body)
    if "/operation/" in path and content_type == "application/cbor":
        return AwsRequest(service, path.rsplit("/", 1)[-1], Protocol.OTHER, body=body)
    if service in ("s3", "") and path != "/":
        return _classify_s3(method, path, query, headers, body)
    return AwsRequest(service, method, Protocol.OTHER, body=body)


def _classify_s3(method: str, path: str, query: str, headers: Message, body: bytes) -> AwsRequest:
    _bucket, _, key = unquote(path).lstrip("/").partition("/")
    params = parse_qs(query, keep_blank_values=True)
    operation = method
    if "x-id" in params:  # newer botocore names the operation itself for some calls
        operation = params["x-id"][0]
    elif key and not ({"uploadId", "partNumber", "uploads", "tagging", "acl"} & params.keys()):
        if method == "PUT":
            operation = "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
        else:
            operation = {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
                method, method
            )
    return AwsRequest("s3", operation, Protocol.REST_XML, key=key, body=body)


# -- how AWS answers a fault -------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorReply:
    status: int
    code: str
    fault_type: str  # Sender or Receiver, as the query protocol names who is to blame
    message: str


_INTERNAL = "We encountered an internal error. Please try again."
_UNAVAILABLE = "Service unavailable"
_SLOW_DOWN = ErrorReply(503, "SlowDown", "Receiver", "Please reduce your request rate.")
_ERRORS: dict[str, dict[FaultKind, ErrorReply]] = {
    # S3 has no throttle of its own: it answers SlowDown 503 to too many requests.
    "s3": {
        FaultKind.ERROR_500: ErrorReply(500, "InternalError", "Receiver", _INTERNAL),
        FaultKind.ERROR_503: _SLOW_DOWN,
        FaultKind.THROTTLE: _SLOW_DOWN,
    },
    # SQS's model names RequestThrottled (its query-era code, sent in x-amzn-query-error too).
    "sqs": {
        FaultKind.ERROR_500: ErrorReply(500, "InternalError", "Receiver", _INTERNAL),
        FaultKind.ERROR_503: ErrorReply(503, "ServiceUnavailable", "Receiver", _UNAVAILABLE),
        FaultKind.THROTTLE: ErrorReply(400, "RequestThrottled", "Sender", "Rate exceeded"),
    },
    "dynamodb": {
        FaultKind.ERROR_500: ErrorReply(500, "InternalServerError", "Receiver", _INTERNAL),
        FaultKind.ERROR_503: ErrorReply(503, "ServiceUnavailable", "Receiver", _UNAVAILABLE),
        FaultKind.THROTTLE: ErrorReply(
            400, "ProvisionedThroughputExceededException", "Sender", "Throughput exceeded"
        ),
    },
}
_DEFAULT_ERRORS = {
    FaultKind.ERROR_500: ErrorReply(500, "InternalFailure", "Receiver", "Internal failure"),
    FaultKind.ERROR_503: ErrorReply(503, "ServiceUnavailable", "Receiver", "Service unavailable"),
    FaultKind.THROTTLE: ErrorReply(400, "ThrottlingException", "Sender", "Rate exceeded"),
}
# The namespace in a JSON error's __type; botocore keeps what follows the '#'.
_JSON_NAMESPACES = {"sqs": "com.amazonaws.sqs", "dynamodb": "com.amazonaws.dynamodb.v20120810"}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def error_reply(request: AwsRequest, kind: FaultKind, method: str) -> Reply:
    error = _ERRORS.get(request.service, _DEFAULT_ERRORS)[kind]
    request_id = str(uuid.uuid4())
    if request.protocol is Protocol.JSON:
        namespace = _JSON_NAMESPACES.get(request.service, "com.amazonaws")
        body = json.dumps({"__type": f"{namespace}#{error.code}", "message": error.message})
        headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-RequestId", request_id)]
        if request.service == "sqs":
            # SQS is "awsQueryCompatible": botocore takes the code from this header.
            headers.append(("x-amzn-query-error", f"{error.code};{error.fault_type}"))
        return Reply(error.status, headers, body.encode())
    if request.protocol is Protocol.REST_XML:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{error.code}</Code><Message>{error.message}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>"
        )
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
        # A HEAD error has no body: botocore reads the status alone, as it does from S3.
        return Reply(error.status, headers, b"" if method == "HEAD" else body.encode())
    body = (
        f"<ErrorResponse><Error><Type>{error.fault_type}</Type><Code>{error.code}</Code>"
        f"<Message>{error.message}</Message><Detail/></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return Reply(error.status, [("Content-Type", "text/xml")], body.encode())


def bad_gateway(reason: str) -> Reply:
    return Reply(502, [("Content-Type", "text/plain")], f"upstream: {reason}".encode())


# -- the rules and the counts ------------------------------------------------------------------


class Rulebook:
    """Armed rules and what happened, shared by every handler thread."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        # Seeded so that a chaos run with probabilistic rules replays.
        self._random = random.Random(seed)
        self._seen: Counter[tuple[str, str]] = Counter()
        self._injected: Counter[tuple[str, str]] = Counter()

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def decide(self, request: AwsRequest) -> Fault | None:
        """Count the request; return the fault of the first armed rule that fires on it."""
        with self._lock:
            self._seen[request.service, request.operation] += 1
            for rule in self._rules:
                if rule.spent or not rule.matches(request):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule.fired += 1
                self._injected[request.service, request.operation] += 1
                return rule.fault
        return None

    def seen(self, service: str, operation: str) -> int:
        return self._total(self._seen, service, operation)

    def injected(self, service: str | None, operation: str | None) -> int:
        return self._total(self._injected, service or ANY, operation or ANY)

    def _total(self, counts: Counter[tuple[str, str]], service: str, operation: str) -> int:
        with self._lock:
            return sum(
                count
                for (seen_service, seen_operation), count in counts.items()
                if service in (ANY, seen_service) and operation in (ANY, seen_operation)
            )


# -- the HTTP side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    timeout_s: float

    @classmethod
    def parse(cls, url: str, timeout_s: float) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {url!r}")
        return cls(parts.hostname, parts.port or 80, timeout_s)

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Reply:
        # A connection per request: moto server is local, and nothing stale is ever reused.
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders(body or None)
            response = connection.getresponse()
            data = response.read()  # http.client knows a HEAD response has no body
            return Reply(response.status, response.getheaders(), data)
        except (OSError, http.client.HTTPException) as exc:
            # A stopped or hung moto server must not hang the client: AWS's own 502.
            return bad_gateway(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    # Several workers open their pools at once when a drill starts; 5 (the default) drops SYNs.
    request_queue_size = 64

    def __init__(self, rules: Rulebook, upstream: Upstream) -> None:
        self.rules = rules
        self.upstream = upstream
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def opened(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections, so stop() ends them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-exchange is routine here (the reset fault does it on
        # purpose); anything else still deserves the traceback.
        error = sys.exc_info()[1]
        # http.server flushes the reply it thinks it owes after a reset closed the stream.
        closed = isinstance(error, ValueError) and "closed file" in str(error)
        if not isinstance(error, ConnectionError | TimeoutError) and not closed:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: botocore reuses its connections
    # The status line and headers leave in one write, the body in another: with Nagle on, the
    # body waits for the client's delayed ACK (40 ms on Linux) on every call.
    disable_nagle_algorithm = True
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self.server.opened(self.connection)

    def finish(self) -> None:
        self.server.closed(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per AWS call on stderr drowns a test's output

    def _serve(self) -> None:
        try:
            body, trailers = self._read_body()
        except ValueError:  # a length or chunk size that is not a number
            self.close_connection = True
            self._reply(Reply(400, [("Content-Type", "text/plain")], b"malformed body framing"))
            return
        if body is None:
            self.close_connection = True  # the client left mid-body: nothing to answer
            return
        target, host = self._upstream_target()
        request = classify(self.command, target, self.headers, body)
        fault = self.server.rules.decide(request)
        if fault is None:
            self._reply(self._forward(target, host, body, trailers))
        elif fault.kind is FaultKind.RESET:
            self._reset()
        elif fault.kind is FaultKind.SLOW:
            if self.server.stopping.wait(fault.delay_s):
                self.close_connection = True  # stopping: the client sees the connection close
            else:
                self._reply(self._forward(target, host, body, trailers))
        else:
            self._reply(error_reply(request, fault.kind, self.command))

    def _forward(
        self, target: str, host: str, body: bytes, trailers: list[tuple[str, str]] | None
    ) -> Reply:
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() not in ("host", "content-length")
        ]
        headers.append(("Host", host))
        headers.extend(trailers or [])
        if body or "Content-Length" in self.headers or trailers is not None:
            headers.append(("Content-Length", str(len(body))))
        return self.server.upstream.forward(self.command, target, headers, body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _serve

    def _read_body(self) -> tuple[bytes | None, list[tuple[str, str]] | None]:
        """The whole body, and the trailer fields if it came chunked (None if it did not)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return (body if len(body) == length else None), None

    def _read_chunked(self) -> tuple[bytes | None, list[tuple[str, str]]]:
        # Forwarded with a Content-Length instead: the bytes inside (an aws-chunked stream
        # with its own checksum trailer, say) travel unchanged; HTTP trailers become headers.
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return None, []
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size or not self.rfile.readline(65537):
                return None, []
            chunks.append(chunk)
        trailers: list[tuple[str, str]] = []
        while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            trailers.append((name.strip(), value.strip()))
        return b"".join(chunks), trailers

    def _upstream_target(self) -> tuple[str, str]:
        """Path and Host for moto server; a virtual-host-style bucket becomes path style."""
        target = self.path
        hostname = self.headers.get("Host", "").rsplit(":", 1)[0]
        for local in _LOCAL_NAMES:
            if hostname.endswith("." + local):
                target = "/" + hostname.removesuffix("." + local) + target
                break
        return target, self.server.upstream.netloc

    def _reply(self, reply: Reply) -> None:
        try:
            self.send_response_only(reply.status)
            for name, value in reply.headers:
                if name.lower() in _HOP_BY_HOP:
                    continue
                if name.lower() == "content-length" and self.command != "HEAD":
                    continue  # recomputed below: the body is whole, whatever framing it came in
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD" and reply.body:
                self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away; the next one is unaffected

    def _reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send RST, with no response at all."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The socket's file objects hold its descriptor open until they close too.
            self.rfile.close()
            self.wfile.close()
            self.connection.close()


# -- the public face ---------------------------------------------------------------------------


class FaultProxy:
    """An HTTP proxy on a free 127.0.0.1 port that forwards to ``upstream_url`` (moto server)
    and injects the armed faults. Started by whoever uses it, stopped by them."""

    def __init__(
        self, upstream_url: str, *, seed: int | None = None, upstream_timeout_s: float = 60.0
    ) -> None:
        # 60 s: above SQS's longest long poll (20 s), below a test's patience.
        self.upstream_url = upstream_url
        self._upstream = Upstream.parse(upstream_url, upstream_timeout_s)
        self._rules = Rulebook(seed)
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        self._server = _ProxyServer(self._rules, self._upstream)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fault-proxy-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """``AWS_ENDPOINT_URL`` for a process that should talk to AWS through this proxy."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url}

    def inject(
        self,
        service: str,
        operation: str,
        *,
        fault: str = "500",
        times: int | None = 1,
        probability: float = 1.0,
        key_contains: str | None = None,
    ) -> FaultRule:
        """Arm a fault for ``times`` matching requests (None: until ``clear()``), each hit with
        ``probability``.

        ``service`` is the name the request is signed for: "sqs", "dynamodb", "s3" (and
        "monitoring" for CloudWatch, "autoscaling"); ``operation`` the API name ("ReceiveMessage",
        "DeleteMessageBatch", "UpdateItem"; for S3 "PutObject", "GetObject", "HeadObject",
        "DeleteObject", "CopyObject", any other S3 request its HTTP method); "*" matches any.
        ``key_contains`` narrows the rule to S3 keys, or SQS/DynamoDB request bodies, holding
        that text."""
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None for unlimited), not {times}")
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], not {probability}")
        rule = FaultRule(service, operation, Fault.parse(fault), times, probability, key_contains)
        return self._rules.add(rule)

    def remove(self, rule: FaultRule) -> None:
        self._rules.remove(rule)

    def clear(self) -> None:
        self._rules.clear()

    def seen(self, service: str, operation: str) -> int:
        """Requests of that kind (``"*"`` matches any) forwarded or faulted so far."""
        return self._rules.seen(service, operation)

    def injected(self, service: str | None = None, operation: str | None = None) -> int:
        """Faults injected so far, on that kind of request (None or ``"*"``: any)."""
        return self._rules.injected(service, operation)
