"""User notices: SSRF guard, address pinning, Standard Webhooks signatures (verified by an
independent Ed25519 implementation and by the README's recipe), the deprecated HMAC header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook

from dead_letter.callbacks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackRefused,
    CallbackSender,
    address_refusal,
    build_notice,
    check_callback_url,
    encode_notice,
    notice_id,
    pinned_session,
    sign,
    verify,
)
from dead_letter.pinned_adapter import PinnedHostAdapter
from devstack.cfn import REPO_ROOT
from devstack.sink import Received, WebhookSink
from spotline import standard_webhooks
from spotline.contract import ErrorKind
from spotline.standard_webhooks import NoticeSigner, generate_key_pair
from spotline.webhooks import WebhookClient
from tests.unit.ed25519_reference import ed25519_verify, receiver_accepts

SIGNING_KEY, PUBLIC_KEY = generate_key_pair()
KEY = "legacy-shared-hmac-key"  # the deprecated X-Spotline-Signature's
SECRETS = {"secretsmanager:k": SIGNING_KEY, "secretsmanager:legacy": KEY}


def resolver_for(*addresses: str) -> Any:
    calls: list[str] = []

    def resolve(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in addresses
        ]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.7", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("2002:a9fe:a9fe::1", "embeds link-local"),
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and refusal.startswith(reason)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/x", "must use https"),
        ("ftp://hooks.example.com/x", "must use https"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https:///x", "no host"),
        ("https://[::1]/x", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://hooks.example.com:99999/x", "malformed"),
    ],
)
def test_bad_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(CallbackRefused, match=why):
        check_callback_url(url, resolver=resolver_for("93.184.215.14"))


def test_a_host_with_any_private_address_is_refused() -> None:
    resolve = resolver_for("93.184.215.14", "10.1.2.3")
    with pytest.raises(CallbackRefused, match=r"resolves to a private address 10\.1\.2\.3"):
        check_callback_url("https://hooks.example.com/x", resolver=resolve)


def test_a_host_that_does_not_resolve_is_refused() -> None:
    def fail(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(CallbackRefused, match="does not resolve"):
        check_callback_url("https://nowhere.example/x", resolver=fail)


def test_a_public_host_is_pinned_to_its_checked_address() -> None:
    target = check_callback_url(
        "https://hooks.example.com:8443/cb?x=1", resolver=resolver_for("2606:4700::1111")
    )
    assert target.url == "https://[2606:4700::1111]:8443/cb?x=1"
    assert target.host_header == "hooks.example.com:8443"


def test_test_mode_allows_only_127_0_0_1_and_is_off_by_default() -> None:
    with pytest.raises(CallbackRefused):
        check_callback_url("http://127.0.0.1:8000/cb")
    with pytest.raises(CallbackRefused, match="loopback"):
        check_callback_url("https://127.0.0.1:8000/cb")
    target = check_callback_url("https://127.0.0.1:8000/cb", test_mode=True)
    assert target.url == "http://127.0.0.1:8000/cb"
    with pytest.raises(CallbackRefused, match="private"):
        check_callback_url("https://10.0.0.1/cb", test_mode=True, resolver=resolver_for())
    with pytest.raises(CallbackRefused, match="must use https"):
        check_callback_url("http://localhost:8000/cb", test_mode=True)


def test_tls_names_the_host_while_the_connection_goes_to_the_checked_address() -> None:
    request = requests.Request(
        "POST", "https://93.184.215.14/cb", headers={"Host": "hooks.example.com"}, data=b"{}"
    ).prepare()
    host_params, pool_kwargs = PinnedHostAdapter().build_connection_pool_key_attributes(
        request, True
    )
    assert host_params["host"] == "93.184.215.14"
    assert pool_kwargs["server_hostname"] == "hooks.example.com"
    assert pool_kwargs["assert_hostname"] == "hooks.example.com"


class RecordingSession:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def post(self, url: str, **kwargs: Any) -> Any:
        self.calls.append({"url": url, **kwargs})
        response = requests.Response()
        response.status_code = 204
        return response


def test_dns_rebinding_cannot_redirect_the_connection() -> None:
    # First answer public, every later one private: the check and the connection use the first.
    answers = iter([["93.184.215.14"]] + [["10.0.0.5"]] * 5)
    calls = []

    def rebinding(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]

    session = RecordingSession()
    sender = CallbackSender(
        signing_key_ref="secretsmanager:k",
        public_key=PUBLIC_KEY,
        client=WebhookClient(session=session),  # type: ignore[arg-type]
        resolver=rebinding,
        resolve=SECRETS.__getitem__,
    )
    delivery = sender.send("https://hooks.example.com/cb", {"job_id": "j"})
    assert delivery.ok
    (call,) = session.calls
    assert call["url"] == "https://93.184.215.14/cb"
    assert call["headers"]["Host"] == "hooks.example.com"
    assert call["allow_redirects"] is False
    assert calls == ["hooks.example.com"]  # resolved once: nothing left for a rebinding to change


def sender_for(**overrides: Any) -> CallbackSender:
    settings: dict[str, Any] = {
        "signing_key_ref": "secretsmanager:k",
        "public_key": PUBLIC_KEY,
        "resolve": SECRETS.__getitem__,
        "test_mode": True,
    }
    return CallbackSender(**{**settings, **overrides})


NOTICE = build_notice("job-1", ErrorKind.OOM, attempts=3, dead_lettered_at="2026-01-01T00:00Z")


def sent(sink: WebhookSink, sender: CallbackSender, notice: dict[str, Any] = NOTICE) -> Received:
    assert sender.send(sink.url + "/cb", notice).ok
    return sink.on("/cb")[-1]


def test_notice_carries_the_standard_webhooks_headers_an_independent_verifier_accepts(
    sink: WebhookSink,
) -> None:
    received = sent(sink, sender_for())

    headers = received.headers
    assert headers["webhook-id"] == notice_id(NOTICE)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert re.fullmatch(r"v1a,[A-Za-z0-9+/]{86}==", headers["webhook-signature"])
    assert receiver_accepts(PUBLIC_KEY, headers, received.body, now=int(time.time()))
    assert standard_webhooks.verify(PUBLIC_KEY, headers, received.body)
    assert received.json()["reason"] == "the input needed more memory than the analyzer allows"
    assert SIGNATURE_HEADER not in headers and TIMESTAMP_HEADER not in headers  # legacy off


def test_the_reference_verifier_is_ed25519_by_the_rfc() -> None:
    # RFC 8032, section 7.1, TEST 2: a one-byte message.
    public = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    signature = bytes.fromhex(
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    )
    assert ed25519_verify(public, bytes([0x72]), signature)
    assert not ed25519_verify(public, bytes([0x73]), signature)


def test_signed_content_is_what_the_standardwebhooks_package_signs() -> None:
    """The PyPI package signs v1 (HMAC) only; what it signs, id.timestamp.body, is what v1a
    signs here: the same HMAC over our signed content equals the package's signature."""
    secret = base64.b64encode(b"k" * 32).decode()
    body = b'{"job_id":"j"}'
    theirs = Webhook(secret).sign(
        "msg_1", datetime.fromtimestamp(1700000000, tz=UTC), body.decode()
    )
    ours = hmac.new(
        b"k" * 32, standard_webhooks.signed_content("msg_1", 1700000000, body), hashlib.sha256
    ).digest()
    assert theirs == "v1," + base64.b64encode(ours).decode()


def test_a_user_who_verifies_cannot_forge_another_users_notice(sink: WebhookSink) -> None:
    """What a user holds (the public key, their own notices) signs nothing: a notice forged with
    any other key, the user's own pair included, fails every receiver's check."""
    genuine = sent(sink, sender_for())
    forger_secret, forger_public = generate_key_pair()
    forged_notice = {**NOTICE, "job_id": "someone-elses-job"}
    body = encode_notice(forged_notice)
    headers = NoticeSigner.from_secret(forger_secret).headers("msg_x", int(time.time()), body)

    assert not receiver_accepts(PUBLIC_KEY, headers, body, now=int(time.time()))
    assert not standard_webhooks.verify(PUBLIC_KEY, headers, body)
    # and a genuine signature does not carry over to another body
    replayed = {**genuine.headers}
    assert not receiver_accepts(PUBLIC_KEY, replayed, body, now=int(time.time()))
    assert forger_public != PUBLIC_KEY


def test_the_readme_recipe_verifies_a_real_notice(sink: WebhookSink) -> None:
    received = sent(sink, sender_for())
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The user notice") :]
    recipe = section[
        section.index("```python") + len("```python") : section.index(
            "```\n", section.index("```python")
        )
    ]
    scope: dict[str, Any] = {}
    exec(compile(recipe, "README.md", "exec"), scope)

    assert scope["verify"](PUBLIC_KEY, received.headers, received.body)
    assert not scope["verify"](PUBLIC_KEY, received.headers, received.body + b" ")
    assert not scope["verify"](generate_key_pair()[1], received.headers, received.body)


def test_webhook_id_is_one_per_dead_lettering_and_the_same_on_a_retry(sink: WebhookSink) -> None:
    sender = sender_for()
    first, retry = sent(sink, sender), sent(sink, sender)
    again = sent(sink, sender, {**NOTICE, "dead_lettered_at": "2026-02-02T00:00Z"})

    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    assert again.headers["webhook-id"] != first.headers["webhook-id"]


def test_legacy_header_is_added_only_behind_its_parameter_and_verifies_the_old_way(
    sink: WebhookSink,
) -> None:
    received = sent(sink, sender_for(legacy_secret_ref="secretsmanager:legacy"))
    timestamp = received.headers[TIMESTAMP_HEADER]
    signature = received.headers[SIGNATURE_HEADER]
    # The deprecated recipe (README, "Deprecated: X-Spotline-Signature"):
    expected = hmac.new(
        KEY.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(signature, "sha256=" + expected)
    assert verify(KEY, timestamp, received.body, signature)
    assert timestamp == received.headers["webhook-timestamp"]
    assert standard_webhooks.verify(PUBLIC_KEY, received.headers, received.body)
    if shutil.which("openssl"):
        digest = subprocess.run(
            ["openssl", "dgst", "-sha256", "-hmac", KEY],
            input=timestamp.encode() + b"." + received.body,
            capture_output=True,
            check=True,
        ).stdout.decode()
        assert digest.strip().split()[-1] == expected


def test_verify_rejects_tampering_and_stale_timestamps() -> None:
    body = b'{"job_id":"j"}'
    signature = sign(KEY, "1000", body)
    assert verify(KEY, "1000", body, signature, now=1000)
    assert not verify(KEY, "1000", body + b" ", signature, now=1000)
    assert not verify("other", "1000", body, signature, now=1000)
    assert not verify(KEY, "1000", body, signature, now=1000 + 301)
    assert not verify(KEY, "soon", body, signature, now=1000)
    headers = NoticeSigner.from_secret(SIGNING_KEY).headers("msg_1", 1000, body)
    assert standard_webhooks.verify(PUBLIC_KEY, headers, body, now=1000)
    assert not standard_webhooks.verify(PUBLIC_KEY, headers, body + b" ", now=1000)
    assert not standard_webhooks.verify(PUBLIC_KEY, headers, body, now=1000 + 301)
    assert not standard_webhooks.verify(
        PUBLIC_KEY, {**headers, "webhook-id": "msg_2"}, body, now=1000
    )
    assert not standard_webhooks.verify("whpk_nonsense", headers, body, now=1000)
    v1_only = {**headers, "webhook-signature": headers["webhook-signature"].replace("v1a,", "v1,")}
    assert not standard_webhooks.verify(PUBLIC_KEY, v1_only, body, now=1000)


def test_notice_never_carries_the_internal_error_message() -> None:
    notice = build_notice("j", ErrorKind.ANALYZER_ERROR, attempts=3, dead_lettered_at=None)
    keys = {"job_id", "status", "reason", "error_kind", "attempts", "dead_lettered_at"}
    assert set(notice) == keys
    assert build_notice("j", "NEW_KIND", attempts=0, dead_lettered_at=None)["reason"].startswith(
        "the analysis could not be completed"
    )


def test_missing_signing_key_is_a_failed_delivery_not_an_unsigned_notice(
    sink: WebhookSink,
) -> None:
    def missing(ref: str) -> str:
        raise KeyError(ref)

    delivery = sender_for(resolve=missing).send(sink.url + "/cb", {"job_id": "j"})
    assert not delivery.ok and "signing key unavailable" in (delivery.error or "")
    assert sink.received == []


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"signing_key_ref": None}, "no signing key configured (NOTICE_SIGNING_KEY_SECRET)"),
        ({"public_key": None}, "no public key configured (NOTICE_PUBLIC_KEY)"),
        ({"public_key": generate_key_pair()[1]}, "does not match the stack's NoticePublicKey"),
        (
            {"resolve": lambda ref: "whsec_" + "A" * 43},
            "signing key unreadable: the signing key must start with whsk_",
        ),
        (
            {"resolve": lambda ref: "whsk_" + "A" * 40},
            "signing key unreadable: the signing key must hold 32 bytes",
        ),
        (
            {"resolve": lambda ref: "whsk_!!!"},
            "signing key unreadable: the signing key is not base64",
        ),
        (
            {"legacy_secret_ref": "secretsmanager:gone"},
            "legacy signing key unavailable: KeyError",
        ),
    ],
)
def test_a_key_that_cannot_sign_is_a_failed_delivery_that_never_quotes_it(
    sink: WebhookSink, overrides: dict[str, Any], reason: str
) -> None:
    delivery = sender_for(**overrides).send(sink.url + "/cb", {"job_id": "j"})

    assert not delivery.ok and reason in (delivery.error or ""), delivery.error
    assert SIGNING_KEY.removeprefix("whsk_") not in (delivery.error or "")
    assert sink.received == []


@pytest.fixture
def tls_sink(tmp_path: Any) -> Iterator[tuple[str, str]]:
    """An https server on 127.0.0.1 whose certificate (from a test CA) names hooks.test only."""
    import datetime
    import http.server
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("spotline test CA"))
        .issuer_name(name("spotline test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # What Python 3.13's strict verification (VERIFY_X509_STRICT) asks of a CA.
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("hooks.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        # 3.13 refuses a certificate without it ("Missing Authority Key Identifier").
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    seen_sni: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.sni_callback = lambda sock, server_name, ctx: seen_sni.append(server_name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/cb", str(ca_path)
    finally:
        server.shutdown()
        server.server_close()
    assert not seen_sni or set(seen_sni) <= {"hooks.test", "evil.test"}


def test_pinned_connection_verifies_tls_for_the_host_name_not_the_address(
    tls_sink: tuple[str, str],
) -> None:
    url, ca_path = tls_sink
    session = pinned_session()
    ok = session.post(url, data=b"{}", headers={"Host": "hooks.test"}, verify=ca_path, timeout=5)
    assert ok.status_code == 204
    with pytest.raises(requests.exceptions.SSLError):
        session.post(url, data=b"{}", headers={"Host": "evil.test"}, verify=ca_path, timeout=5)
